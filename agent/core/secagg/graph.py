"""The committed neighbour graph: a Harary ring over a keyed random permutation (Bell et al.).

Clients are roster indices 0..n-1. A 32-byte round seed keys a ChaCha20 mask keystream whose
values order the clients on a ring; each client neighbours the k/2 clients on either side
(every other client when k = n - 1). Everyone recomputes the same graph from the seed that
the coordinator publishes in the round config, so the graph is fixed for the round.
"""

from __future__ import annotations

import functools

import numpy as np

from fedge.agent.core.crypto import MASK_KEY_BYTES, derive_key, expand_into
from fedge.agent.core.errors import ProtocolError


def ring_order(seed: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(perm, rank): perm[p] is the client at ring position p, rank[i] the position of client i."""
    if len(seed) != 32:
        raise ProtocolError("graph seed must be 32 bytes")
    return _ring(bytes(seed), int(n))


@functools.lru_cache(maxsize=2)
def _ring(seed: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The round's ring, kept (read-only): every client of a round, and every simulated client
    of a host, would otherwise sort the same n keys again (O(n log n) per client)."""
    keys = expand_into(derive_key(seed, "secagg/graph", n, length=MASK_KEY_BYTES), np.empty(n, np.uint64))
    perm = np.argsort(keys, kind="stable")
    rank = np.empty(n, np.int64)
    rank[perm] = np.arange(n)
    perm.flags.writeable = rank.flags.writeable = False
    return perm, rank


def _offsets(n: int, k: int) -> np.ndarray:
    h = k // 2
    return np.concatenate([np.arange(1, h + 1), -np.arange(1, h + 1)])


def neighbours_of(seed: bytes, n: int, k: int, i: int) -> np.ndarray:
    """Sorted roster indices of client ``i``'s k neighbours."""
    if k >= n - 1:
        return np.array([j for j in range(n) if j != i], np.int64)
    perm, rank = ring_order(seed, n)
    return np.sort(perm[(rank[i] + _offsets(n, k)) % n])


def neighbour_table(seed: bytes, n: int, k: int) -> np.ndarray:
    """(n, k) sorted neighbour indices of every client (the server's view of the graph)."""
    if k >= n - 1:
        full = np.tile(np.arange(n), (n, 1))
        return full[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    perm, rank = ring_order(seed, n)
    table = perm[(rank[:, None] + _offsets(n, k)[None, :]) % n]
    return np.sort(table, axis=1)
