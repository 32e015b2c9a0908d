"""OS randomness for keys, seeds and nonces: the one place fedge draws secret random bytes."""

from __future__ import annotations

import os


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's CSPRNG (``os.urandom``)."""
    if n < 0:
        raise ValueError("negative length")
    return os.urandom(n)


def random_seed() -> int:
    """A 63-bit integer seed from the OS CSPRNG, for generators whose seed must stay private."""
    return int.from_bytes(random_bytes(8), "little") >> 1
