"""Pacing: at most ``batch`` devices owe the coordinator a reply; the service admits the rest as
slots free up, so a broker's per-client queue cannot overflow (Mosquitto drops silently past it)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.transport.base import MQTT_311
from fedge.coordinator.service.pacing import Pacer, ResendSchedule
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.service_fixtures import AgentThreads, make_fleet, service_config


def ob(d: str, m: str = "task") -> Outbound:
    return Outbound(d, m)


def test_pacer_admits_in_batches_and_frees_slots_on_replies() -> None:
    p = Pacer(2)
    p.push([ob("a"), ob("b"), ob("c"), ob("d")])
    assert [o.device_id for o in p.admit()] == ["a", "b"]
    assert p.admit() == [] and p.waiting == 2 and p.owing == 2
    p.answered("a")
    assert [o.device_id for o in p.admit()] == ["c"]
    p.answered("zzz")  # a reply from a device we do not wait on frees nothing
    assert p.admit() == []
    p.push([ob("b", "next stage")])  # a device already owing us is never held back behind others
    p.new_stage()
    assert [(o.device_id, o.message) for o in p.admit()] == [("d", "task"), ("b", "next stage")]
    with pytest.raises(ValueError):
        Pacer(0)


def test_pacer_repeats_the_stage_requests_of_devices_that_owe_a_reply() -> None:
    p = Pacer(10)
    p.push([ob("a"), ob("b"), ob("c")])
    p.admit()
    p.answered("b")
    assert [(o.device_id, o.message) for o in p.resend()] == [("a", "task"), ("c", "task")]
    p.push([ob("c", "peers")])  # a second message to c in the same stage is repeated with the first
    p.admit()
    assert [(o.device_id, o.message) for o in p.resend()] == [("a", "task"), ("c", "task"), ("c", "peers")]
    p.new_stage()  # a new stage: nothing of the last one is repeated
    assert p.resend() == []
    p.push([ob("d")])
    assert p.resend() == []  # only what was admitted (sent) is repeated
    p.admit()
    p.clear()
    assert p.resend() == []


@pytest.mark.timeout(120)
def test_service_with_a_batch_of_one_serialises_uploads(embedded_broker, tmp_path) -> None:
    fleet = make_fleet(tmp_path, 4)
    cfg = service_config(fleet, embedded_broker.url, rounds=1, mqtt_protocol=MQTT_311, pacing_batch=1)
    with AgentThreads(fleet, embedded_broker.url, MQTT_311, delay_s=0.3):
        [report] = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()
    assert report.status == "completed" and report.participants == 4
    store = Store(str(fleet.db))
    try:
        t = sorted(u["received_at"] for u in store.uploads(1, "round.plain_update"))
    finally:
        store.close()
    # one task at a time: each upload comes at least one "training time" (0.3 s) after the last
    assert len(t) == 4 and min(np.diff(t)) >= 0.25, np.diff(t)


def test_resends_after_a_reconnect_come_at_once_then_at_doubling_gaps_up_to_the_cap() -> None:
    s = ResendSchedule(5.0, 60.0)
    s.watch(1)
    assert not any(s.due(1, True, t) for t in range(0, 300, 1))  # no reconnect, no repeat
    times = [t / 2 for t in range(600, 1200) if s.due(2, True, t / 2)]  # reconnected at t = 300 s
    assert times == [300.0, 305.0, 315.0, 335.0, 375.0, 435.0, 495.0, 555.0]  # gaps 5, 10, 20, 40, 60, 60...
    assert not s.due(2, False, 620.0) and s.due(2, True, 620.0)  # nothing while the link is down
    assert s.due(3, True, 621.0) and not s.due(3, True, 625.0) and s.due(3, True, 626.0)  # a new reconnect starts over
    s.watch(3)
    assert not s.due(3, True, 700.0)  # a new round's watch: the link as it is is no reconnect
    with pytest.raises(ValueError):
        ResendSchedule(10.0, 5.0)
