"""SecAgg+ cipher suites: ChaCha20 and AES-256-CTR masks, each exact with dropouts at every stage;
the suite is bound into the config digest, picked from what devices report, refused if unsupported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.crypto import keystream as ks
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.secagg import derive
from fedge.agent.core.secagg import params as P
from fedge.agent.core.secagg.client import SecAggClient
from fedge.agent.core.secagg.loopback import run_round
from fedge.agent.core.secagg.params import SUITE, SUITE_AES, SecAggParams, choose_suite
from fedge.agent.core.secagg.server import SecAggServer
from fedge.agent.core.secagg.stages import ORDER, Stage
from tests.secagg_fixtures import plain_sum

needs_aes = pytest.mark.skipif(not ks.aes_available(), reason="libsodium has no AES instructions to use here")
SUITES = [SUITE, pytest.param(SUITE_AES, marks=needs_aes)]
N = 24
_KEYS = {f"dev-{i:04d}": IdentityKey.generate() for i in range(N)}


def _round(params: SecAggParams, suite: str, seed: int = 0):
    roster = {d: k.public_bytes() for d, k in _KEYS.items()}
    server = SecAggServer(
        params,
        1,
        roster,
        max_abs_int=1000,
        clock=lambda: 0.0,
        graph_seed=bytes(range(32)),
        suite=suite,
    )
    clients = {d: SecAggClient(d, k, roster.get, round_id=1) for d, k in _KEYS.items()}
    rng = np.random.default_rng(seed)
    mask = (1 << params.bits) - 1
    inputs = {d: (rng.integers(-1000, 1001, params.dim, dtype=np.int64) & mask).astype(np.uint32) for d in _KEYS}
    return server, clients, inputs


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("stage", [None, *ORDER[:-1], "all"])
def test_rounds_with_each_suite_are_exact_with_dropouts(suite: str, stage) -> None:
    params = SecAggParams(N, 12, 7, 3000, 32, 3)
    server, clients, inputs = _round(params, suite, seed=hash(str(stage)) % 1000)
    ids = sorted(_KEYS)
    if stage is None:
        drop: dict[Stage, set[str]] = {}
    elif stage == "all":
        drop = {s: {ids[3 * i + 1]} for i, s in enumerate(ORDER[:-1])}
    else:
        drop = {stage: {ids[2], ids[9]}}
    result, _ = run_round(server, clients, inputs, drop)
    early = set().union(*(drop.get(s, set()) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT)))
    survivors = [d for d in ids if d not in early]
    assert list(result.survivors) == survivors
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, survivors, params.bits))
    assert server.config.suite == suite


@pytest.mark.parametrize("suite", SUITES)
def test_the_server_sees_only_uniform_masked_vectors_with_each_suite(suite: str) -> None:
    server, clients, inputs = _round(SecAggParams(N, 12, 7, 4000, 32, 3), suite, seed=5)
    seen = {}
    orig = server.receive

    def spy(msg):
        if hasattr(msg, "vector"):
            seen[msg.device_id] = np.array(msg.vector)
        orig(msg)

    server.receive = spy  # type: ignore[method-assign]
    run_round(server, clients, inputs, {})
    assert len(seen) == N
    for d, v in seen.items():
        assert not np.array_equal(v, inputs[d])
        # uniform words: each byte lane's mean near 127.5 (sd ~ 1.2 for 4000 samples)
        for lane in range(4):
            assert abs(float(((v >> (8 * lane)) & 0xFF).mean()) - 127.5) < 8


@needs_aes
def test_the_suite_is_bound_into_the_config_digest() -> None:
    server, _, _ = _round(SecAggParams(N, 12, 7, 10), SUITE)
    cfg = server.start()
    assert derive.config_digest(cfg) != derive.config_digest(dataclasses.replace(cfg, suite=SUITE_AES))


@needs_aes
def test_a_device_without_aes_refuses_an_aes_round(monkeypatch: pytest.MonkeyPatch) -> None:
    server, clients, _ = _round(SecAggParams(N, 12, 7, 10), SUITE_AES)
    cfg = server.start()
    monkeypatch.setattr(P, "aes_available", lambda: False)
    assert SUITE in P.supported_suites() and SUITE_AES not in P.supported_suites()
    d = sorted(clients)[0]
    with pytest.raises(ProtocolError, match="suite"):
        clients[d].handle(cfg)
    assert clients[d].stage is None
    with pytest.raises(ProtocolError, match="suite"):  # nor can a coordinator without AES run one
        _round(SecAggParams(N, 12, 7, 10), SUITE_AES)


def test_the_coordinator_picks_aes_only_when_every_device_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "aes_available", lambda: True)
    assert choose_suite([[SUITE, SUITE_AES]] * 3) == SUITE_AES
    assert choose_suite([[SUITE, SUITE_AES], [SUITE]]) == SUITE
    assert choose_suite([]) == SUITE
    monkeypatch.setattr(P, "aes_available", lambda: False)
    assert choose_suite([[SUITE, SUITE_AES]] * 3) == SUITE  # the coordinator masks too


def test_devices_report_their_suites_at_check_in() -> None:
    from fedge.agent.core import wire
    from fedge.agent.core.messages.rounds import CheckIn

    msg = CheckIn("d1", 3, "pi4", "v1", True, 10, 0.5, secagg_suites=P.supported_suites())
    back = wire.decode(wire.encode(msg), expect=CheckIn)
    assert back.secagg_suites == P.supported_suites() and SUITE in back.secagg_suites
    assert CheckIn("d1", 3, "pi4", "v1", True, 10, 0.5).secagg_suites == ()  # reports nothing: ChaCha20


@needs_aes
def test_the_round_builder_runs_aes_only_when_every_member_reported_it() -> None:
    from fedge.coordinator.rounds.builder import Draw, build_round
    from fedge.coordinator.rounds.plan import TrainingConfig
    from tests.fakes import FakeClock

    cohort = sorted(_KEYS)[:10]
    roster = {d: _KEYS[d].public_bytes() for d in cohort}
    cfg = TrainingConfig(secagg=True, goal=10, min_clients=5)

    def suite_of(suites):
        built = build_round(
            1,
            cfg,
            "v0",
            np.zeros(8, np.float32),
            cohort,
            Draw.fixed(100, 10),
            FakeClock(),
            roster=roster,
            suites=suites,
        )
        return built.aggregation.server.config.suite  # type: ignore[attr-defined]

    both = (SUITE, SUITE_AES)
    assert suite_of(dict.fromkeys(cohort, both)) == SUITE_AES
    assert suite_of({**dict.fromkeys(cohort, both), cohort[4]: (SUITE,)}) == SUITE  # a Pi 4 in the cohort
    assert suite_of({d: both for d in cohort[1:]}) == SUITE  # one device reported nothing
    assert suite_of(None) == SUITE
