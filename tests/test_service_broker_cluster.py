"""Devices on more than one broker: real ``fedge-agent run`` daemons whose profiles list two edge
Mosquittos, bridged to a hub Mosquitto with the shipped deploy/mosquitto/bridge/ configs, and the
real coordinator service on the hub. One edge is SIGKILLed mid-round while its devices train: its
devices fail over to the other edge, that round and the next complete with every device, each
device trains once per round, and the coordinator counted each upload once (copies refused as
duplicates; a SecAgg+ sum unmasks only when every masked input is in it exactly once)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest

from fedge.agent.core import topics, wire
from fedge.agent.core.transport.failover import broker_order
from fedge.coordinator.service.broker import free_port
from fedge.coordinator.service.service import CoordinatorService
from fedge.coordinator.store import Store
from tests.agent_fixtures import ROOT, agent_cmd, wait_for
from tests.daemon_fleet import DaemonFleet, secagg_training
from tests.mqtt_fixtures import needs_mosquitto
from tests.service_fixtures import wait_for_row

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]
AGENTS = 4
#: the ids prepare_agents gives (coordinator/service/demo.py)
DEVICES = [f"demo-{i:02d}" for i in range(AGENTS)]


def edge_ports() -> tuple[int, int]:
    """Two free loopback ports whose URLs split DEVICES two and two by each device's first choice
    (the ranking hashes the URL, port included; fixed ports could collide with other tests)."""
    for _ in range(200):
        ports = (free_port(), free_port())
        urls = [f"mqtt://127.0.0.1:{p}" for p in ports]
        first = Counter(broker_order(urls, d)[0] for d in DEVICES)
        if ports[0] != ports[1] and sorted(first.values()) == [2, 2]:
            return ports
    raise AssertionError("no pair of free ports splits the devices evenly")


class EdgeWatch:
    """A client on one edge that sees what the hub's bridge delivers to its devices' inboxes."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.devices, self.configs = set(devices), set()
        self.all_configs = threading.Event()
        subscribed = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edge-watch")
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe(f"{topics.PREFIX}/device/+/in", 1)
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert subscribed.wait(10), "the edge watch was not subscribed"

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        device = topics.device_of(msg.topic)
        if device in self.devices and type(wire.decode(msg.payload)).__name__ == "SecAggConfig":
            self.configs.add(device)  # the last of the round's opening messages (task, peers, config)
            if self.configs == self.devices:
                self.all_configs.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def json_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.timeout(180)
def test_an_edge_broker_crashed_mid_round_its_devices_fail_over_and_nothing_is_lost(
    tmp_path, mosquitto_cluster
) -> None:
    ports = edge_ports()
    cluster = mosquitto_cluster(ports)
    edges = [e.url for e in cluster.edges]
    home = {d: broker_order(edges, d)[0] for d in DEVICES}
    victims = sorted(d for d in DEVICES if home[d] == edges[0])
    assert len(victims) == 2

    # training long enough (seconds) that the crash lands in it, however busy the machine
    fleet = DaemonFleet(tmp_path / "w", AGENTS, cluster.hub.url, secagg_training(AGENTS, epochs=1000))
    assert fleet.devices == DEVICES
    listed = "broker_urls = [" + ", ".join(f'"{u}"' for u in edges) + "]"
    for a in fleet.agents:
        text, n = re.subn(r'^broker_url = ".*"$', listed, a.profile.read_text(), flags=re.M)
        assert n == 1
        a.profile.write_text(text)
    logs = {d: tmp_path / f"{d}.log" for d in DEVICES}
    for a in fleet.agents:  # JSON log lines: millisecond timestamps for the failover time
        with open(logs[a.device_id], "ab") as out:
            cmd = agent_cmd("--log-level", "DEBUG", "--log-format", "json", "run", "--profile", str(a.profile))
            fleet.procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT, start_new_session=True)  # noqa: S603
            )

    watch = EdgeWatch(cluster.edges[0].port, victims)
    crashed: list[float] = []

    def crash_edge() -> None:
        wait_for_row(fleet.db, "select * from rounds where round_id = 1 and stage = 'training'", timeout=120)
        # the first edge has handed its devices the round's opening messages, and every device trains
        assert watch.all_configs.wait(60), watch.configs
        wait_for(
            lambda: all(
                fleet.agent_rows(i, "select status from round_state where round_id = 1") == [("training",)]
                for i in range(AGENTS)
            ),
            60,
            "every device to start training",
            step=0.005,
        )
        cluster.edges[0].kill()  # SIGKILL: no will, no goodbye to the bridge, queues gone
        crashed.append(time.time())
        watch.close()

    injector = threading.Thread(target=crash_edge, daemon=True)
    cfg = fleet.service_config(2)
    try:
        injector.start()
        reports = CoordinatorService(cfg, rng=np.random.default_rng(0)).run()
    finally:
        fleet.stop()
        watch.close()
    injector.join(5)
    assert len(crashed) == 1
    killed_at = crashed[0]
    lines = {d: json_log(logs[d]) for d in DEVICES}

    # the devices were spread: each connected first to the edge its id ranks first
    for d in DEVICES:
        first = next(r for r in lines[d] if r["msg"].startswith("connected to "))
        assert first["msg"] == f"connected to {home[d]}", (d, first)

    # both rounds completed with every device, the crashed one included
    assert [(r.round_id, r.status, r.participants) for r in reports] == [(1, "completed", 4), (2, "completed", 4)]
    for d in DEVICES:
        trained = Counter(
            r["round"] for r in lines[d] if r["logger"] == "fedge.agent.daemon" and r["msg"].startswith("trained ")
        )
        assert trained == {1: 1, 2: 1}, (d, trained)

    # each device of the dead edge moved to the other one once, and said so at WARNING with both URLs
    failover_s = {}
    for d in victims:
        # the premise: the crash came while it trained (so its round-1 replies were all still to be sent)
        trained_1 = next(r for r in lines[d] if r.get("round") == 1 and r["msg"].startswith("trained "))
        assert trained_1["ts"] > killed_at, "the crash came after the device had trained: lengthen training"
        switch = [r for r in lines[d] if "failing over" in r["msg"]]
        assert len(switch) == 1 and switch[0]["level"] == "WARNING" and switch[0]["device"] == d, switch
        assert f"{d}: broker {edges[0]} unreachable" in switch[0]["msg"] and switch[0]["msg"].endswith(edges[1])
        since = lines[d][lines[d].index(switch[0]) :]  # by order: the two lines may share a millisecond
        up = next(r for r in since if r["msg"] == f"{d}: connected to {edges[1]}")
        failover_s[d] = up["ts"] - killed_at
    for d in set(DEVICES) - set(victims):
        assert not [r for r in lines[d] if "failing over" in r["msg"]]

    store = Store(str(fleet.db))
    try:
        rounds = {r["round_id"]: r for r in store.rounds()}
        for rid in (1, 2):
            uploads = [u for u in store.uploads(rid) if u["status"] == "accepted"]
            per_stage = Counter(u["stage"] for u in uploads)
            # every stage of SecAgg+ heard from every device once; nothing of the round was refused
            assert per_stage["secagg.masked_input"] == AGENTS and len(set(per_stage.values())) == 1, per_stage
            assert {u["device_id"] for u in uploads} == set(DEVICES)
            refused = Counter(r["kind"] for r in store.db["rejections"].rows_where("round_id = ?", [rid]))
            assert set(refused) <= {"duplicate"}, refused  # copies sent again after the failover, if any
        # so everything they sent in round 1 after their check-in came through the other edge
        after = [u for u in store.uploads(1) if u["device_id"] in victims and u["stage"] != "round.checkin"]
        assert after and all(u["received_at"] > killed_at for u in after)
        durations = {rid: rounds[rid]["ended_at"] - rounds[rid]["started_at"] for rid in (1, 2)}
    finally:
        store.close()
    print(
        f"\nfailover after the crash: {', '.join(f'{d} {s:.2f} s' for d, s in sorted(failover_s.items()))}; "
        f"round 1 (crash inside) {durations[1]:.1f} s, round 2 {durations[2]:.1f} s"
    )
