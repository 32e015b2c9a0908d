"""SecAgg+ parameter derivation: hypergeometric tails, one 2^-40 budget, the deployed figures, speed."""

from __future__ import annotations

import math
import random
import time
from fractions import Fraction

import pytest
from scipy.stats import hypergeom

from fedge.agent.core.secagg import params as P
from fedge.agent.core.secagg.params import bounds, derive_params, log_tail_ge, params_bounds, prewarm

SEC, COR = 2.0**-40, 2.0**-20

#: (n, corrupt, dropout, degree, threshold) for the SEMI_MALICIOUS_SERVER rows of the deployed
#: implementation's own table: google-parfait/federated-compute,
#: fcp/secagg/server/graph_parameter_finder_test.cc (security 40, correctness 20).
DEPLOYED = [
    (100, 0.3, 0.3, 92, 62), (1000, 0.3, 0.3, 872, 584), (10000, 0.3, 0.3, 4822, 3230),
    (100000, 0.3, 0.3, 9388, 6286), (1000000, 0.3, 0.3, 11136, 7454),
    (10, 0.05, 0.33, 8, 5), (100, 0.05, 0.33, 72, 39), (1000, 0.05, 0.33, 398, 223),
    (10000, 0.05, 0.33, 746, 420), (100000, 0.05, 0.33, 882, 496), (1000000, 0.05, 0.33, 970, 545),
    (10, 0.33, 0.05, 4, 4), (100, 0.33, 0.05, 42, 37), (1000, 0.33, 0.05, 132, 109),
    (10000, 0.33, 0.05, 178, 146), (100000, 0.33, 0.05, 196, 160), (1000000, 0.33, 0.05, 212, 173),
    (10, 0.05, 0.05, 2, 2), (100, 0.05, 0.05, 16, 11), (1000, 0.05, 0.05, 52, 37),
    (10000, 0.05, 0.05, 62, 44), (100000, 0.05, 0.05, 68, 48), (1000000, 0.05, 0.05, 74, 52),
    (10, 0.33, 0.0, 4, 4), (100, 0.33, 0.0, 26, 26), (1000, 0.33, 0.0, 38, 37),
    (10000, 0.33, 0.0, 42, 41), (100000, 0.33, 0.0, 46, 45), (1000000, 0.33, 0.0, 50, 49),
    (10, 0.0, 0.33, 8, 5), (100, 0.0, 0.33, 68, 35), (1000, 0.0, 0.33, 228, 115),
    (10000, 0.0, 0.33, 326, 164), (100000, 0.0, 0.33, 372, 187), (1000000, 0.0, 0.33, 410, 206),
    (10, 0.0, 0.0, 2, 2), (1000000, 0.0, 0.0, 2, 2),
]  # fmt: skip


@pytest.mark.parametrize("n,corrupt,dropout,degree,threshold", [r for r in DEPLOYED if r[0] >= 100])
def test_degree_within_ten_percent_of_the_deployed_finder(n, corrupt, dropout, degree, threshold) -> None:
    p = derive_params(n, dropout, corrupt, 10)
    assert abs(p.neighbours - degree) <= 0.10 * degree, (p.neighbours, degree)
    b = params_bounds(p, dropout, corrupt)
    assert b.privacy + b.partition <= SEC and b.failure <= COR


def test_ten_clients_round_the_caps_up_where_the_deployed_finder_rounds_down() -> None:
    # 5% of 10 is one corrupt device here (zero there): k=4, t=3 instead of k=2, t=2
    p = derive_params(10, 0.05, 0.05, 1)
    assert (p.neighbours, p.threshold) == (4, 3)
    assert P._counts(10, 0.05, 0.05) == (1, 1) and P._counts(1000, 0.33, 0.05) == (50, 330)


def test_old_binomial_example_is_now_near_the_deployed_degree() -> None:
    # the case: binomial tails and a 2^-40 budget per event picked k=746 here
    p = derive_params(1000, 0.33, 0.05, 10)
    assert p.neighbours == 398 and p.threshold == 223


RATES = (0.0, 0.05, 0.1, 0.2, 0.33)


@pytest.mark.parametrize("n", [10**3, 10**4, 10**5, 10**6])
def test_every_derivation_takes_under_a_second(n: int) -> None:
    slowest = 0.0
    for d in RATES:
        for c in RATES:
            P._degree_threshold.cache_clear()
            t0 = time.perf_counter()
            try:
                derive_params(n, d, c, 1)
            except P.InvalidParams:
                pass
            slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 1.0  # measured: at most ~0.07 s on a shared 2-core machine


def test_repeat_is_a_cache_hit_and_prewarm_fills_the_cache() -> None:
    P._degree_threshold.cache_clear()
    prewarm([5000, 6000], 0.1, 0.05).join(timeout=30)
    info = P._degree_threshold.cache_info()
    assert info.currsize == 2 and info.hits == 0
    derive_params(6000, 0.1, 0.05, 7)
    assert P._degree_threshold.cache_info().hits == 1


def test_tail_matches_scipy_above_and_below_the_mode() -> None:
    rng = random.Random(20)
    for _ in range(400):
        pop = rng.randint(2, 3000)
        marked = rng.randint(0, pop)
        drawn = rng.randint(1, pop)
        m = rng.randint(0, drawn + 1)
        exact = hypergeom.sf(m - 1, pop, marked, drawn)
        got = log_tail_ge(pop, marked, drawn, m)
        if m > min(drawn, marked):
            assert got == float("-inf") and exact == 0.0
        elif exact < 1e-300:  # scipy underflows; the tail is positive but tiny
            assert -math.inf < got < math.log(1e-290)
        else:
            # an upper bound, within float error of the exact tail
            assert math.exp(got) == pytest.approx(exact, rel=1e-9, abs=1e-15)
            assert got >= math.log(exact) - 1e-9


def _partition_exact(n: int, k: int, bad: int) -> Fraction:
    if k >= n - 1 or k > bad:
        return Fraction(0)
    falling = Fraction(math.perm(bad, k), math.perm(n, k))
    return Fraction(n * (n - k - 1), 2) * falling


@pytest.mark.parametrize("n", [12, 40, 100, 250, 600])
def test_derived_bounds_sum_within_budget_checked_with_scipy(n: int) -> None:
    for d in RATES:
        for c in RATES:
            try:
                p = derive_params(n, d, c, 1)
            except P.InvalidParams:
                continue
            k, t = p.neighbours, p.threshold
            cor, drop = math.ceil(c * n - 1e-9), math.ceil(d * n - 1e-9)
            privacy = (n - cor) * hypergeom.sf(2 * t - k - 1, n - 1, cor, k)
            failure = n * hypergeom.sf(k - t, n - 1, drop, k)
            partition = float(_partition_exact(n, k, cor + drop))
            assert privacy + partition <= SEC * (1 + 1e-9), (n, d, c, k, t)
            assert failure <= COR * (1 + 1e-9), (n, d, c, k, t)
            b = params_bounds(p, d, c)
            assert b.privacy == pytest.approx(privacy, rel=1e-7, abs=1e-300)
            assert b.failure == pytest.approx(min(1.0, failure), rel=1e-7, abs=1e-300)
            assert b.partition == pytest.approx(partition, rel=1e-7, abs=1e-300)


def _smallest_by_scan(n: int, d: float, c: float) -> tuple[int, int] | None:
    for k in [*range(2, n - 1, 2), n - 1]:
        for t in range(k // 2 + 1, k + 1):
            b = bounds(n, k, t, d, c)
            if b.security <= SEC and b.failure <= COR:
                return k, t
    return None


@pytest.mark.parametrize("n", [9, 30, 64, 101, 160])
def test_search_finds_the_smallest_degree_a_full_scan_finds(n: int) -> None:
    for d in (0.0, 0.1, 0.25):
        for c in (0.0, 0.1, 0.25):
            want = _smallest_by_scan(n, d, c)
            if want is None:
                with pytest.raises(P.InvalidParams):
                    derive_params(n, d, c, 1)
                continue
            p = derive_params(n, d, c, 1)
            assert (p.neighbours, p.threshold) == want, (n, d, c)


@pytest.mark.parametrize("n,rate", [(16, 0.1), (60, 0.18), (1000, 0.05), (1000, 0.33), (100000, 0.05)])
def test_dropout_cap_is_the_binomial_quantile(n: int, rate: float) -> None:
    from scipy.stats import binom

    d = math.ceil(P.dropout_cap(n, rate) * n - 1e-9)
    assert binom.sf(d, n, rate) <= 2.0**-21 < binom.sf(d - 1, n, rate)


def test_the_coordinator_sizes_for_the_cap_and_refuses_to_finish_beyond_it() -> None:
    from fedge.coordinator.rounds.secure import choose_params

    p = choose_params(1000, 0.05, 0.01, 10, 32, 2)
    cap = P.dropout_cap(1000, 0.05)
    assert p.min_clients == 1000 - math.ceil(cap * 1000 - 1e-9) == 913
    b = params_bounds(p, cap, 0.01)
    assert b.failure <= 2.0**-21 and b.security <= SEC
