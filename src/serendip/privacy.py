"""Pseudonymised user ids: the id a caller uses, stored as a keyed hash.

With a key configured (``serve --user-id-key-file``), the service stores and models
``pseudonymize(user_id, key)`` instead of the id itself: HMAC-SHA256 of the UTF-8 id under the
key, as ``"p_"`` and 40 hex digits.  The key never enters the store, so the store alone cannot
tell whose events it holds; whoever holds the key maps a known id to its stored form (to serve,
erase or export it).  The mapping is deterministic, so lists, histories and erasure work as
with plain ids.  A key is at least 32 bytes, read from a file that is not readable by others.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from serendip.errors import ConfigError

__all__ = ["pseudonymize", "read_key_file", "MIN_KEY_BYTES"]

#: Shortest key accepted (bytes).
MIN_KEY_BYTES = 32


def pseudonymize(user_id: str, key: bytes) -> str:
    """The stored form of ``user_id`` under ``key``."""
    digest = hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return "p_" + digest.hexdigest()[:40]


def read_key_file(path: str | Path) -> bytes:
    """The key in ``path`` (surrounding whitespace removed); refuses a short key or a file
    others can read."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"user id key file not found: {str(path)!r}")
    mode = p.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"user id key file {str(path)!r} is readable by others; "
                          f"run: chmod 600 {p}")
    key = p.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"user id key file {str(path)!r} holds {len(key)} bytes; at least "
                          f"{MIN_KEY_BYTES} are needed (e.g. head -c 48 /dev/urandom | base64)")
    return key
