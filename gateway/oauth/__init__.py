"""OAuth 2.0 for POP3 upstreams: provider presets and settings, the token file, the device
authorization grant (RFC 8628) and refresh (RFC 6749 §6) over treq.

Nothing here knows POP3: :mod:`gateway.pop3.sasl` turns an access token into a SASL
response, and :mod:`gateway.pop3.credentials` asks :class:`gateway.oauth.refresh.TokenSource`
for a fresh token before each pass.
"""
