"""Test support: real peers (Dovecot), a private TLS CA and free loopback ports for tests."""
