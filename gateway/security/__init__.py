"""Proving who a client is and guarding the door: passwords, logins, penalties, TLS."""
