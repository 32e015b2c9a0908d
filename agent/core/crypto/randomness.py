"""OS randomness for keys, seeds and nonces: the one place fedge draws secret random bytes."""

from __future__ import annotations

import os


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG (``os.urandom``)."""
    if n < 0:
        raise ValueError("negative length")
    return os.urandom(n)
