"""The daemon's message handling in this process over the in-memory broker (a real transport
twin, no MQTT): every message is acknowledged, bad or unexpected ones are ignored and the daemon
goes on, a SecAgg+ task without an enrollment authority is declined, replays are not answered twice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.config import resolve
from fedge.agent.core import topics, wire
from fedge.agent.core.messages.rounds import CheckIn, Decline, RoundAnnounce, RoundEnd, Task
from fedge.agent.core.transport import InMemoryBroker, InMemoryTransport, TransportConfig
from fedge.agent.daemon import AgentDaemon
from fedge.coordinator.rounds.plan import TrainingConfig, make_plan
from tests.agent_fixtures import FakeSysfs, digits_npz, write_profile

DEV = "dev-mem"


@pytest.fixture
def setup(tmp_path):
    broker = InMemoryBroker()
    fs = FakeSysfs(tmp_path / "sys")
    profile = write_profile(tmp_path / "p.toml", "mqtt://127.0.0.1:1883", tmp_path / "agent.db", fs)
    cfg = resolve(profile, device_id=DEV, data_path=str(digits_npz(tmp_path / "d.npz", n=60)))

    def factory(tc: TransportConfig) -> InMemoryTransport:
        return InMemoryTransport(dataclasses.replace(tc, broker_url="memory://test"), broker)

    d = AgentDaemon(cfg, transport_factory=factory, clock=lambda: 1000.0)
    d.startup()
    coord = InMemoryTransport(TransportConfig(broker_url="memory://test", client_id="coord"), broker)
    coord.connect()
    coord.subscribe(topics.ALL_DEVICES_OUT)
    yield d, coord, broker
    coord.close()
    d.shutdown()


def pump(d: AgentDaemon) -> None:
    """Handle every queued message, as run() would, without blocking."""
    while (inbound := d.transport.receive(0)) is not None:
        d._dispatch(inbound)


def replies(coord: InMemoryTransport) -> list:
    out = []
    while (inbound := coord.receive(0)) is not None:
        out.append(wire.decode(inbound.payload))
        coord.ack(inbound)
    return out


def test_garbage_and_unexpected_messages_are_acked_and_ignored(setup):
    d, coord, broker = setup
    coord.publish(topics.device_in(DEV), b"not a fedge message")
    coord.publish(topics.device_in(DEV), wire.encode(RoundEnd(9, "completed", "", "v1")))  # wrong topic for it
    coord.publish(topics.device_in(DEV), wire.encode(Decline(3, DEV, "x")))  # a stage for no round
    pump(d)
    assert broker.unacked(DEV) == 0
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(1, "mlp", "v0", 2000.0)), retain=True)
    pump(d)
    (checkin,) = replies(coord)
    assert isinstance(checkin, CheckIn) and checkin.eligible and checkin.num_examples == 60
    # the retained announcement seen again (a reconnect) is not answered twice
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(1, "mlp", "v0", 2000.0)), retain=True)
    pump(d)
    assert replies(coord) == []


def test_announcement_past_its_deadline_or_for_another_model_gets_no_yes(setup):
    d, coord, _ = setup
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(1, "mlp", "v0", 999.0)))  # clock is 1000
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(2, "cnn", "v0", 2000.0)))
    pump(d)
    (checkin,) = replies(coord)
    assert checkin.round_id == 2 and not checkin.eligible
    assert d.rounds.get(1).status == "ineligible"


def test_secagg_task_without_an_enrollment_authority_is_declined(setup):
    d, coord, _ = setup
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(1, "mlp", "v0", 2000.0)))
    plan = make_plan(
        TrainingConfig(
            secagg=True, dp_mode="local", noise_multiplier=1.0, train_deadline_s=60.0, goal=2, min_clients=2
        ),
        "v0",
        2,
        10,
    )
    weights = np.zeros(10, np.float32)  # declined before training: the size does not matter
    coord.publish(topics.device_in(DEV), wire.encode(Task(1, DEV, plan, weights)))
    pump(d)
    msgs = replies(coord)
    assert isinstance(msgs[0], CheckIn)
    assert isinstance(msgs[1], Decline) and "secure aggregation unavailable" in msgs[1].reason
    assert d.rounds.get(1).status == "declined"
    # the task redelivered (QoS 1) gets the stored answer again, and nothing changes
    coord.publish(topics.device_in(DEV), wire.encode(Task(1, DEV, plan, weights)))
    pump(d)
    assert replies(coord) == [msgs[1]]
    assert d.rounds.get(1).status == "declined"


def test_a_failing_secagg_stage_drops_the_round_and_the_daemon_goes_on(setup):
    from fedge.agent.core.errors import SecurityError
    from fedge.agent.core.messages.secagg import Survivors
    from fedge.agent.participant import Participant

    d, coord, broker = setup

    class FailingClient:  # stands in for SecAggClient: a peer's signature did not verify
        def handle(self, msg):
            raise SecurityError("bad signature")

    p = Participant(DEV, lambda task: None, np.random.default_rng(0))
    p.round_id, p.client = 4, FailingClient()
    d._participant = p
    d.rounds.set(4, "task", "uploaded")
    msg = Survivors(4, np.packbits(np.ones(3, bool)))
    coord.publish(topics.device_in(DEV), wire.encode(msg))
    pump(d)
    assert broker.unacked(DEV) == 0
    assert d._participant is None and d.rounds.get(4).status == "dropped"
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(5, "mlp", "v0", 2000.0)))
    pump(d)
    assert [m.round_id for m in replies(coord)] == [5]  # still answering


def test_a_repeat_after_a_restart_gets_the_stored_answer_and_a_different_request_none(setup, tmp_path):
    d, coord, broker = setup
    coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(1, "mlp", "v0", 2000.0)))
    plan = make_plan(
        TrainingConfig(
            secagg=True, dp_mode="local", noise_multiplier=1.0, train_deadline_s=60.0, goal=2, min_clients=2
        ),
        "v0",
        2,
        10,
    )
    task = Task(1, DEV, plan, np.zeros(10, np.float32))
    coord.publish(topics.device_in(DEV), wire.encode(task))
    pump(d)
    answer = replies(coord)[1]
    d.shutdown()
    again = AgentDaemon(d.config, transport_factory=d._transport_factory, clock=lambda: 1000.0)
    again.startup()
    try:
        coord.publish(topics.device_in(DEV), wire.encode(task))
        coord.publish(topics.device_in(DEV), wire.encode(dataclasses.replace(task, weights=np.ones(10, np.float32))))
        pump(again)
        assert replies(coord) == [answer]  # the same bytes once; the forged twin is not answered
        assert again.rounds.get(1).status == "declined"
    finally:
        again.shutdown()


def test_a_fresh_announcement_of_a_round_that_ended_here_is_ignored_with_a_warning_once(setup, caplog):
    """A coordinator started on a new store reuses round ids: the device sits the round out, and says why."""
    import logging

    from fedge.agent.round_state import RoundStatus

    d, coord, _ = setup
    d.rounds.set(3, "end", RoundStatus.ENDED)  # this device took part in a round 3 that ended
    caplog.set_level(logging.WARNING, logger="fedge.agent.daemon")
    for _ in range(2):
        coord.publish(topics.ROUNDS, wire.encode(RoundAnnounce(3, "mlp", "v0", 2000.0)))
        pump(d)
    assert replies(coord) == []  # no check-in: the round id is used up here
    warned = [r for r in caplog.records if "announced again" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING and warned[0].round == 3
