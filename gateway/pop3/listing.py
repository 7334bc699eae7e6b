"""Reading an upstream's listing for one fetch pass: STAT, UIDL and LIST (RFC 1939 §5,
§7), and, from a server without UIDL, identities made from each message's ``TOP n 0``
headers and LIST size (:func:`gateway.pop3.plan.fallback_uidl`).

The I/O half of the listing; :func:`gateway.pop3.plan.build_listing` joins the answers.
"""

from __future__ import annotations

from typing import Any

from twisted.mail.pop3 import ServerErrorResponse

from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import UIDLUnsupported, translate_failure
from gateway.pop3.plan import Listing, build_listing, fallback_uidl, parse_list_line

MAX_TOP_HEADER_LINES = 2000
"""Header lines kept from one ``TOP n 0`` answer when the server has no UIDL."""


async def _command(host: str, step: str, d: Any) -> Any:
    try:
        return await d
    except Exception as e:
        raise translate_failure(e, host, step) from None


async def read_listing(client: UpstreamClient, host: str, log: Any, upstream_name: str) -> Listing:
    """STAT, UIDL and LIST (RFC 1939 §5, §7), joined by the sans-I/O parser; without
    UIDL, identities come from ``TOP n 0`` headers (:func:`~gateway.pop3.plan.fallback_uidl`)."""
    count, _octets = await _command(host, "STAT", client.stat())
    uidl_lines: list[bytes] | None
    try:
        uidl_lines = await client.long_lines(b"UIDL")
    except ServerErrorResponse:
        uidl_lines = None
    except Exception as e:
        raise translate_failure(e, host, "UIDL") from None
    try:
        list_lines: list[bytes] | None = await client.long_lines(b"LIST")
    except ServerErrorResponse:
        list_lines = None
    except Exception as e:
        raise translate_failure(e, host, "LIST") from None
    if uidl_lines is None:
        uidl_lines = await _fallback_identities(client, host, log, upstream_name, list_lines)
    return build_listing(uidl_lines, list_lines, stat_count=count)


async def _fallback_identities(
    client: UpstreamClient, host: str, log: Any, upstream_name: str, list_lines: list[bytes] | None
) -> list[bytes]:
    """``n uidl`` lines made from each message's headers and LIST size."""
    if list_lines is None:
        raise UIDLUnsupported(
            f"{host} supports neither UIDL nor LIST (RFC 1939 §7): popgate cannot "
            "tell messages apart to fetch each exactly once"
        )
    log.info("pop3.uidl_fallback", upstream=upstream_name, messages=len(list_lines))
    lines: list[bytes] = []
    for line in list_lines:
        parsed = parse_list_line(line)
        if parsed is None:
            continue  # build_listing reports the malformed LIST line
        number, size = parsed
        headers: list[bytes] = []

        def keep(header: bytes, headers: list[bytes] = headers) -> None:
            if len(headers) < MAX_TOP_HEADER_LINES:
                headers.append(header)

        try:
            await client.sendLong(b"TOP", b"%d 0" % number, keep, None)
        except ServerErrorResponse as e:
            raise UIDLUnsupported(
                f"{host} supports neither UIDL nor TOP (RFC 1939 §7): "
                f"{e.args[0] if e.args else b''!r}; popgate needs one of them to fetch "
                "each message exactly once"
            ) from None
        except Exception as e:
            raise translate_failure(e, host, f"TOP {number}") from None
        lines.append(b"%d %s" % (number, fallback_uidl(headers, size).encode("ascii")))
    return lines
