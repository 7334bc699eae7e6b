"""The web page's one twisted.web resource: routes requests to the pure parts (sessions,
sign-in, visibility, views, pages) and writes their answers. Nothing here decides who
sees what or how a page looks; it only moves bytes and checks the request's envelope.

Routes: ``GET /`` (status page), ``GET|POST /signin``, ``POST /signout``, ``POST /fetch``
("fetch now" for one upstream), ``GET /api/status`` (the status as JSON), and
``GET /static/style.css``. Every page and the JSON need a signed-in session (the JSON
also takes HTTP Basic credentials, RFC 7617, for scripts, under the same sign-in rules);
every POST needs the session's CSRF token and, when the browser sends ``Origin``, the
page's own origin. Responses carry a strict Content-Security-Policy (no scripts at all,
no inline styles, nothing from elsewhere), ``no-store`` caching, and no referrer to other
sites (``same-origin``: with ``no-referrer`` a browser would send ``Origin: null``).

Store reads: the status (``status()``, which may answer with a Deferred when its store
facts are read on the store's threads) and the history pictures (``series``) are read
where ``runner`` says: inline for SQLite; on the store's threads for PostgreSQL, where
the whole page is built off the reactor and only written from it.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from gateway.security.auth import Authenticator
from gateway.security.penalty import AuthPenalty
from gateway.store.runner import StoreRunner
from gateway.store.timeseries import TimeSeries
from gateway.web import pages
from gateway.web.history import HistoryRecorder
from gateway.web.model import ERROR_WORDS, page_view
from gateway.web.sessions import (
    COOKIE_NAME,
    Session,
    SessionTable,
    clearing_cookie,
    csrf_ok,
    session_cookie,
)
from gateway.web.signin import Refused, SignIn, plaintext_allowed
from gateway.web.style import STYLE_CSS
from gateway.web.visibility import filter_queue, filter_status, visibility

log = structlog.get_logger(__name__)

MAX_BODY = 16 * 1024
"""Largest request body accepted (the forms are a few hundred bytes)."""

MAX_FORM_FIELDS = 8
FETCH_WAIT = 15.0
"""Seconds "fetch now" waits for the pass before showing the page anyway."""

SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'none'; style-src 'self'; img-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"server": b"popgate",
}


@dataclass
class WebServices:
    """What the web page needs from the running gateway, all injected.

    ``status()`` returns the ``popgate status --json`` dict (or a Deferred of it);
    ``fetch_now(name)`` runs a
    pass of that upstream (the poller's, as ``popgate fetch``) and fires with its result
    (an object or dict with ``fetched``) or fails with an error that has ``kind``;
    ``admins()`` and ``households()`` (group → members) are read on every request, so a
    config reload applies at once. ``series`` (history) and ``recorder`` are optional:
    without them the page has no pictures or 24 h/7 day counts. ``quota_limit(owner)``
    gives an owner's byte limit (None: no quota). ``queue_status()``, when given,
    returns the submission queue (``{"count", "items": [{"owner", "recipient",
    "attempts", "last_error"}]}``); the page shows that section only then.
    ``runner``, when not inline, is where the page is built (it reads ``series``).
    """

    authenticator: Authenticator
    run_blocking: Callable[..., defer.Deferred[Any]]
    clock: IReactorTime
    status: Callable[[], Mapping[str, Any] | defer.Deferred[Mapping[str, Any]]]
    fetch_now: Callable[[str], defer.Deferred[Any]]
    admins: Callable[[], Iterable[str]] = tuple
    households: Callable[[], Mapping[str, Iterable[str]]] = dict
    penalty: AuthPenalty | None = None
    series: TimeSeries | None = None
    recorder: HistoryRecorder | None = None
    quota_limit: Callable[[str], int | None] = lambda owner: None
    queue_status: Callable[[], Mapping[str, Any] | None] | None = None
    allow_plaintext: bool = False
    """Take passwords over plain HTTP from other machines (``allow_insecure_listener``)."""
    runner: StoreRunner | None = None
    sessions: SessionTable = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = SessionTable(self.clock.seconds)


class _Form(dict[str, bytes]):
    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None


def _read_form(request: server.Request) -> _Form | None:
    """The urlencoded body as name → bytes (first value), or None when it is not one."""
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if kind != b"application/x-www-form-urlencoded":
        return None
    body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(body) > MAX_BODY:
        return None
    try:
        pairs = urllib.parse.parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        return None
    form = _Form()
    for name, value in pairs:
        form.setdefault(name.decode("latin-1"), value)
    return form


class BoundedRequest(server.Request):
    """A request whose body may not exceed :data:`MAX_BODY`: the connection is dropped
    rather than a large body spooled to disk."""

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.channel.transport.loseConnection()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.content is not None and self.content.tell() + len(data) > MAX_BODY:
            self.channel.transport.loseConnection()
            return
        super().handleContentChunk(data)


class WebResource(Resource):
    """The whole site as one leaf resource (see the module docstring for routes)."""

    isLeaf = True

    def __init__(self, services: WebServices) -> None:
        super().__init__()
        self.s = services
        self.signin = SignIn(
            services.authenticator, services.penalty, services.run_blocking, services.clock
        )

    # ---- envelope ------------------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"cache-control", b"no-store")
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        if method == "HEAD":
            method = "GET"
        route = {
            ("GET", "/"): self.get_status_page,
            ("GET", "/signin"): self.get_signin,
            ("POST", "/signin"): self.post_signin,
            ("POST", "/signout"): self.post_signout,
            ("POST", "/fetch"): self.post_fetch,
            ("GET", "/api/status"): self.get_api_status,
            ("GET", "/static/style.css"): self.get_style,
        }.get((method, path))
        if route is None:
            known = {"/", "/signin", "/signout", "/fetch", "/api/status", "/static/style.css"}
            if path in known:
                request.setHeader(b"allow", b"GET, POST" if path == "/signin" else b"GET")
                return self._message(request, http.NOT_ALLOWED, "Not allowed", "Wrong method.")
            return self._message(request, http.NOT_FOUND, "Not found", "No such page.")
        if method == "POST" and not self._same_origin(request):
            return self._message(request, http.FORBIDDEN, "Refused", "Cross-site request.")
        return route(request)

    def _same_origin(self, request: server.Request) -> bool:
        """RFC 6454 §7: a browser names the page a POST comes from; it must be ours."""
        site = request.getHeader(b"sec-fetch-site")
        if site is not None and site not in (b"same-origin", b"none"):
            return False
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        scheme = b"https" if request.isSecure() else b"http"
        return origin == scheme + b"://" + (request.getHeader(b"host") or b"")

    def _html(self, request: server.Request, text: str, code: int = http.OK) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return text.encode("utf-8")

    def _message(self, request: server.Request, code: int, title: str, text: str) -> bytes:
        return self._html(request, pages.message_page(title, text), code)

    def _redirect(self, request: server.Request, where: bytes) -> bytes:
        request.setResponseCode(http.SEE_OTHER)
        request.setHeader(b"location", where)
        return b""

    def _session(self, request: server.Request) -> Session | None:
        raw = request.getCookie(COOKIE_NAME.encode())
        return self.s.sessions.get(raw.decode("latin-1") if raw else None)

    def _set_cookie(self, request: server.Request, session: Session) -> None:
        request.setHeader(
            b"set-cookie", session_cookie(session.id, secure=request.isSecure()).encode()
        )

    def _peer(self, request: server.Request) -> str:
        return getattr(request.getClientAddress(), "host", "") or "local"

    def _plaintext_ok(self, request: server.Request) -> bool:
        return plaintext_allowed(
            secure=request.isSecure(),
            peer_host=self._peer(request),
            allow_plaintext=self.s.allow_plaintext,
        )

    def _finish(self, request: server.Request, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()

    # ---- sign-in -------------------------------------------------------------------------

    def _signin_form(
        self, request: server.Request, *, error: str | None = None, code: int = http.OK
    ) -> bytes:
        session = self._session(request)
        if session is None or session.user is not None:
            session = self.s.sessions.anonymous()
            self._set_cookie(request, session)
        page = pages.sign_in_page(
            session.csrf, error=error, plaintext_refused=not self._plaintext_ok(request)
        )
        return self._html(request, page, code)

    def get_signin(self, request: server.Request) -> bytes:
        session = self._session(request)
        if session is not None and session.user is not None:
            return self._redirect(request, b"/")
        return self._signin_form(request)

    def post_signin(self, request: server.Request) -> bytes | int:
        form = _read_form(request)
        session = self._session(request)
        if form is None or not csrf_ok(session, form.text("csrf")):
            return self._signin_form(
                request, error="The form had expired. Please sign in again.", code=http.FORBIDDEN
            )
        assert session is not None
        if not self._plaintext_ok(request):
            return self._signin_form(request, code=http.FORBIDDEN)
        user = form.text("user") or ""
        password = form.get("password") or b""
        d = self.signin.attempt(self._peer(request), user, password)

        def done(canonical: str | None) -> None:
            if canonical is None:
                body = self._signin_form(
                    request, error="Wrong user name or password.", code=http.FORBIDDEN
                )
            else:
                fresh = self.s.sessions.sign_in(canonical, previous=session)
                self._set_cookie(request, fresh)
                body = self._redirect(request, b"/")
            self._finish(request, body)

        def refused(failure: Failure) -> None:
            failure.trap(Refused)
            body = self._signin_form(
                request,
                error="Too many failed sign-ins. Try again later.",
                code=http.TOO_MANY_REQUESTS,
            )
            self._finish(request, body)

        d.addCallbacks(done, refused).addErrback(self._crashed, request)
        return server.NOT_DONE_YET

    def post_signout(self, request: server.Request) -> bytes:
        form = _read_form(request)
        session = self._session(request)
        if form is None or not csrf_ok(session, form.text("csrf")):
            return self._message(request, http.FORBIDDEN, "Refused", "The form had expired.")
        assert session is not None
        self.s.sessions.end(session.id)
        request.setHeader(b"set-cookie", clearing_cookie(secure=request.isSecure()).encode())
        return self._redirect(request, b"/signin")

    # ---- pages ---------------------------------------------------------------------------

    def _visible_status(self, user: str) -> defer.Deferred[tuple[Any, dict[str, Any]]]:
        """(visibility, the status filtered for ``user``); fired already unless the
        status reads the store on its threads."""
        vis = visibility(user, self.s.admins(), self.s.households())
        return defer.maybeDeferred(self.s.status).addCallback(
            lambda status: (vis, filter_status(status, vis))
        )

    def _off_reactor(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """``fn(*args)`` where the store is read: through a runner that is not inline
        (PostgreSQL), else here."""
        runner = self.s.runner
        if runner is None or runner.inline:
            return defer.maybeDeferred(fn, *args)
        return runner.run(fn, *args)

    def _answer(self, request: server.Request, d: defer.Deferred[bytes]) -> int:
        """Write ``d``'s body when it fires (at once when it has already)."""
        d.addCallback(lambda body: self._finish(request, body)).addErrback(self._crashed, request)
        return server.NOT_DONE_YET

    def get_status_page(self, request: server.Request) -> bytes | int:
        session = self._session(request)
        if session is None or session.user is None:
            return self._redirect(request, b"/signin")
        user = session.user

        def build(found: tuple[Any, dict[str, Any]]) -> defer.Deferred[bytes]:
            vis, status = found
            queue = self.s.queue_status() if self.s.queue_status is not None else None
            notice, session.notice = session.notice, None
            d = self._off_reactor(
                self._status_page_text,
                status,
                user,
                vis.admin,
                session.csrf,
                filter_queue(queue, vis) if queue is not None else None,
                notice,
            )
            return d.addCallback(lambda text: self._html(request, text))

        return self._answer(request, self._visible_status(user).addCallback(build))

    def _status_page_text(
        self,
        status: dict[str, Any],
        user: str,
        admin: bool,
        csrf: str,
        queue: Mapping[str, Any] | None,
        notice: str | None,
    ) -> str:
        """The status page (reads the history: on a store thread for PostgreSQL)."""
        view = page_view(
            status,
            user=user,
            admin=admin,
            csrf=csrf,
            series=self.s.series,
            quota_limit=self.s.quota_limit,
            queue=queue,
            notice=notice,
        )
        return pages.status_page(view)

    def get_style(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=3600")
        return STYLE_CSS.encode("utf-8")

    # ---- fetch now -----------------------------------------------------------------------

    def post_fetch(self, request: server.Request) -> bytes | int:
        session = self._session(request)
        if session is None or session.user is None:
            return self._message(request, http.FORBIDDEN, "Refused", "Sign in first.")
        form = _read_form(request)
        if form is None or not csrf_ok(session, form.text("csrf")):
            return self._message(request, http.FORBIDDEN, "Refused", "The form had expired.")
        name = form.text("upstream") or ""
        user = session.user

        def start(found: tuple[Any, dict[str, Any]]) -> None:
            if name not in {u.get("name") for u in found[1]["upstreams"]}:
                # the same answer for an upstream that exists but is not yours
                body = self._message(request, http.NOT_FOUND, "Not found", "No such upstream.")
                self._finish(request, body)
                return
            self._fetch_now(request, session, user, name)

        self._visible_status(user).addCallback(start).addErrback(self._crashed, request)
        return server.NOT_DONE_YET

    def _fetch_now(self, request: server.Request, session: Session, user: str, name: str) -> None:
        log.info("web.fetch_now", user=user, upstream=name)
        d = defer.maybeDeferred(self.s.fetch_now, name)
        timeout = self.s.clock.callLater(FETCH_WAIT, self._still_running, request, session, name)

        def done(outcome: Any) -> None:
            if timeout.active():
                timeout.cancel()
            session.notice = _fetch_notice(name, outcome)
            if self.s.recorder is not None:
                self.s.recorder.sample()
            self._finish(request, self._redirect(request, b"/"))

        d.addBoth(done).addErrback(self._crashed, request)

    def _still_running(self, request: server.Request, session: Session, name: str) -> None:
        session.notice = f"Fetching from {name} is still running; reload to see how it ends."
        self._finish(request, self._redirect(request, b"/"))

    # ---- JSON ----------------------------------------------------------------------------

    def get_api_status(self, request: server.Request) -> bytes | int:
        session = self._session(request)
        if session is not None and session.user is not None:
            d = self._visible_status(session.user)
            return self._answer(request, d.addCallback(lambda f: self._json(request, f[1])))
        credentials = _basic_credentials(request.getHeader(b"authorization"))
        if credentials is None:
            return self._json(request, {"error": "sign in first"}, http.UNAUTHORIZED)
        if not self._plaintext_ok(request):
            return self._json(request, {"error": "use HTTPS"}, http.FORBIDDEN)
        d = self.signin.attempt(self._peer(request), *credentials)

        def done(user: str | None) -> Any:
            if user is None:
                body = self._json(request, {"error": "wrong user name or password"}, 401)
                self._finish(request, body)
                return None
            d = self._visible_status(user)
            return d.addCallback(lambda f: self._finish(request, self._json(request, f[1])))

        def refused(failure: Failure) -> None:
            failure.trap(Refused)
            body = self._json(request, {"error": "too many failed sign-ins"}, 429)
            self._finish(request, body)

        d.addCallbacks(done, refused).addErrback(self._crashed, request)
        return server.NOT_DONE_YET

    def _json(self, request: server.Request, value: Any, code: int = http.OK) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, indent=2, default=str).encode("utf-8") + b"\n"

    def _crashed(self, failure: Failure, request: server.Request) -> None:
        log.error("web.request_failed", error=failure.getErrorMessage(), path=request.path)
        if not request.finished:
            body = self._message(request, http.INTERNAL_SERVER_ERROR, "Error", "Internal error.")
            self._finish(request, body)


def _fetch_notice(name: str, outcome: Any) -> str:
    if isinstance(outcome, Failure):
        error = outcome.value
        kind = getattr(error, "kind", None)
        words = ERROR_WORDS.get(str(kind), "internal error")
        return f"Fetching from {name} failed: {words}."
    fetched = outcome.get("fetched") if isinstance(outcome, Mapping) else None
    if fetched is None:
        fetched = getattr(outcome, "fetched", None)
    if fetched is None:
        return f"Fetched from {name}."
    return f"Fetched {fetched} new message{'s' if fetched != 1 else ''} from {name}."


def _basic_credentials(header: bytes | None) -> tuple[str, bytes] | None:
    """RFC 7617 §2: ``Basic base64(user ":" password)``; None when absent or malformed."""
    if not header or not header[:6].lower() == b"basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, UnicodeDecodeError):
        return None


def web_resource(services: WebServices) -> WebResource:
    """The resource to serve (e.g. under a :class:`twisted.web.server.Site`)."""
    return WebResource(services)


def web_site(services: WebServices) -> server.Site:
    """A Site serving the web page on any number of listeners (``[server] web``): they
    share one session table, so a session is good on each of them."""
    site = server.Site(web_resource(services), requestFactory=BoundedRequest)
    site.displayTracebacks = False
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
