"""The one check every primitive applies to its inputs: bytes-like, never an int.

``bytes(32)`` is 32 zero bytes, so a key passed as a number would silently become an all-zero
key; primitives call :func:`as_bytes` instead of ``bytes()``.
"""

from __future__ import annotations

from fedge.agent.core.errors import SecurityError


def as_bytes(value: object) -> bytes:
    """``value`` as ``bytes`` if it is bytes-like; :class:`SecurityError` otherwise."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise SecurityError("expected bytes")
