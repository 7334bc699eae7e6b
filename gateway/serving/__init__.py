"""What the servers' Twisted protocols (IMAP, ManageSieve, submission) share: the command
driver (:mod:`gateway.serving.driver`) and command steps on a store thread
(:mod:`gateway.serving.steps`)."""
