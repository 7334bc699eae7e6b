"""The HTML pages: the sign-in form and the status page, as pure functions of the view
models in :mod:`gateway.web.model`. Every value that came from outside goes through
:func:`~gateway.web.text.esc`; the only unescaped fragments are the SVG pictures built
by :mod:`gateway.web.svg` (which escapes its own text) and literals written here.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.web.model import (
    STATE_LABELS,
    STATE_SYMBOLS,
    OwnerView,
    PageView,
    UpstreamView,
    owner_label,
)
from gateway.web.text import esc, size, utc

REFRESH_SECONDS = 60
"""The status page reloads itself this often (a meta refresh: no JavaScript)."""


def _document(title: str, body: str, *, refresh: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{meta}<title>{esc(title)}</title><link rel="stylesheet" href="/static/style.css">'
        f"</head><body>{body}</body></html>"
    )


def _hidden(csrf: str, **fields: str) -> str:
    out = f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
    for name, value in fields.items():
        out += f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'
    return out


def sign_in_page(
    csrf: str, *, error: str | None = None, plaintext_refused: bool = False, status: int = 200
) -> str:
    """The sign-in form. ``plaintext_refused``: this connection may not carry a password
    (plain HTTP from another machine), so the form says so and is disabled."""
    notes = ""
    if error:
        notes += f'<p class="notice bad" role="alert">{esc(error)}</p>'
    disabled = ""
    if plaintext_refused:
        notes += (
            '<p class="notice bad" role="alert">Signing in needs HTTPS on this address: '
            "the password would travel in clear. Use the gateway's https:// address.</p>"
        )
        disabled = " disabled"
    body = (
        '<main class="signin"><div class="card owner">'
        '<h1>popgate</h1><p class="muted">Sign in with your mail login.</p>'
        f'{notes}<form method="post" action="/signin">{_hidden(csrf)}'
        '<label for="user">User name</label>'
        f'<input id="user" name="user" autocomplete="username" autocapitalize="none" '
        f'spellcheck="false" required{disabled}>'
        '<label for="password">Password</label>'
        f'<input id="password" name="password" type="password" '
        f'autocomplete="current-password" required{disabled}>'
        f'<button type="submit" id="signin"{disabled}>Sign in</button></form></div></main>'
    )
    return _document("popgate · sign in", body)


def _fact(label: str, value: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<dt>{esc(label)}</dt><dd{attr}>{value}</dd>"


def upstream_card(up: UpstreamView, csrf: str) -> str:
    state = up.state if up.state in STATE_LABELS else "waiting"
    facts = [
        _fact("State", esc(up.state_text), "state-text"),
        _fact("Last success", esc(up.last_success), "last-success"),
        _fact("Next poll", esc(up.next_poll), "next-poll"),
    ]
    if up.last_error:
        facts.append(_fact("Last error", esc(up.last_error), "error"))
    if up.backlog:
        facts.append(_fact("Waiting upstream", f"{up.backlog} messages", "backlog"))
    if up.node:
        facts.append(_fact("Node", esc(up.node), "node"))
    if up.oauth_expiry:
        facts.append(_fact("OAuth2 token expires", esc(up.oauth_expiry), "oauth-expiry"))
    if up.oauth_login:
        facts.append(_fact("To log in again", f"<code>{esc(up.oauth_login)}</code>", "oauth"))
    numbers = (
        '<p class="numbers-head">Messages fetched</p><div class="numbers">'
        f'<div><b class="count-day">{up.messages_day}</b>'
        f"<span>last 24 h</span><span>{esc(up.bytes_day)}</span></div>"
        f'<div><b class="count-week">{up.messages_week}</b>'
        f"<span>last 7 days</span><span>{esc(up.bytes_week)}</span></div>"
        f'<div><b class="count-total">{up.messages_total}</b>'
        "<span>since start</span><span>of the gateway</span></div></div>"
    )
    chart = (
        f"<figure>{up.chart}<figcaption>Messages fetched per hour, last 7 days (UTC)"
        "</figcaption></figure>"
        if up.chart
        else ""
    )
    fetch = (
        f'<div class="actions"><form method="post" action="/fetch">'
        f"{_hidden(csrf, upstream=up.name)}"
        f'<button type="submit" class="fetch-now">Fetch now</button></form></div>'
    )
    return (
        f'<article class="card upstream state-{state}" data-upstream="{esc(up.name)}" '
        f'data-state="{state}"><div class="card-head"><h3>{esc(up.name)}</h3>'
        f'<span class="badge {state}">{STATE_SYMBOLS[state]} {STATE_LABELS[state]}</span></div>'
        f'<p class="where">from {esc(up.host)} into {esc(owner_label(up.owner))} · '
        f"{esc(up.folder)}</p>"
        f'<dl class="facts">{"".join(facts)}</dl>{numbers}{chart}{fetch}</article>'
    )


def quota_bar(used: int, limit: int) -> str:
    """A bar and a sentence: ``12.0 MiB of 100.0 MiB used (12%)``."""
    share = used / limit if limit > 0 else 1.0
    percent = min(100.0, max(0.0, share * 100))
    level = "full" if share >= 0.95 else "high" if share >= 0.8 else ""
    return (
        f'<svg class="quota" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" '
        f'aria-label="{percent:.0f}% of the quota used">'
        '<rect class="track" width="100" height="6"/>'
        f'<rect class="fill {level}" width="{percent:.1f}" height="6"/></svg>'
        f'<p class="quota-text">{esc(size(used))} of {esc(size(limit))} used '
        f"({share * 100:.0f}%){' — nearly full' if level else ''}</p>"
    )


def _folders(rows: Iterable[dict]) -> str:
    body = "".join(
        f"<tr><td>{esc(f.get('mailbox'))}</td><td class=\"n\">{int(f.get('messages') or 0)}</td>"
        f"<td class=\"n\">{int(f.get('unseen') or 0)}</td>"
        f"<td class=\"n\">{esc(size(f.get('size_bytes')))}</td></tr>"
        for f in rows
    )
    return (
        '<table class="folders"><thead><tr><th>Folder</th><th class="n">Messages</th>'
        f'<th class="n">Unread</th><th class="n">Size</th></tr></thead><tbody>{body}</tbody>'
        "</table>"
    )


def owner_card(owner: OwnerView) -> str:
    quota = (
        quota_bar(owner.size_bytes, owner.quota_bytes)
        if owner.quota_bytes
        else '<p class="muted">No quota.</p>'
    )
    chart = (
        f"<figure>{owner.chart}<figcaption>Mail kept, last 30 days</figcaption></figure>"
        if owner.chart
        else ""
    )
    return (
        f'<article class="card owner" data-owner="{esc(owner.owner)}"><div class="card-head">'
        f"<h3>{esc(owner.label)}</h3></div>"
        f'<p class="where">{owner.messages} messages, {esc(size(owner.size_bytes))}</p>'
        f"{quota}{chart}{_folders(owner.folders)}</article>"
    )


def _queue(view: PageView) -> str:
    if view.queue is None:
        return ""
    rows = "".join(
        f"<tr><td>{esc(i.get('owner'))}</td><td>{esc(i.get('recipient', ''))}</td>"
        f"<td class=\"n\">{int(i.get('attempts') or 0)}</td>"
        f"<td>{esc(i.get('last_error') or '')}</td></tr>"
        for i in view.queue.items
    )
    table = (
        '<table><thead><tr><th>From</th><th>To</th><th class="n">Tries</th>'
        f"<th>Last error</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="muted">Nothing waiting to be sent.</p>'
    )
    return (
        f'<section id="queue"><h2>Outgoing mail queue ({view.queue.count})</h2>'
        f'<div class="card owner">{table}</div></section>'
    )


def _errors(view: PageView) -> str:
    if not view.admin or not view.errors:
        return ""
    rows = "".join(
        f"<tr><td>{esc(e.get('timestamp', ''))}</td><td>{esc(e.get('level', ''))}</td>"
        f"<td>{esc(e.get('event', ''))}</td>"
        f"<td>{esc(' '.join(f'{k}={v}' for k, v in e.items() if k not in _SKIP))}</td></tr>"
        for e in view.errors
    )
    return (
        '<section id="errors"><h2>Recent errors</h2><div class="card owner"><table><thead><tr>'
        "<th>When</th><th>Level</th><th>Event</th><th>Details</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></section>"
    )


_SKIP = frozenset({"timestamp", "level", "event", "logger"})


def status_page(view: PageView) -> str:
    """The page a signed-in user sees."""
    role = " (admin)" if view.admin else ""
    header = (
        '<header class="top"><h1>popgate <span>mail status</span></h1>'
        f'<span class="who">Signed in as <b id="who">{esc(view.user)}</b>{role}</span>'
        f'<form method="post" action="/signout">{_hidden(view.csrf)}'
        '<button type="submit" class="quiet" id="signout">Sign out</button></form></header>'
    )
    notice = (
        f'<p class="notice" role="status" id="notice">{esc(view.notice)}</p>' if view.notice else ""
    )
    upstreams = (
        '<div class="cards">'
        + "".join(upstream_card(u, view.csrf) for u in view.upstreams)
        + "</div>"
        if view.upstreams
        else '<p class="muted">No upstreams deliver to your mailboxes.</p>'
    )
    owners = (
        '<div class="cards">' + "".join(owner_card(o) for o in view.owners) + "</div>"
        if view.owners
        else '<p class="muted">No mailboxes yet.</p>'
    )
    body = (
        f"{header}<main>{notice}"
        f'<section id="upstreams"><h2>Upstreams</h2>{upstreams}</section>'
        f'<section id="mailboxes"><h2>Mailboxes</h2>{owners}</section>'
        f"{_queue(view)}{_errors(view)}</main>"
        f"<footer>popgate {esc(view.version)} · updated {esc(utc(view.now))} · "
        f'refreshes every minute · <a href="/api/status">JSON</a></footer>'
    )
    return _document("popgate · mail status", body, refresh=True)


def message_page(title: str, text: str) -> str:
    """A bare page for errors (403, 404, 413): no details beyond ``text``."""
    return _document(
        f"popgate · {title}",
        f'<main class="signin"><div class="card owner"><h1>{esc(title)}</h1>'
        f'<p>{esc(text)}</p><p><a href="/">Back</a></p></div></main>',
    )
