"""The one factory of noise generators: a ``numpy.random.Generator`` seeded from OS entropy.

DP noise must never come from numpy's global state or a guessable seed; every noising
function takes the generator this returns (tests pass a seeded one instead).
"""

from __future__ import annotations

import os

import numpy as np

_SEED_BYTES = 32


def os_generator() -> np.random.Generator:
    """A fresh PCG64 generator whose 256-bit seed comes from ``os.urandom``."""
    seed = int.from_bytes(os.urandom(_SEED_BYTES), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
