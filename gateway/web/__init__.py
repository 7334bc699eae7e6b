"""The household's status page: every upstream's health and history at a glance, for
the person who looks after a household's mail, on a phone or a desktop (issue 18).

Layers, each testable alone: :mod:`~gateway.web.sessions` (server-side sessions, cookie,
CSRF token), :mod:`~gateway.web.signin` (the popgate login with IMAP's penalty and
plaintext rule), :mod:`~gateway.web.visibility` (who sees what: one pure rule),
:mod:`~gateway.web.history` (the recorder writing the time series, and its reads),
:mod:`~gateway.web.model` (status + history → what the page says), :mod:`~gateway.web.svg`
and :mod:`~gateway.web.pages` (pure rendering), and :mod:`~gateway.web.resource`, the
thin twisted.web resource that wires them to HTTP. Entry points:
:func:`~gateway.web.resource.web_site` and :class:`~gateway.web.resource.WebServices`.
"""
