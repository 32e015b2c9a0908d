"""Unambiguous SHA-256 transcripts: what gets signed or bound, with a domain-separation label."""

from __future__ import annotations

import hashlib
import struct

_Q = struct.Struct(">q")
_LEN = struct.Struct(">Q")


def transcript(label: str, *parts: bytes | str | int) -> bytes:
    """SHA-256 over the label and each part, every one length-prefixed (ints as int64)."""
    chunks = []
    for p in (b"fedge/v1/" + label.encode(), *parts):
        if type(p) is int:
            p = _Q.pack(p)
        elif type(p) is str:
            p = p.encode()
        chunks.append(_LEN.pack(len(p)))
        chunks.append(p)
    return hashlib.sha256(b"".join(chunks)).digest()
