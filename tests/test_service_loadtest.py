"""``fedge-coordinator loadtest`` end to end: 20 real agents (``AgentDaemon``s in two worker
processes) against a Mosquitto it starts and the real coordinator service, one SecAgg+ round with
distributed DP while a quarter of the agents have their connection reset and the broker restarts
mid-round; the JSON it writes is checked against the stores it leaves behind. And one worker
process whose agents hold more than 1,024 descriptors, on one shared network loop."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedge.coordinator.service.cli import cli
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.slow]


@pytest.mark.timeout(120)
def test_loadtest_runs_a_round_with_churn_and_a_broker_restart_and_accounts_from_the_stores(tmp_path):
    out, work = tmp_path / "result.json", tmp_path / "work"
    r = CliRunner().invoke(
        cli,
        [
            "loadtest",
            "--agents",
            "20",
            "--rounds",
            "2",
            "--churn",
            "0.25",
            "--broker-restart",
            "--agents-per-worker",
            "10",
            "--checkin-window",
            "10",
            "--workdir",
            str(work),
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert set(result) == {
        "agents",
        "rounds",
        "resets_injected",
        "broker_restarts",
        "lost_uploads",
        "double_counted",
        "coordinator_peak_rss_mb",
        "db_bytes",
    }
    assert result["agents"] == 20 and result["broker_restarts"] == 1 and result["resets_injected"] >= 1
    assert [(x["round"], x["status"]) for x in result["rounds"]] == [(1, "completed"), (2, "completed")]
    assert all(x["participants"] >= 10 for x in result["rounds"]), result
    assert result["lost_uploads"] == 0 and result["double_counted"] == 0
    con = sqlite3.connect(work / "coordinator.db")
    try:
        participants = con.execute("select participants from rounds order by round_id").fetchall()
        uploads = con.execute("select count(*) from uploads where stage = 'secagg.masked_input'").fetchone()[0]
    finally:
        con.close()
    assert [p for (p,) in participants] == [x["participants"] for x in result["rounds"]]
    assert uploads >= sum(x["participants"] for x in result["rounds"])
    assert result["db_bytes"] > 0 and result["coordinator_peak_rss_mb"] > 0


@pytest.mark.timeout(180)
def test_a_broker_crash_mid_round_loses_no_upload_and_counts_none_twice(tmp_path):
    """SIGKILL, not SIGTERM: the broker comes back without what it had not autosaved (sessions,
    subscriptions, queued messages). Every round still ends (completed, or abandoned with its reason),
    and the stores show no upload lost and none counted twice."""
    out, work = tmp_path / "result.json", tmp_path / "work"
    args = ["loadtest", "--agents", "20", "--rounds", "3", "--broker-crash", "--agents-per-worker", "10"]
    args += ["--checkin-window", "10", "--stage-timeout", "60", "--workdir", str(work), "--json", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["broker_restarts"] == 1
    # before the coordinator repeated its unanswered requests after the link came back, the crashed
    # round was abandoned at its stage timeout: "0 devices advertised keys with enough live neighbours"
    assert [x["status"] for x in result["rounds"]] == ["completed"] * 3, result["rounds"]
    assert all(x["participants"] >= 16 for x in result["rounds"]), result["rounds"]  # SecAgg+ tolerates a few
    assert result["lost_uploads"] == 0 and result["double_counted"] == 0, result


class WorkerWatch(threading.Thread):
    """Samples this process's multiprocessing children (the load test's workers): the most threads
    and the highest descriptor number each had."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.threads: dict[int, int] = {}
        self.max_fd: dict[int, int] = {}

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
                for pid in children.read_text().split():
                    try:
                        if b"multiprocessing.spawn" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        status = Path(f"/proc/{pid}/status").read_text()
                        fds = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")]
                    except (OSError, ValueError):
                        continue  # gone meanwhile
                    threads = int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])
                    p = int(pid)
                    self.threads[p] = max(self.threads.get(p, 0), threads)
                    self.max_fd[p] = max(self.max_fd.get(p, 0), max(fds, default=0))


@pytest.mark.timeout(150)
def test_one_worker_past_descriptor_1024_runs_a_round_on_one_network_thread(tmp_path):
    """220 agents in one worker process hold about 1,100 descriptors: paho's own select() loop cannot
    serve sockets numbered past 1,024, the shared network loop (epoll) does. The round completes with
    every agent, and the worker runs a thread per agent (its daemon) plus a handful, not two per agent."""
    agents = 220
    out, work = tmp_path / "result.json", tmp_path / "work"
    watch = WorkerWatch()
    watch.start()
    args = ["loadtest", "--agents", str(agents), "--rounds", "1", "--agents-per-worker", str(agents)]
    r = CliRunner().invoke(cli, [*args, "--checkin-window", "10", "--workdir", str(work), "--json", str(out)])
    watch.stop.set()
    watch.join(5)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert [(x["status"], x["participants"]) for x in result["rounds"]] == [("completed", agents)], result
    assert result["lost_uploads"] == 0 and result["double_counted"] == 0
    [worker] = watch.threads  # one worker process
    assert watch.max_fd[worker] >= 1024, watch.max_fd
    assert agents < watch.threads[worker] <= agents + 12, watch.threads


def test_every_agent_of_a_fleet_larger_than_the_data_gets_a_shard():
    """2,000 agents over 1,497 training images: before, 503 shards were empty and the load test died
    preparing them ("data.npz: no examples")."""
    import numpy as np

    from fedge.coordinator.service.loadtest import MIN_SHARD, shards

    parts, test = shards(2000, seed=0)
    assert len(parts) == 2000 and all(len(y) == MIN_SHARD and len(x) == len(y) for x, y in parts)
    assert len(test[1]) == 300
    small, _ = shards(20, seed=0)  # fewer agents than images: disjoint shards that cover the training set
    sizes = [len(y) for _, y in small]
    assert sizes == [1497 // 20] * 20  # 74 each: windows that never wrap round, so no image is shared
    first, last = small[0][0], small[-1][0]
    assert not np.array_equal(first, last)
