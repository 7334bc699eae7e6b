"""ManageSieve (RFC 5804): parser, session and Twisted server for editing Sieve scripts."""
