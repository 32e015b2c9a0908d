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
        if isinstance(p, bytes):
            b = p
        elif isinstance(p, str):
            b = p.encode()
        elif type(p) is int:  # never a bool
            b = _Q.pack(p)
        else:
            raise TypeError(f"transcript part must be bytes, str or int, got {type(p).__name__}")
        chunks.append(_LEN.pack(len(b)))
        chunks.append(b)
    return hashlib.sha256(b"".join(chunks)).digest()
