"""At-least-once delivery is harmless: real ``fedge-agent run`` daemons in a SecAgg+ round with
distributed DP against the real coordinator service over a real Mosquitto, while the network
misbehaves. A broker that delivers every message to the devices a second time, a TCP reset of one
device while it trains, and a broker restart mid-round each leave the round completed with its
full cohort, and no device trains twice."""

from __future__ import annotations

import threading

import pytest

from fedge.agent.core import topics
from tests.agent_fixtures import wait_for
from tests.daemon_fleet import DaemonFleet, proxies_for, secagg_training
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import wait_for_row

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]
AGENTS = 3


def check_full_cohort(fleet: DaemonFleet, reports: list) -> None:
    assert [(r.status, r.participants) for r in reports] == [("completed", AGENTS)] * len(reports), reports
    for i in range(AGENTS):
        for r in reports:
            assert fleet.trained(i, r.round_id) == 1, fleet.log(i)[-3000:]


@pytest.mark.timeout(240)
def test_every_message_delivered_twice_still_completes_with_the_full_cohort(tmp_path, mosquitto):  # noqa: F811
    # each copy comes 50 ms after the original: while the device still trains on the task
    proxies = proxies_for(mosquitto.port, AGENTS, duplicate_after_s=0.05)
    try:
        fleet = DaemonFleet(tmp_path / "w", AGENTS, mosquitto.url, secagg_training(AGENTS), lambda i: proxies[i].url)
        with fleet:
            reports = fleet.serve(rounds=2)
        check_full_cohort(fleet, reports)
        for i in range(AGENTS):
            # the copies reached the daemons and were answered from the store
            for r in (1, 2):
                assert f"round.task for round {r} again" in fleet.log(i)
                assert f"secagg.config for round {r} again" in fleet.log(i)
    finally:
        for p in proxies:
            p.close()


@pytest.mark.timeout(240)
def test_a_tcp_reset_while_one_device_trains_still_completes_with_the_full_cohort(tmp_path, mosquitto):  # noqa: F811
    proxies = proxies_for(mosquitto.port, AGENTS)
    # long enough local training that the reset lands in it
    fleet = DaemonFleet(
        tmp_path / "w", AGENTS, mosquitto.url, secagg_training(AGENTS, epochs=60), lambda i: proxies[i].url
    )
    victim = fleet.agents[0]
    during_training: list[bool] = []

    def reset_mid_training() -> None:
        mid = proxies[0].wait_first_publish(topics.device_in(victim.device_id), 120)
        wait_for(
            lambda: fleet.agent_rows(0, "select status from round_state where round_id = 1") == [("training",)],
            60,
            "the victim to start training",
            step=0.005,
        )
        during_training.append(not proxies[0].acked(mid))  # the task is not handled yet: it is training
        proxies[0].reset()

    try:
        injector = threading.Thread(target=reset_mid_training, daemon=True)
        with fleet:
            injector.start()
            reports = fleet.serve()
        injector.join(5)
        assert during_training == [True] and proxies[0].resets == 1 and proxies[0].connections >= 2
        check_full_cohort(fleet, reports)
        assert "round.task for round 1 again" in fleet.log(0)  # the broker redelivered the unacked task
    finally:
        for p in proxies:
            p.close()


@pytest.mark.timeout(240)
def test_a_broker_restart_mid_round_still_completes_with_the_full_cohort(tmp_path, mosquitto):  # noqa: F811
    fleet = DaemonFleet(tmp_path / "w", AGENTS, mosquitto.url, secagg_training(AGENTS, epochs=60))
    restarted = threading.Event()

    def restart_broker() -> None:
        wait_for_row(fleet.db, "select * from rounds where round_id = 1 and stage = 'training'", timeout=120)
        wait_for(
            lambda: all(
                fleet.agent_rows(i, "select status from round_state where round_id = 1") == [("training",)]
                for i in range(AGENTS)
            ),
            60,
            "every device to start training",
            step=0.005,
        )
        mosquitto.restart()  # sessions and in-flight messages survive, connections do not
        restarted.set()

    injector = threading.Thread(target=restart_broker, daemon=True)
    with fleet:
        injector.start()
        reports = fleet.serve()
    injector.join(5)
    assert restarted.is_set()
    check_full_cohort(fleet, reports)
