"""Unambiguous SHA-256 transcripts: what gets signed or bound, with a domain-separation label."""

from __future__ import annotations

import hashlib
import struct


def transcript(label: str, *parts: bytes | str | int) -> bytes:
    """SHA-256 over the label and each part, every one length-prefixed (ints as int64)."""
    h = hashlib.sha256()
    for p in (b"fedge/v1/" + label.encode(), *parts):
        if isinstance(p, int):
            p = struct.pack(">q", p)
        elif isinstance(p, str):
            p = p.encode()
        h.update(struct.pack(">Q", len(p)))
        h.update(p)
    return h.digest()
