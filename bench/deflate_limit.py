"""What deflate can do at best on the compress scenario's bytes (RFC 4978, issue 17).

``python -m bench.deflate_limit`` regenerates the big mailbox (same seed and profile as
``python -m bench``), lays it out as the FETCH responses of a full sync (``* n FETCH
(UID n BODY[] {size}`` literal ``)``) and deflates that byte stream offline several ways:
zlib level 9 with a 32 KiB window and memLevel 9 in one stream flushed once at the end
(the physical limit of RFC 4978's raw deflate on these bytes), level 6 likewise, and
level 6 with a sync flush after every response (the most a per-response flush can cost).
It also splits the stream into base64 lines (76 characters of the base64 alphabet: the
attachments, random bytes in ``gateway.testing.samplemail``) and everything else, and
deflates each part alone, to say which part limits the ratio.
"""

from __future__ import annotations

import argparse
import re
import zlib

from gateway.testing import samplemail

BASE64_LINE = re.compile(rb"^[A-Za-z0-9+/]{60,76}={0,2}\r?$")
"""A line of a base64 body part (RFC 2045 §6.8: at most 76 characters)."""


class Stream:
    """One raw deflate stream (``wbits=-15``: 32 KiB window), counting octets in and out."""

    def __init__(self, level: int, *, sync_each: bool = False) -> None:
        self.codec = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        self.sync_each = sync_each
        self.octets_in = 0
        self.octets_out = 0

    def write(self, data: bytes) -> None:
        self.octets_in += len(data)
        self.octets_out += len(self.codec.compress(data))
        if self.sync_each:
            self.octets_out += len(self.codec.flush(zlib.Z_SYNC_FLUSH))

    def close(self) -> float:
        self.octets_out += len(self.codec.flush(zlib.Z_FINISH))
        return self.octets_out / max(1, self.octets_in)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    streams = {
        "level 9, one stream": Stream(9),
        "level 6, one stream": Stream(6),
        "level 6, sync flush per response": Stream(6, sync_each=True),
    }
    base64_part, text_part = Stream(9), Stream(9)
    attachments = 0
    messages = samplemail.iter_messages(args.messages, args.seed, size_profile="realistic")
    for n, raw in enumerate(messages, 1):
        response = b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (n, n, len(raw), raw)
        for stream in streams.values():
            stream.write(response)
        lines = response.split(b"\n")
        b64 = [line for line in lines if BASE64_LINE.match(line)]
        attachments += bool(b64)
        base64_part.write(b"\n".join(b64))
        text_part.write(b"\n".join(line for line in lines if not BASE64_LINE.match(line)))
    total = next(iter(streams.values())).octets_in
    print(f"{args.messages} messages, {total:,} octets of FETCH responses")
    for name, stream in streams.items():
        ratio = stream.close()
        print(f"{name}: {stream.octets_out:,} octets, ratio {ratio:.4f}")
    b64_in, text_in = base64_part.octets_in, text_part.octets_in
    print(
        f"base64 lines ({attachments} messages): {b64_in:,} octets ({b64_in / total:.1%}),"
        f" level 9 ratio {base64_part.close():.4f}"
    )
    print(
        f"everything else: {text_in:,} octets ({text_in / total:.1%}),"
        f" level 9 ratio {text_part.close():.4f}"
    )


if __name__ == "__main__":
    main()
