"""Whole SecAgg+ rounds through the wire codec: exact sums under any dropout, or a named failure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ConfigError, ProtocolError, RoundFailed
from fedge.agent.core.secagg.graph import neighbour_table
from fedge.agent.core.secagg.loopback import run_round
from fedge.agent.core.secagg.params import SecAggParams
from fedge.agent.core.secagg.server import SecAggServer
from fedge.agent.core.secagg.stages import ORDER, Stage
from tests.secagg_fixtures import make_round, plain_sum

STAGES = ORDER[:-1]
_POOL = [IdentityKey.generate() for _ in range(200)]  # real keys, made once for speed


def predict(params: SecAggParams, seed: bytes, ids: list[str], drop: dict[Stage, set[str]]):
    """The protocol's rules, restated: (survivors, None) or (None, failing stage)."""
    n, t, m = params.num_clients, params.threshold, params.min_clients
    nb = [set(r.tolist()) for r in neighbour_table(seed, n, params.neighbours)]
    gone = {s: {ids.index(d) for d in drop.get(s, ())} for s in STAGES}

    def prune(alive: set[int]) -> set[int]:
        while True:
            bad = {i for i in alive if len(nb[i] & alive) < t}
            if not bad:
                return alive
            alive -= bad

    u1 = prune(set(range(n)) - gone[Stage.ADVERTISE_KEYS])
    if len(u1) < m:
        return None, Stage.ADVERTISE_KEYS
    u2 = prune(u1 - gone[Stage.SHARE_KEYS])
    if len(u2) < m:
        return None, Stage.SHARE_KEYS
    u3 = u2 - gone[Stage.MASKED_INPUT]
    if len(u3) < m or any(len(nb[j] & u3) < t for j in u2):
        return None, Stage.MASKED_INPUT
    u4 = u3 - gone[Stage.CONSISTENCY_CHECK]
    revealers = {i for i in u4 if len(nb[i] & u4) >= t}
    if len(u4) < m or any(len(nb[j] & revealers) < t for j in u2):
        return None, Stage.CONSISTENCY_CHECK
    u5 = revealers - gone[Stage.UNMASK]
    if any(len(nb[j] & u5) < t for j in u2):
        return None, Stage.UNMASK
    return sorted(ids[i] for i in u3), None


#: Cohort sizes of the fast property; the full range runs under the ``slow`` marker (CI runs both).
SMALL_N, FULL_N = 40, 200


@st.composite
def round_case(draw: st.DrawFn, max_n: int = FULL_N):
    n = draw(st.integers(3, max_n))
    ks = [n - 1] + list(range(2, min(n - 1, 24), 2))
    k = draw(st.sampled_from(ks))
    t = draw(st.integers(k // 2 + 1, k))
    bits = draw(st.sampled_from([16, 20, 24, 32]))
    params = SecAggParams(n, k, t, draw(st.integers(1, 24)), bits, draw(st.integers(1, max(1, n // 4))))
    rate = draw(st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.2, 0.4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    ids = [f"dev-{i:04d}" for i in range(n)]
    # the stage where devices drop is drawn per device: late stages see as many as early ones
    drop = {s: set() for s in STAGES}
    for d in ids:
        if rng.random() < rate:
            drop[STAGES[int(rng.integers(len(STAGES)))]].add(d)
    return params, drop, draw(st.binary(min_size=32, max_size=32)), draw(st.integers(0, 2**31))


_PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@given(round_case(SMALL_N))
@_PROPERTY
def test_rounds_are_exact_or_fail_with_the_stage_and_counts(case) -> None:
    _check_round(case)


@pytest.mark.slow
@given(round_case(FULL_N))
@_PROPERTY
def test_rounds_are_exact_or_fail_with_the_stage_and_counts_full_range(case) -> None:
    _check_round(case)


def _check_round(case) -> None:
    params, drop, gseed, seed = case
    n = params.num_clients
    idents = {f"dev-{i:04d}": _POOL[i] for i in range(n)}
    max_abs = (2 ** (params.bits - 1) - 1) // n
    r = make_round(params, seed=seed, max_abs=max_abs, graph_seed=gseed, identities=idents)
    ids = sorted(idents)
    survivors, failing = predict(params, gseed, ids, drop)
    event("completes" if failing is None else f"fails at {failing.value}")
    if failing is None:
        result, _ = run_round(r.server, r.clients, r.inputs, drop)
        assert list(result.survivors) == survivors
        assert np.array_equal(result.total.astype(np.uint64), plain_sum(r.inputs, survivors, params.bits))
    else:
        with pytest.raises(RoundFailed, match=f"failed at {failing.value}: .*[0-9]"):
            run_round(r.server, r.clients, r.inputs, drop)
        assert r.server.stage is Stage.FAILED


@pytest.mark.parametrize("bits", [16, 17, 31, 32])
def test_full_range_values_sum_exactly_in_every_width(bits: int) -> None:
    n = 12
    params = SecAggParams(n, 6, 4, 300, bits, 2)
    max_abs = (2 ** (bits - 1) - 1) // n
    r = make_round(params, max_abs=max_abs, identities={f"dev-{i:04d}": _POOL[i] for i in range(n)})
    for d in list(r.inputs)[:6]:  # extremes: the largest magnitudes either way
        r.inputs[d][:] = np.uint32(max_abs if d.endswith(("0", "2", "4")) else ((1 << bits) - max_abs))
    result, uploaded = run_round(r.server, r.clients, r.inputs, {Stage.MASKED_INPUT: {"dev-0011"}})
    assert result.total.dtype == (np.uint16 if bits <= 16 else np.uint32)
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(r.inputs, result.survivors, bits))
    # masked uploads are 16- or 32-bit words, not int64
    assert max(uploaded.values()) < 300 * (2 if bits <= 16 else 4) + 3000


def test_the_coordinator_refuses_a_round_that_could_wrap() -> None:
    params = SecAggParams(1024, 10, 6, 4, 32, 2)
    roster = {f"dev-{i:04d}": bytes(32) for i in range(1024)}
    with pytest.raises(ConfigError, match="wrap"):
        SecAggServer(params, 1, roster, max_abs_int=2**21, clock=lambda: 0.0)  # 1024 * 2^21 = 2^31
    SecAggServer(params, 1, roster, max_abs_int=2**21 - 1, clock=lambda: 0.0)


def test_the_deadline_closes_a_stage_with_whoever_answered() -> None:
    now = [0.0]
    n = 8
    params = SecAggParams(n, n - 1, 5, 5, 32, 3)
    idents = {f"dev-{i:04d}": _POOL[i] for i in range(n)}
    roster = {d: k.public_bytes() for d, k in idents.items()}
    server = SecAggServer(params, 3, roster, max_abs_int=10, clock=lambda: now[0], stage_timeout=10.0)
    r = make_round(params, round_id=3, identities=idents)
    cfg = server.start()
    for d in sorted(idents)[:6]:
        server.receive(r.clients[d].handle(cfg))
    assert server.tick() is None and server.expected() == {"dev-0006", "dev-0007"}
    now[0] = 10.0
    out = server.tick()
    assert server.stage is Stage.SHARE_KEYS and sorted(out) == sorted(idents)[:6]
    late = r.clients["dev-0007"].handle(cfg)
    with pytest.raises(ProtocolError):
        server.receive(late)


@pytest.mark.parametrize(
    "stage,count",
    [(Stage.SHARE_KEYS, 8), (Stage.MASKED_INPUT, 4), (Stage.CONSISTENCY_CHECK, 4), (Stage.UNMASK, 4)],
)
def test_too_many_dropouts_fail_naming_the_stage(stage: Stage, count: int) -> None:
    n = 10
    params = SecAggParams(n, n - 1, 6, 3, 32, 3)
    r = make_round(params, identities={f"dev-{i:04d}": _POOL[i] for i in range(n)})
    with pytest.raises(RoundFailed, match=f"failed at {stage.value}: .*[0-9]+ .*(threshold 6|minimum 3)"):
        run_round(r.server, r.clients, r.inputs, {stage: {f"dev-{i:04d}": 0 for i in range(count)}.keys()})
