"""SecAgg+ parameters: validated up front, derived from n, dropout and corruption, with bounds.

Security model (Bell et al. 2020, sec. 3-4; sized as Google's federated-compute SecAgg server
does, ``fcp/secagg/server/graph_parameter_finder.cc``, semi-malicious server). Client j's
secrets are shared t-of-k among its k neighbours. An honest neighbour reveals at most one of
j's two secrets (self-mask seed if j survived, mask key if it dropped); a corrupt one reveals
both. A server lying about who dropped therefore needs ``c + h >= 2t`` with c corrupt and h
honest neighbours, i.e. ``c >= 2t - k``. So :class:`SecAggParams` requires ``2t > k`` always.

The rates are caps: at most ``C = ceil(corrupt * n)`` clients are corrupt and at most
``D = ceil(dropout * n)`` drop out (rounded up, against us; the deployed finder rounds down). The graph is a ring over a uniformly random permutation, so
a client's k neighbours are a uniform k-subset of the other n - 1 clients and the number of
corrupt (dropped) ones is hypergeometric: drawn without replacement, not binomial. With union
bounds, :func:`derive_params` picks k and t so that

* failure:   ``n * P[Hyp(n-1, D, k) >= k - t + 1]`` <= 2^-correctness_bits
  (some client has fewer than t surviving neighbours: a secret lacks t holders, or a revealer
  lacks t neighbour signatures; both are that event for one client);
* privacy:   ``(n - C) * P[Hyp(n-1, C, k) >= 2t - k]`` (an honest client loses both secrets);
* partition: ``n (n-k-1) / 2 * (B)_k / (n)_k`` with ``B = C + D`` (the honest survivors' graph
  is cut only by two disjoint runs of k/2 bad clients on the ring: ``n (n-k-1)/2`` pairs of
  places, and k given places all bad with probability ``B (B-1)...(B-k+1) / n (n-1)...(n-k+1)``);
  0 for the complete graph;

and ``privacy + partition <= 2^-security_bits``: one budget for the two bad events, as in the
deployed finder (which gives each half; here partition takes what it needs and privacy the rest).

Tails are summed exactly in log space from the probability mass at the starting point (lgamma),
term ratios after it, and a geometric bound on the remainder (the hypergeometric is log-concave,
so the ratios only fall past the mode): an upper bound within 2^-56 of the exact tail. The
search bisects on k, then tries the 16 even degrees below what it found (feasibility is monotone
in k up to lattice effects in t), so it evaluates some 60 degrees, not thousands; results are
cached per (n, rates, bits), and :func:`prewarm` fills the cache off the round's path.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from fedge.agent.core.crypto import kem
from fedge.agent.core.crypto.keystream import AES256_CTR, CHACHA20, aes_available
from fedge.agent.core.errors import ConfigError, ProtocolError

#: The SecAgg+ cipher suite both ends must run: X25519 agreement, BLAKE2b key derivation,
#: ChaCha20-Poly1305 shares, chunked libsodium ChaCha20 masks (docs/secagg.md, "Primitives").
#: A device refuses a round config that names another suite, so peers of different fedge
#: versions fail with a clear reason instead of masks that do not cancel.
SUITE = "fedge-secagg+/x25519-blake2b-chacha20"
#: The same with AES-256-CTR masks (shares stay ChaCha20-Poly1305), for rounds where every device
#: reported it at check-in: only devices whose CPU has AES instructions support it.
SUITE_AES = "fedge-secagg+/x25519-blake2b-aes256ctr"
#: The hybrid post-quantum suite: every pairwise key (share encryption and pair masks) combines
#: X25519 with ML-KEM-768 (FIPS 203) by concatenate-then-KDF (docs/secagg.md, "Hybrid suite");
#: ChaCha20 masks. Runs where ``cryptography`` with ML-KEM is installed (the ``pq`` extra). v2: one
#: ML-KEM key per device, pair secrets sealed in the share channels (v1 had a second, mask KEM key).
SUITE_PQ = "fedge-secagg+/x25519-mlkem768-blake2b-chacha20/v2"
#: Suite -> mask stream (``fedge.agent.core.crypto.keystream``).
MASK_STREAMS = {SUITE: CHACHA20, SUITE_AES: AES256_CTR, SUITE_PQ: CHACHA20}
#: Suites whose pairwise keys include ML-KEM-768.
HYBRID_SUITES = frozenset({SUITE_PQ})
MIN_BITS = 16
MAX_BITS = 32
MAX_CLIENTS = 1 << 20
MAX_DIM = 1 << 28


class InvalidParams(ConfigError, ValueError):
    """A SecAgg parameter is out of range (a ConfigError; a WireError when it arrives decoded)."""


def supported_suites(require: str | None = None) -> tuple[str, ...]:
    """The suites this device can run, as it reports them at check-in (ChaCha20 always; AES where
    libsodium has AES instructions to run it; the hybrid where ML-KEM is installed, found without
    importing it). A device whose profile requires a suite reports that one alone (none if it
    cannot run it), so the coordinator never picks another for it."""
    out = (SUITE, SUITE_AES) if aes_available() else (SUITE,)
    if kem.available():
        out = (*out, SUITE_PQ)
    if require is not None:
        return (require,) if require in out else ()
    return out


def mask_stream(suite: str) -> str:
    """The mask stream of ``suite``; ProtocolError for a suite this device cannot run (for the
    hybrid this loads ML-KEM, and refuses when this build's OpenSSL cannot run it)."""
    if suite not in supported_suites() or (suite in HYBRID_SUITES and not kem.runs()):
        raise ProtocolError(f"SecAgg+ suite {suite!r} is not one this device runs {supported_suites()!r}")
    return MASK_STREAMS[suite]


def choose_suite(reports: Iterable[Iterable[str]], *, prefer_hybrid: bool = False) -> str:
    """The coordinator's pick for a round from what each device reported at check-in. The hybrid
    when every device (and the coordinator) runs it and either ``prefer_hybrid`` or some device
    requires it (it reports the hybrid alone); else AES when every device supports it, else ChaCha20.
    A device that requires the hybrid refuses whatever else is picked (see SecAggClient)."""
    every = [set(r) for r in reports]
    if every and all(SUITE_PQ in r for r in every) and SUITE_PQ in supported_suites():
        if prefer_hybrid or any(r <= HYBRID_SUITES for r in every):
            return SUITE_PQ
    if every and all(SUITE_AES in r for r in every) and SUITE_AES in supported_suites():
        return SUITE_AES
    return SUITE


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
    """Union bounds (probabilities) for a parameter choice; see the module docstring.

    ``security`` = privacy + partition, the total chance of a privacy breach.
    """

    failure: float
    privacy: float
    partition: float

    @property
    def security(self) -> float:
        """Total probability of either bad event (what the 2^-security_bits budget covers)."""
        return self.privacy + self.partition

    def as_dict(self) -> dict[str, float]:
        """For reports and JSON."""
        return {"failure": self.failure, "privacy": self.privacy, "partition": self.partition}


_NEG_INF = float("-inf")
#: Relative size of the last summed term at which a tail sum stops (the rest is bounded).
_TAIL_EPS = 2.0**-56
#: Even degrees below the bisection's answer that are tried too (lattice effects in t).
_WINDOW = 16


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _log_sum_up(pop: int, marked: int, drawn: int, m: int, hi: int) -> float:
    """log sum_{x=m}^{hi} P[X = x], X ~ Hyp(pop, marked, drawn); m at or past the mode.

    Terms after the first come from the pmf ratio; once a term is below ``_TAIL_EPS`` of the
    sum, the rest is bounded by the geometric series of the current ratio (log-concavity: the
    ratios only fall), so the result is an upper bound within a factor 1 + 2^-56."""
    log_first = _log_comb(marked, m) + _log_comb(pop - marked, drawn - m) - _log_comb(pop, drawn)
    base = pop - marked - drawn + 1
    total, term, x = 1.0, 1.0, m
    while x < hi:
        r = (marked - x) * (drawn - x) / ((x + 1) * (base + x))
        term *= r
        total += term
        x += 1
        if r < 1.0 and term < total * _TAIL_EPS:
            total += term * r / (1.0 - r)
            break
    return log_first + math.log(total)


def log_tail_ge(pop: int, marked: int, drawn: int, m: int) -> float:
    """log P[X >= m] for X ~ Hypergeometric(pop, marked, drawn): ``drawn`` items drawn without
    replacement from ``pop`` of which ``marked`` are marked, X the marked ones drawn."""
    lo, hi = max(0, drawn - (pop - marked)), min(drawn, marked)
    if m <= lo:
        return 0.0
    if m > hi:
        return _NEG_INF
    mode = (drawn + 1) * (marked + 1) // (pop + 2)
    if m > mode:
        return _log_sum_up(pop, marked, drawn, m, hi)
    # P[X >= m] = 1 - P[drawn - X >= drawn - m + 1], and drawn - X ~ Hyp(pop, pop - marked, drawn)
    lower = _log_sum_up(pop, pop - marked, drawn, drawn - m + 1, drawn - lo)
    return math.log1p(-math.exp(lower)) if lower < 0.0 else _NEG_INF


def _quantile(pop: int, marked: int, drawn: int, log_q: float) -> int:
    """The smallest m with P[X >= m] <= e^log_q, for log_q < -log(drawn + 1) (so m is past the
    mode, where P[X = mode] >= 1/(drawn + 1) already exceeds the budget)."""
    lo = (drawn + 1) * (marked + 1) // (pop + 2) + 1  # P[X >= lo - 1] > q
    hi = min(drawn, marked) + 1  # P[X >= hi] = 0
    lo = min(lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if log_tail_ge(pop, marked, drawn, mid) <= log_q:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _counts(n: int, dropout_rate: float, corrupt_fraction: float) -> tuple[int, int]:
    """(corrupt C, dropped D): the caps the rates put on n clients, rounded against us."""
    return math.ceil(corrupt_fraction * n - 1e-9), math.ceil(dropout_rate * n - 1e-9)


def _log_partition(n: int, k: int, bad: int) -> float:
    """log of the partition bound (module docstring); -inf when it cannot happen."""
    if k >= n - 1 or k > bad:
        return _NEG_INF
    return (
        math.log(n) + math.log(n - k - 1) - math.log(2)
        + math.lgamma(bad + 1) - math.lgamma(bad - k + 1) + math.lgamma(n - k + 1) - math.lgamma(n + 1)
    )  # fmt: skip


def _log_binom_tail_ge(n: int, p: float, m: int) -> float:
    """log P[Binomial(n, p) >= m], summed as :func:`log_tail_ge` sums (m past the mode)."""
    if m <= 0:
        return 0.0
    if m > n or p <= 0.0:
        return _NEG_INF
    total, term, x = 1.0, 1.0, m
    odds = p / (1.0 - p)
    while x < n:
        r = (n - x) / (x + 1) * odds
        term *= r
        total += term
        x += 1
        if r < 1.0 and term < total * _TAIL_EPS:
            total += term * r / (1.0 - r)
            break
    return _log_comb(n, m) + m * math.log(p) + (n - m) * math.log1p(-p) + math.log(total)


def dropout_cap(n: int, expected_rate: float, bits: int = 21) -> float:
    """The dropout cap to derive with when devices drop independently at ``expected_rate``: the
    smallest fraction D/n with ``P[Binomial(n, expected_rate) > D] <= 2^-bits``. A round that
    refuses to finish with more than D dropped (``min_clients = n - D``) keeps the partition bound
    for every sum it releases, and fails this way with probability at most 2^-bits."""
    if not 0.0 <= expected_rate < 1.0:
        raise InvalidParams(f"dropout_rate {expected_rate} must be in [0, 1)")
    log_q = -bits * math.log(2)
    lo = max(0, math.floor(expected_rate * n))  # at or below the mean: never enough
    hi = n
    while lo < hi:  # the smallest D with P[X >= D + 1] <= q
        mid = (lo + hi) // 2
        if _log_binom_tail_ge(n, expected_rate, mid + 1) <= log_q:
            hi = mid
        else:
            lo = mid + 1
    return min(lo / n, 1.0 - 1.0 / n) if n > 1 else 0.0


def _check_rates(dropout_rate: float, corrupt_fraction: float) -> None:
    if not 0.0 <= dropout_rate < 1.0:
        raise InvalidParams(f"dropout_rate {dropout_rate} must be in [0, 1)")
    if not 0.0 <= corrupt_fraction < 0.5:
        raise InvalidParams(f"corrupt_fraction {corrupt_fraction} must be in [0, 0.5)")


def _exp(x: float) -> float:
    return min(1.0, math.exp(x)) if x > _NEG_INF else 0.0


def bounds(n: int, k: int, t: int, dropout_rate: float, corrupt_fraction: float) -> SecAggBounds:
    """Failure, privacy and partition bounds for n clients, k neighbours, threshold t."""
    _check_rates(dropout_rate, corrupt_fraction)
    c, d = _counts(n, dropout_rate, corrupt_fraction)
    honest = n - c
    failure = _exp(math.log(n) + log_tail_ge(n - 1, d, k, k - t + 1))
    privacy = _exp(math.log(honest) + log_tail_ge(n - 1, c, k, 2 * t - k)) if honest else 0.0
    partition = _exp(_log_partition(n, k, c + d))
    return SecAggBounds(failure, privacy, partition)


def params_bounds(params: SecAggParams, dropout_rate: float, corrupt_fraction: float) -> SecAggBounds:
    """:func:`bounds` for a :class:`SecAggParams`."""
    return bounds(params.num_clients, params.neighbours, params.threshold, dropout_rate, corrupt_fraction)


def _threshold_for(
    n: int,
    k: int,
    c: int,
    d: int,
    log_sec: float,
    log_cor: float,
) -> int | None:
    """The smallest threshold meeting both budgets at degree k, or None if none does."""
    log_part = _log_partition(n, k, c + d)
    if log_part > log_sec:
        return None
    # privacy gets what partition leaves of the one budget
    room = math.exp(log_sec) - (math.exp(log_part) if log_part > _NEG_INF else 0.0)
    if room <= 0.0:
        return None
    honest = n - c
    m = _quantile(n - 1, c, k, math.log(room) - math.log(honest)) if honest else 1
    t = max(k // 2 + 1, -(-(m + k) // 2))  # 2t - k >= m
    if t > k or math.log(n) + log_tail_ge(n - 1, d, k, k - t + 1) > log_cor:
        return None
    return t


@functools.lru_cache(maxsize=256)
def _degree_threshold(
    n: int,
    dropout_rate: float,
    corrupt_fraction: float,
    security_bits: int,
    correctness_bits: int,
) -> tuple[int, int] | None:
    """(k, t) for :func:`derive_params`, cached: the search is pure in its arguments."""
    c, d = _counts(n, dropout_rate, corrupt_fraction)
    log_sec, log_cor = -security_bits * math.log(2), -correctness_bits * math.log(2)

    def t_at(k: int) -> int | None:
        return _threshold_for(n, k, c, d, log_sec, log_cor)

    top = n - 2 if n % 2 == 0 else n - 3  # largest even degree below the complete graph
    if top >= 2:
        # partition falls with k: the smallest even degree it allows, by bisection
        lo, hi = 1, top // 2 + 1  # in units of 2
        while lo < hi:
            mid = (lo + hi) // 2
            if _log_partition(n, 2 * mid, c + d) <= log_sec:
                hi = mid
            else:
                lo = mid + 1
        start = 2 * lo
        found: int | None = None
        bad_below = start - 2
        step, k = 2, start
        while k <= top:  # gallop up to a feasible degree
            if t_at(k) is not None:
                found = k
                break
            bad_below = k
            k, step = k + step, step * 2
        if found is None and bad_below < top and t_at(top) is not None:
            found = top
        if found is not None:
            lo_k, hi_k = bad_below, found  # infeasible at lo_k (or below start), feasible at hi_k
            while hi_k - lo_k > 2:
                mid = lo_k + ((hi_k - lo_k) // 4) * 2
                if t_at(mid) is not None:
                    hi_k = mid
                else:
                    lo_k = mid
            best = hi_k
            for k in range(hi_k - 2, max(start, hi_k - 2 * _WINDOW) - 1, -2):
                if t_at(k) is not None:
                    best = k
            t = t_at(best)
            assert t is not None
            return best, t
    t = t_at(n - 1)
    return (n - 1, t) if t is not None else None


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
    """The smallest k (then smallest t) meeting the bounds of the module docstring: privacy and
    partition together <= 2^-security_bits, failure <= 2^-correctness_bits; k = n - 1 if nothing
    smaller does. Cached per (n, rates, bits): a repeat costs a dictionary lookup.

    Raises :class:`ConfigError` when even the complete graph cannot meet them.
    """
    _check_rates(dropout_rate, corrupt_fraction)
    if type(n) is not int or n < 2:
        raise InvalidParams(f"secagg needs at least 2 clients, got {n}")
    if n > MAX_CLIENTS:
        raise InvalidParams(f"secagg num_clients {n} must be at most {MAX_CLIENTS}")
    kt = _degree_threshold(n, float(dropout_rate), float(corrupt_fraction), int(security_bits), int(correctness_bits))
    if kt is None:
        raise InvalidParams(
            f"no SecAgg+ parameters for n={n}, dropout={dropout_rate}, corrupt={corrupt_fraction} "
            f"meet 2^-{security_bits} privacy and 2^-{correctness_bits} failure"
        )
    k, t = kt
    floor = min_clients if min_clients is not None else max(2, min(n, t + 1))
    return SecAggParams(n, k, t, dim, bits, floor)


def prewarm(sizes: Iterable[int], dropout_rate: float, corrupt_fraction: float, **kw: int) -> threading.Thread:
    """Derive (k, t) for every cohort size in ``sizes`` on a daemon thread, so a round that
    starts later finds them cached (the coordinator calls this when it knows the cohort)."""

    def work() -> None:
        for n in sizes:
            try:
                derive_params(n, dropout_rate, corrupt_fraction, 1, **kw)
            except InvalidParams:
                pass

    th = threading.Thread(target=work, name="secagg-params-prewarm", daemon=True)
    th.start()
    return th
