"""Buffered aggregation's pure parts: staleness weights, admission into groups, refusal, the capped ledger."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError, ProtocolError
from fedge.agent.core.update import encode_update
from fedge.coordinator.rounds.buffered import ContributionCap, GroupLedger, StaleUpdate, UpdateBuffer, group_event
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from fedge.coordinator.rounds.staleness import Staleness, parse_staleness


def test_staleness_functions_have_their_papers_values():
    poly = parse_staleness("poly:0.5")
    assert [poly.weight(t) for t in (0, 1, 3, 8)] == pytest.approx([1, 2**-0.5, 0.5, 1 / 3])
    assert parse_staleness("constant").weight(50) == 1.0
    hinge = parse_staleness("hinge:10,4")  # FedBuff's hinge: 1 up to b, then 1 / (a (tau - b) + 1)
    assert [hinge.weight(t) for t in (0, 4, 5, 6)] == pytest.approx([1, 1, 1 / 11, 1 / 21])
    assert parse_staleness("poly:2").spec == "poly:2" and hinge.spec == "hinge:10,4"
    for t in range(0, 200, 7):  # every weight in (0, 1]: a weighted clipped update stays within C
        for s in (poly, hinge, parse_staleness("poly:3")):
            assert 0 < s.weight(t) <= 1


@pytest.mark.parametrize("spec", ["poly", "poly:x", "hinge:1", "exp:1", "constant:1", "poly:-1"])
def test_bad_staleness_specs_name_the_flag(spec):
    with pytest.raises(ConfigError, match="--staleness"):
        parse_staleness(spec)


def test_groups_fill_in_arrival_order_with_the_targets_weight():
    buf = UpdateBuffer(3, max_staleness=5, staleness=Staleness("poly", 0.5))
    assert buf.target_version == 0
    for d in ("a", "b", "c"):
        buf.admit(d, 0)
    assert buf.full
    g0 = buf.close()
    assert [a.device for a in g0.members] == ["a", "b", "c"] and g0.target_version == 0
    # group 0 is pending: the next group is applied to version 1, so a version-0 update is 1 stale
    a = buf.admit("d", 0)
    assert (a.target_version, a.staleness, a.weight) == (1, 1, pytest.approx(2**-0.5))
    buf.applied(True)
    assert buf.version == 1 and buf.target_version == 1
    with pytest.raises(ProtocolError):
        buf.admit("e", 2)  # no such version yet


def test_an_update_more_than_s_versions_stale_is_refused():
    buf = UpdateBuffer(2, max_staleness=2, staleness=Staleness("constant"))
    for _ in range(4):  # four versions
        buf.admit("x", buf.version)
        buf.admit("y", buf.version)
        buf.close()
        buf.applied(True)
    assert buf.target_version == 4
    assert buf.admit("ok", 2).staleness == 2  # exactly S: accepted
    with pytest.raises(StaleUpdate, match="3 versions old"):
        buf.admit("old", 1)
    assert buf.refused["stale"] == 1
    assert "old" not in buf.contributions  # a refused update is never counted as contributed


def test_a_failed_group_makes_no_version():
    buf = UpdateBuffer(2, max_staleness=3, staleness=Staleness())
    buf.admit("a", 0)
    buf.admit("b", 0)
    buf.close()
    assert buf.target_version == 1  # assumed to succeed while it runs
    buf.applied(False)
    assert buf.version == 0 and buf.target_version == 0


def test_contribution_cap():
    buf = UpdateBuffer(2, max_staleness=3, staleness=Staleness(), max_contributions=1)
    buf.admit("a", 0)
    assert not buf.may_start("a") and buf.may_start("b")
    with pytest.raises(ContributionCap):
        buf.admit("a", 0)


def test_the_staleness_weight_scales_the_delta_and_not_the_weight_coordinate():
    cfg = TrainingConfig(model_name="logreg", dp_mode="off", secagg=False, goal=4, min_clients=2)
    plan = make_plan(cfg, "v0", 4, 4)
    delta = np.linspace(-0.3, 0.3, 11)
    full = encode_update(delta, 50, plan, np.random.default_rng(1))
    half = encode_update(delta, 50, plan, np.random.default_rng(1), staleness_weight=0.5)
    from fedge.agent.core.secagg.quantize import dequantize_sum

    f = dequantize_sum(full.vector, plan.quantization.scale, plan.quantization.bits)
    h = dequantize_sum(half.vector, plan.quantization.scale, plan.quantization.bits)
    assert h[-1] == f[-1]  # the weight coordinate: unchanged
    np.testing.assert_allclose(
        h[:-1], 0.5 * f[:-1], atol=2 / plan.quantization.scale
    )  # stochastic rounding: 1 unit each
    with pytest.raises(ProtocolError):
        encode_update(delta, 50, plan, np.random.default_rng(1), staleness_weight=1.5)


def _dp_plan(mode: str):
    cfg = TrainingConfig(
        model_name="logreg",
        dp_mode=mode,
        secagg=True,
        noise_multiplier=0.8,
        clip_norm=1.0,
        delta=1e-5,
        goal=10,
        min_clients=7,
        expected_reports=10,
    )
    return make_plan(cfg, "v0", 10, 10)


@pytest.mark.parametrize("mode", ["distributed", "local"])
def test_each_group_is_an_unamplified_gaussian_composed_up_to_the_cap(mode):
    plan = _dp_plan(mode)
    event = group_event(plan, 650)
    assert event.sampling == "none" and event.sampling_rate == 1.0  # no amplification claimed
    assert 0 < event.noise_multiplier <= 0.8  # the discrete Gaussian's rounding only lowers z
    ledger = GroupLedger(max_contributions=3)
    eps = []
    for _ in range(5):
        ledger.record(event)
        eps.append(ledger.epsilon(1e-5))
    for v, e in enumerate(eps, start=1):  # the stated event, straight from dp-accounting
        m = min(v, 3)
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(event.noise_multiplier), m)
        assert e == pytest.approx(acc.get_epsilon(1e-5) + m * event.rdp_offset, rel=1e-9)
    assert eps[0] < eps[1] < eps[2] == eps[3] == eps[4]  # a device is in at most 3 groups
    uncapped = GroupLedger()
    for _ in range(5):
        uncapped.record(event)
    assert uncapped.epsilon(1e-5) > eps[-1]  # no cap: every group counts
