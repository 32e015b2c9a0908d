"""SecAgg+ parameters: validated up front, derived from n, dropout and corruption, with bounds.

Security model (Bell et al. 2020, sec. 3-4). Client j's secrets are shared t-of-k among its k
neighbours. An honest neighbour reveals at most one of j's two secrets (self-mask seed if j
survived, mask key if it dropped); a corrupt one reveals both. A server lying about who dropped
therefore needs ``c + h >= 2t`` with c corrupt and h honest neighbours, i.e. ``c >= 2t - k``.
So :class:`SecAggParams` requires ``2t > k`` always, and :func:`derive_params` picks k and t so
that, with a union bound over the n clients,

* failure:  ``2n * P[Binomial(k, 1 - dropout) < t]``  <= 2^-correctness_bits
  (a secret lacks t surviving holders, or a revealer lacks t neighbour signatures);
* privacy:  ``n * P[Binomial(k, corrupt) >= 2t - k]`` <= 2^-security_bits
  (the server gets both secrets of one client);
* partition: ``n * (corrupt + dropout)^(k/2)``          <= 2^-security_bits
  (a run of k/2 bad clients on the permuted ring cuts the honest survivors' graph, which
  would let the server learn sums over parts of the survivors). Not needed when k = n - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.agent.core.errors import ConfigError

#: The SecAgg+ cipher suite both ends must run: X25519 agreement, BLAKE2b key derivation,
#: ChaCha20-Poly1305 shares, chunked libsodium ChaCha20 masks (docs/secagg.md, "Primitives").
#: A device refuses a round config that names another suite, so peers of different fedge
#: versions fail with a clear reason instead of masks that do not cancel.
SUITE = "fedge-secagg+/x25519-blake2b-chacha20"
MIN_BITS = 16
MAX_BITS = 32
MAX_CLIENTS = 1 << 20
MAX_DIM = 1 << 28


class InvalidParams(ConfigError, ValueError):
    """A SecAgg parameter is out of range (a ConfigError; a WireError when it arrives decoded)."""


@dataclass(frozen=True)
class SecAggParams:
    """One round's parameters, identical on coordinator and devices.

    ``num_clients`` n is the roster size; each client has ``neighbours`` k (even, or n - 1 for
    the complete graph); secrets are shared ``threshold``-of-k; vectors have ``dim`` elements
    summed modulo 2^``bits``; the round refuses to release a sum of fewer than ``min_clients``.
    """

    num_clients: int
    neighbours: int
    threshold: int
    dim: int
    bits: int = 32
    min_clients: int = 2

    def __post_init__(self) -> None:
        n, k, t = self.num_clients, self.neighbours, self.threshold
        for name in ("num_clients", "neighbours", "threshold", "dim", "bits", "min_clients"):
            v = getattr(self, name)
            if type(v) is not int:
                raise InvalidParams(f"secagg {name} must be an int, got {type(v).__name__}")
        if not 2 <= n <= MAX_CLIENTS:
            raise InvalidParams(f"secagg num_clients {n} must be in 2..{MAX_CLIENTS}")
        if not 1 <= k <= n - 1:
            raise InvalidParams(f"secagg neighbours {k} must be in 1..n-1 = {n - 1}")
        if k != n - 1 and k % 2:
            raise InvalidParams(f"secagg neighbours {k} must be even unless it is n-1 (complete graph)")
        if not (k // 2 + 1 <= t <= k):
            raise InvalidParams(f"secagg threshold {t} must satisfy k/2 < t <= k for k = {k}")
        if not 1 <= self.dim <= MAX_DIM:
            raise InvalidParams(f"secagg dim {self.dim} must be in 1..{MAX_DIM}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise InvalidParams(f"secagg bits {self.bits} must be in {MIN_BITS}..{MAX_BITS}")
        if not 1 <= self.min_clients <= n:
            raise InvalidParams(f"secagg min_clients {self.min_clients} must be in 1..n = {n}")

    @property
    def complete(self) -> bool:
        """True when every client neighbours every other (classic SecAgg)."""
        return self.neighbours == self.num_clients - 1

    @property
    def word_bits(self) -> int:
        """Bits of the storage word for masked vectors: 16 or 32."""
        return 16 if self.bits <= 16 else 32


@dataclass(frozen=True)
class SecAggBounds:
    """Union bounds (probabilities) for a parameter choice; see the module docstring."""

    failure: float
    privacy: float
    partition: float

    def as_dict(self) -> dict[str, float]:
        """For reports and JSON."""
        return {"failure": self.failure, "privacy": self.privacy, "partition": self.partition}


def _binom_tail_ge(k: int, p: float, m: int) -> float:
    """P[Binomial(k, p) >= m]."""
    if m <= 0:
        return 1.0
    if m > k:
        return 0.0
    return min(1.0, math.fsum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(m, k + 1)))


def _check_rates(dropout_rate: float, corrupt_fraction: float) -> None:
    if not 0.0 <= dropout_rate < 1.0:
        raise InvalidParams(f"dropout_rate {dropout_rate} must be in [0, 1)")
    if not 0.0 <= corrupt_fraction < 0.5:
        raise InvalidParams(f"corrupt_fraction {corrupt_fraction} must be in [0, 0.5)")


def bounds(n: int, k: int, t: int, dropout_rate: float, corrupt_fraction: float) -> SecAggBounds:
    """Failure, privacy and partition bounds for n clients, k neighbours, threshold t."""
    _check_rates(dropout_rate, corrupt_fraction)
    failure = min(1.0, 2 * n * (1.0 - _binom_tail_ge(k, 1 - dropout_rate, t)))
    privacy = min(1.0, n * _binom_tail_ge(k, corrupt_fraction, 2 * t - k))
    partition = 0.0 if k >= n - 1 else min(1.0, n * (dropout_rate + corrupt_fraction) ** (k // 2))
    return SecAggBounds(failure, privacy, partition)


def params_bounds(params: SecAggParams, dropout_rate: float, corrupt_fraction: float) -> SecAggBounds:
    """:func:`bounds` for a :class:`SecAggParams`."""
    return bounds(params.num_clients, params.neighbours, params.threshold, dropout_rate, corrupt_fraction)


def derive_params(
    n: int,
    dropout_rate: float,
    corrupt_fraction: float,
    dim: int,
    *,
    bits: int = 32,
    security_bits: int = 40,
    correctness_bits: int = 20,
    min_clients: int | None = None,
) -> SecAggParams:
    """The smallest k (then smallest t) meeting all three bounds; k = n - 1 if nothing smaller does.

    Raises :class:`ConfigError` when even the complete graph cannot meet them.
    """
    _check_rates(dropout_rate, corrupt_fraction)
    if type(n) is not int or n < 2:
        raise InvalidParams(f"secagg needs at least 2 clients, got {n}")
    sec, cor = 2.0**-security_bits, 2.0**-correctness_bits
    candidates = list(range(2, n - 1, 2)) + [n - 1]
    for k in candidates:
        b = bounds(n, k, k, dropout_rate, corrupt_fraction)
        if b.partition > sec:
            continue
        for t in range(k // 2 + 1, k + 1):
            b = bounds(n, k, t, dropout_rate, corrupt_fraction)
            if b.privacy > sec:
                continue
            if b.failure <= cor:
                floor = min_clients if min_clients is not None else max(2, min(n, t + 1))
                return SecAggParams(n, k, t, dim, bits, floor)
            break  # a larger t only makes failure likelier
    raise InvalidParams(
        f"no SecAgg+ parameters for n={n}, dropout={dropout_rate}, corrupt={corrupt_fraction} "
        f"meet 2^-{security_bits} privacy and 2^-{correctness_bits} failure"
    )
