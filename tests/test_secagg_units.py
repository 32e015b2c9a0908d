"""SecAgg building blocks: stages, parameter validation and derivation, the graph, quantization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.secagg.graph import neighbour_table, neighbours_of
from fedge.agent.core.secagg.params import SecAggParams, bounds, derive_params, params_bounds
from fedge.agent.core.secagg.quantize import (
    check_no_wrap,
    choose_scale,
    dequantize_sum,
    max_abs_int,
    quantize,
    to_signed,
)
from fedge.agent.core.secagg.stages import ORDER, Stage, check_transition, next_stage


def test_stages_move_forward_one_at_a_time_or_fail() -> None:
    for a, b in zip(ORDER, ORDER[1:]):
        assert check_transition(a, b) is b and next_stage(a) is b
        assert check_transition(a, Stage.FAILED) is Stage.FAILED
        with pytest.raises(ProtocolError):
            check_transition(b, a)
    with pytest.raises(ProtocolError):
        check_transition(Stage.ADVERTISE_KEYS, Stage.MASKED_INPUT)
    for end in (Stage.DONE, Stage.FAILED):
        with pytest.raises(ProtocolError):
            check_transition(end, Stage.FAILED)


@pytest.mark.parametrize(
    "args,field",
    [
        ((1, 1, 1, 1), "num_clients"),
        ((10, 10, 6, 1), "neighbours"),
        ((10, 3, 2, 1), "even"),
        ((10, 4, 2, 1), "threshold"),  # t = k/2 lets a lying server get both secrets
        ((10, 4, 5, 1), "threshold"),
        ((10, 4, 3, 0), "dim"),
        ((10, 4, 3, 1, 15), "bits"),
        ((10, 4, 3, 1, 33), "bits"),
        ((10, 4, 3, 1, 32, 11), "min_clients"),
        ((10.0, 4, 3, 1), "int"),
    ],
)
def test_params_are_validated_up_front(args, field) -> None:
    with pytest.raises(ConfigError, match=field):
        SecAggParams(*args)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 11, 12])
def test_even_and_odd_counts_are_fine(n: int) -> None:
    for k in [n - 1] + list(range(2, n - 1, 2)):
        for t in range(k // 2 + 1, k + 1):
            SecAggParams(n, k, t, 3)


def test_derive_params_meets_its_bounds_and_grows_with_risk() -> None:
    p = derive_params(1000, 0.05, 0.01, 100)
    b = params_bounds(p, 0.05, 0.01)
    assert b.failure <= 2**-20 and b.privacy + b.partition <= 2**-40  # one budget for both bad events
    assert 2 * p.threshold > p.neighbours and p.neighbours % 2 == 0
    smaller = bounds(1000, p.neighbours - 2, p.threshold - 1, 0.05, 0.01)
    assert smaller.failure > 2**-20 or smaller.security > 2**-40
    riskier = derive_params(1000, 0.1, 0.05, 100)
    assert riskier.neighbours > p.neighbours
    complete = derive_params(60, 0.01, 0.0, 10)
    assert complete.complete or complete.neighbours < 59
    with pytest.raises(ConfigError):
        derive_params(10, 0.3, 0.3, 10)  # 3 corrupt, 3 dropped: no t above (k + 3)/2 and within k - 3
    with pytest.raises(ConfigError):
        derive_params(100, 1.2, 0.0, 10)


@given(st.integers(3, 300), st.data())
@settings(max_examples=60, deadline=None)
def test_graph_is_symmetric_k_regular_and_committed(n: int, data) -> None:
    k = data.draw(st.sampled_from([n - 1] + list(range(2, n - 1, 2))))
    seed = data.draw(st.binary(min_size=32, max_size=32))
    table = neighbour_table(seed, n, k)
    assert table.shape == (n, k)
    adj = np.zeros((n, n), bool)
    adj[np.repeat(np.arange(n), k), table.ravel()] = True
    assert (adj == adj.T).all() and not adj.diagonal().any() and (adj.sum(1) == k).all()
    i = data.draw(st.integers(0, n - 1))
    assert np.array_equal(neighbours_of(seed, n, k, i), table[i])
    assert np.array_equal(neighbour_table(seed, n, k), table)


def test_graph_depends_on_the_seed() -> None:
    a = neighbour_table(bytes(32), 200, 10)
    b = neighbour_table(b"\x01" + bytes(31), 200, 10)
    assert not np.array_equal(a, b)


def test_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    x = np.full(200_000, 0.375, np.float32)  # exact in binary: 3.75 after scaling
    q = to_signed(quantize(x, 10.0, 16, rng), 16)
    assert set(np.unique(q).tolist()) == {3, 4}
    assert abs(q.mean() - 3.75) < 0.01  # sd of the mean ~0.001
    neg = to_signed(quantize(-x, 10.0, 16, rng), 16)
    assert abs(neg.mean() + 3.75) < 0.01


@given(st.integers(16, 32), st.integers(1, 50), st.integers(0, 2**32))
@example(31, 9, 9)  # float32 reference sum was off by more than the bound (CI, clean clone)
@settings(max_examples=50, deadline=None)
def test_sums_dequantize_exactly_while_they_cannot_wrap(bits: int, n: int, seed: int) -> None:
    r = 1.0
    scale = choose_scale(r, bits, n)
    check_no_wrap(n, max_abs_int(r, scale), bits)
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-r, r, 64).astype(np.float32) for _ in range(n)]
    xs[0][:] = r  # extremes
    if n > 1:
        xs[1][:] = -r
    qs = [quantize(x, scale, bits, rng) for x in xs]
    assert all(q.dtype == np.uint32 and int(q.max()) < 2**bits for q in qs)
    total = np.zeros(64, np.uint64)
    for q in qs:
        total += q
    exact = sum(to_signed(q, bits) for q in qs)
    assert np.array_equal(to_signed(total, bits), exact)
    got = dequantize_sum(total, scale, bits)
    # the reference sums in float64: a float32 sum of 9 values near 1 is off by ~1e-7, more than the
    # quantization's n / scale at 31 bits (7.5e-8), and failed here at bits=31, n=9, seed=9
    assert np.allclose(got, np.sum(xs, axis=0, dtype=np.float64), atol=n / scale + 1e-9)


def test_wrap_check_and_scale_refusals() -> None:
    check_no_wrap(1024, 2**21 - 1, 32)
    with pytest.raises(ConfigError, match="wrap"):
        check_no_wrap(1024, 2**21, 32)
    with pytest.raises(ConfigError):
        check_no_wrap(10, 4000, 16)
    with pytest.raises(ConfigError):
        choose_scale(1.0, 16, 100_000)
    with pytest.raises(ConfigError):
        quantize(np.array([np.nan], np.float32), 1.0, 16, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        quantize(np.array([1.0], np.float32), 2.0**15, 16, np.random.default_rng(0))


def test_the_kept_ring_is_read_only_and_equals_a_fresh_sort() -> None:
    """The ring order is kept per (seed, n); callers can not change it, and it is the sort it stands for."""
    from fedge.agent.core.crypto import MASK_KEY_BYTES, derive_key, expand_into
    from fedge.agent.core.secagg.graph import ring_order

    seed = bytes(range(32))
    perm, rank = ring_order(seed, 500)
    assert ring_order(seed, 500)[0] is perm  # kept, not re-sorted
    with pytest.raises(ValueError):
        perm[0] = 1
    keys = expand_into(derive_key(seed, "secagg/graph", 500, length=MASK_KEY_BYTES), np.empty(500, np.uint64))
    assert np.array_equal(perm, np.argsort(keys, kind="stable"))
    assert np.array_equal(rank[perm], np.arange(500))
    assert not np.array_equal(ring_order(bytes(32), 500)[0], perm)  # another seed, another ring
