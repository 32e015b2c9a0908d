"""Partitions of a pooled data set among clients: IID, Dirichlet(α) label skew, quantity skew, natural.

A partition is indexable by client id and never holds one Python object per client. Two layouts:

* :class:`SplitPartition` (disjoint): one permutation of the pool and an offsets array; client k
  owns ``order[offsets[k]:offsets[k + 1]]``. Used when the pool has at least ``min_size``
  samples per client.
* :class:`DrawPartition` (per-client draws): client k's samples are drawn on demand from
  ``default_rng([seed, k])``, after Hsu et al., "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification" (2019): class proportions q_k ~ Dir(α·C·p)
  for the pool's class prior p. Used when the population outgrows the pool (100,000 clients over
  1,797 digits): clients then share samples, each client holds no duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedge.agent.core.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("iid", "dirichlet", "quantity", "natural")
#: Fewest samples a client is given when the partition can choose.
MIN_SIZE = 10


@dataclass(frozen=True)
class PartitionSpec:
    """What ``--partition`` asked for: ``kind`` and its parameter (α for dirichlet, exponent for quantity)."""

    kind: str
    param: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind in ("iid", "natural") else f"{self.kind}:{self.param:g}"


def parse_partition_spec(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA``, ``quantity:EXPONENT`` or ``natural``."""
    kind, _, arg = spec.strip().partition(":")
    if kind in ("iid", "natural"):
        if arg:
            raise ConfigError(f"--partition {spec!r}: {kind} takes no parameter")
        return PartitionSpec(kind)
    if kind in ("dirichlet", "quantity"):
        try:
            value = float(arg)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"--partition {spec!r}: expected {kind}:NUMBER with a finite NUMBER > 0")
        return PartitionSpec(kind, value)
    raise ConfigError(f"--partition {spec!r}: expected iid, dirichlet:ALPHA, quantity:EXPONENT or natural")


@dataclass(frozen=True, eq=False)
class SplitPartition:
    """Disjoint: client k owns ``order[offsets[k]:offsets[k+1]]`` (indices into the pool)."""

    order: np.ndarray
    offsets: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def indices(self, k: int) -> np.ndarray:
        """Pool indices of client k's samples."""
        return self.order[self.offsets[k] : self.offsets[k + 1]]

    def sizes(self, ids: np.ndarray) -> np.ndarray:
        """Sample counts of the given clients, vectorised."""
        ids = np.asarray(ids)
        return self.offsets[ids + 1] - self.offsets[ids]


def _from_owner(owner: np.ndarray, num_clients: int, rng: np.random.Generator) -> SplitPartition:
    """Pack an owner-per-sample array into order + offsets (samples shuffled within each client)."""
    shuffled = rng.permutation(len(owner))
    order = shuffled[np.argsort(owner[shuffled], kind="stable")]
    counts = np.bincount(owner, minlength=num_clients)
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return SplitPartition(order.astype(np.int64), offsets)


def split_iid(n: int, num_clients: int, rng: np.random.Generator) -> SplitPartition:
    """Equal shares of a random permutation."""
    offsets = np.arange(num_clients + 1, dtype=np.int64) * n // num_clients
    return SplitPartition(rng.permutation(n).astype(np.int64), offsets)


def quantity_weights(num: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights: Pareto type I with shape ``exponent`` (P(W > w) = w^-exponent, w >= 1)."""
    return 1.0 + rng.pareto(exponent, num)


def split_quantity(
    n: int, num_clients: int, exponent: float, rng: np.random.Generator, min_size: int = MIN_SIZE
) -> SplitPartition:
    """Quantity skew: every client gets ``min_size``, the rest is shared in power-law proportions."""
    base = min(min_size, n // num_clients)
    w = quantity_weights(num_clients, exponent, rng)
    counts = base + rng.multinomial(n - base * num_clients, w / w.sum())
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return SplitPartition(rng.permutation(n).astype(np.int64), offsets)


def split_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> SplitPartition:
    """Label skew, disjoint (Yurochkin et al. 2019): each class is shared among clients in Dir(α) proportions.

    Small α gives each client few classes (and some clients may get no samples); large α tends to IID.
    """
    owner = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        p = rng.dirichlet(np.full(num_clients, alpha))
        counts = rng.multinomial(len(idx), p)
        owner[rng.permutation(idx)] = np.repeat(np.arange(num_clients), counts)
    return _from_owner(owner, num_clients, rng)


def split_natural(writers: np.ndarray, num_clients: int, rng: np.random.Generator) -> SplitPartition:
    """One client per writer (data that records who wrote it); needs at least ``num_clients`` writers."""
    _, owner = np.unique(writers, return_inverse=True)
    if owner.max() + 1 < num_clients:
        raise ConfigError(
            f"--partition natural: the data has {owner.max() + 1} writers, fewer than {num_clients} clients"
        )
    # Writers beyond the population are left out: a random subset of num_clients writers is kept.
    pick = rng.permutation(owner.max() + 1)[:num_clients]
    remap = np.full(owner.max() + 1, -1, dtype=np.int64)
    remap[pick] = np.arange(num_clients)
    mapped = remap[owner]
    keep = np.flatnonzero(mapped >= 0)
    part = _from_owner(mapped[keep], num_clients, rng)
    return SplitPartition(keep[part.order], part.offsets)


@dataclass(frozen=True, eq=False)
class DrawPartition:
    """Per-client draws from the pool, a pure function of ``(seed, k)``; clients may share samples.

    ``alpha`` None means the pool's class prior (IID); ``exponent`` None means every client holds
    ``size`` samples, else ``size`` times a power-law weight (capped at the pool).
    """

    by_class: np.ndarray  # pool indices sorted by class
    class_offsets: np.ndarray  # class c owns by_class[class_offsets[c]:class_offsets[c + 1]]
    num_clients: int
    seed: int
    size: int
    alpha: float | None = None
    exponent: float | None = None

    @classmethod
    def over(
        cls,
        labels: np.ndarray,
        num_clients: int,
        seed: int,
        size: int,
        alpha: float | None = None,
        exponent: float | None = None,
    ) -> DrawPartition:
        """Index the pool by class once, so each client's draw costs its own size, not the pool's."""
        by_class = np.argsort(labels, kind="stable").astype(np.int64)
        counts = np.bincount(labels)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(by_class, offsets, num_clients, seed, size, alpha, exponent)

    def _size(self, rng: np.random.Generator) -> int:
        if self.exponent is None:
            return self.size
        return int(min(len(self.by_class), self.size * quantity_weights(1, self.exponent, rng)[0]))

    def indices(self, k: int) -> np.ndarray:
        """Pool indices of client k's samples, drawn on demand."""
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client {k} is outside 0..{self.num_clients - 1}")
        rng = np.random.default_rng([self.seed, k])
        n = self._size(rng)
        if self.alpha is None:
            return np.sort(rng.choice(len(self.by_class), n, replace=False))
        counts = np.diff(self.class_offsets)
        present = np.flatnonzero(counts)
        q = rng.dirichlet(self.alpha * len(present) * counts[present] / counts.sum())
        per_class = np.minimum(rng.multinomial(n, q), counts[present])
        parts = [
            self.by_class[self.class_offsets[c] + rng.choice(counts[c], m, replace=False)]
            for c, m in zip(present, per_class)
            if m
        ]
        return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)

    def sizes(self, ids: np.ndarray) -> np.ndarray:
        """Sample counts of the given clients (draws each client's size, not its samples)."""
        return np.array([len(self.indices(int(k))) for k in np.asarray(ids)], dtype=np.int64)


Partition = SplitPartition | DrawPartition


def make_partition(
    spec: PartitionSpec,
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    writers: np.ndarray | None = None,
    min_size: int = MIN_SIZE,
) -> Partition:
    """The partition a spec names over a pool with these labels: disjoint if the pool is big enough."""
    n = len(labels)
    if spec.kind == "natural":
        if writers is None:
            raise ConfigError(
                "--partition natural: this data set has no natural split (no writer ids); "
                "use Synthetic, an .npz with a 'writer' array, or iid/dirichlet/quantity"
            )
        return split_natural(writers, num_clients, rng)
    if n >= num_clients * min_size:
        if spec.kind == "iid":
            return split_iid(n, num_clients, rng)
        if spec.kind == "quantity":
            return split_quantity(n, num_clients, spec.param, rng, min_size)
        return split_dirichlet(labels, num_clients, spec.param, rng)
    log.info(
        "pool of %d samples is too small for %d disjoint clients of %d: clients draw from it", n, num_clients, min_size
    )
    return DrawPartition.over(
        labels,
        num_clients,
        int(rng.integers(0, 2**63 - 1)),
        min_size,
        alpha=spec.param if spec.kind == "dirichlet" else None,
        exponent=spec.param if spec.kind == "quantity" else None,
    )
