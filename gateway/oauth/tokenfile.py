"""The token file of one upstream, ``state_dir/oauth/NAME.json``: read, written atomically
with mode 0600, forgotten. Tokens are secrets: nothing here logs them, and
:class:`TokenSet` keeps them out of its repr.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN_DIR = "oauth"
"""Directory under state_dir holding one token file per OAuth upstream."""

MAX_TOKEN_FILE = 64 * 1024
"""Largest token file read; real ones are a few KB."""


class TokenFileError(Exception):
    """The token file exists but cannot be read or is not a token file."""


@dataclass(frozen=True)
class TokenSet:
    """What the token endpoint granted (RFC 6749 §5.1). ``expires_at`` is epoch seconds
    (None: the server did not say); ``obtained_at`` when it was granted."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False, default=None)
    expires_at: float | None = None
    obtained_at: float = 0.0
    token_type: str = "Bearer"
    scope: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at,
            "obtained_at": self.obtained_at,
            "token_type": self.token_type,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, data: Any) -> TokenSet:
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TokenFileError("not a popgate token file")
        refresh = data.get("refresh_token")
        expires = data.get("expires_at")
        return cls(
            access_token=data["access_token"],
            refresh_token=refresh if isinstance(refresh, str) else None,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
            obtained_at=float(data.get("obtained_at") or 0.0),
            token_type=str(data.get("token_type") or "Bearer"),
            scope=data.get("scope") if isinstance(data.get("scope"), str) else None,
        )


def token_path(state_dir: str | os.PathLike[str], upstream: str) -> Path:
    """Where ``upstream``'s tokens live (upstream names are already safe file names)."""
    return Path(state_dir) / TOKEN_DIR / f"{upstream}.json"


def load_tokens(path: Path) -> TokenSet | None:
    """The tokens in ``path``, or None when there is no file (never logged in / logged out)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TokenFileError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE:
        raise TokenFileError(f"{path} is larger than {MAX_TOKEN_FILE} bytes")
    try:
        return TokenSet.from_json(json.loads(raw))
    except ValueError:
        raise TokenFileError(f"{path} is not JSON") from None


def save_tokens(path: Path, tokens: TokenSet) -> None:
    """Write atomically: a 0600 temporary file in the same directory, fsync, rename, fsync
    the directory. A crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(tokens.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def forget_tokens(path: Path) -> bool:
    """Delete the token file; True if there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of ``path``, None if absent: a change means someone (``popgate
    oauth login``) wrote new tokens, and the running gateway reads them again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
