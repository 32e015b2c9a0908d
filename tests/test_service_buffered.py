"""serve --mode buffered with real ``fedge-agent run`` daemons on Mosquitto: each device trains on the
newest model as soon as it is free, finished devices form SecAgg+ groups of K, and every group makes a
model version. A device with ten times the data of the others (ten times the training steps) does not
hold the versions up; an update more than --max-staleness versions old is refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.local_data import import_examples
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.models import load_spec
from tests.daemon_fleet import DaemonFleet, rows, secagg_training
from tests.mqtt_fixtures import needs_mosquitto

pytestmark = [needs_mosquitto, pytest.mark.mosquitto, pytest.mark.timeout(300)]


def _slow_down(fleet: DaemonFleet, i: int, factor: int) -> None:
    """Daemon ``i`` gets ``factor`` times its examples (its shard repeated): ``factor`` times the steps per epoch."""
    a = fleet.agents[i]
    with np.load(a.data) as f:
        x, y = f["x"], f["y"]
    more = a.data.with_name("more.npz")
    np.savez(more, x=np.tile(x, (factor - 1, 1)), y=np.tile(y, factor - 1))
    with AgentStore(a.db) as store:
        import_examples(store, more, load_spec(fleet.training.model_name), split="train")


def test_versions_advance_without_waiting_for_a_ten_times_slower_device(tmp_path, mosquitto, caplog):
    import logging

    from fedge.agent.core.secagg.params import choose_suite, supported_suites

    caplog.set_level(logging.INFO, logger="fedge.coordinator.service.buffered_service")
    training = secagg_training(4, epochs=100, train_deadline_s=120.0)
    fleet = DaemonFleet(tmp_path, 4, mosquitto.url, training)
    _slow_down(fleet, 0, 60)
    slow = fleet.devices[0]
    with fleet:
        reports = fleet.serve(rounds=3, mode="buffered", buffer=2, concurrency=4, max_staleness=10)
    assert [r.status for r in reports] == ["completed"] * 3, [r.reason for r in reports]
    assert all(r.participants == 2 and r.epsilon is not None for r in reports), reports
    # groups run the suite their devices reported at check-in (AES masks where they all have them), not a default
    assert caplog.text.count(f"SecAgg+ suite {choose_suite([supported_suites()] * 2)} for 2 devices") >= 3
    eps = [r.epsilon for r in reports]
    assert eps == sorted(eps) and eps[0] < eps[-1]  # epsilon after each version, composed
    groups = rows(fleet.db, "select * from rounds order by round_id")
    tasks = rows(fleet.db, "select * from buffered_tasks where base_version >= 0 order by round_id")
    first_slow = next(t for t in tasks if t["device_id"] == slow)
    assert first_slow["base_version"] == 0
    # a version was made while the slow device was still training on version 0, and its update, when it
    # came, was aggregated as a stale one (weighted s(tau) < 1)
    done = first_slow["ended_at"] if first_slow["status"] not in ("training", "abandoned") else float("inf")
    assert groups[0]["ended_at"] < done, (groups, first_slow)
    assert first_slow["status"] in ("training", "abandoned") or first_slow["staleness"] >= 1, first_slow
    fast = [t for t in tasks if t["device_id"] != slow and t["ended_at"] is not None and t["status"] == "aggregated"]
    # measured by the coordinator (task sent to answer received): the slow device's task took at least
    # five times the fast ones' (or had not ended when the last version was made)
    fast_s = float(np.median([t["ended_at"] - t["started_at"] for t in fast]))
    assert done - first_slow["started_at"] >= 5 * fast_s, (first_slow, fast_s)
    print(
        f"fast task {fast_s:.2f} s, slow task {done - first_slow['started_at']:.2f} s, "
        f"versions at {[round(g['ended_at'] - first_slow['started_at'], 2) for g in groups]} s"
    )


def test_groups_run_their_secagg_rounds_at_once_and_are_applied_in_order(tmp_path, mosquitto):
    """Six devices trained at once close three groups of two together: their SecAgg+ rounds overlap
    in time (one waiting out a stage holds up no other group), and each version is made from the one
    before it, in the groups' target order."""
    training = secagg_training(6, epochs=2)
    with DaemonFleet(tmp_path, 6, mosquitto.url, training) as fleet:
        reports = fleet.serve(rounds=3, mode="buffered", buffer=2, concurrency=6, max_staleness=10)
    assert [r.status for r in reports] == ["completed"] * 3, [r.reason for r in reports]
    groups = rows(fleet.db, "select * from rounds where round_id in (select group_round from buffered_tasks)")
    assert len(groups) == 3
    spans = sorted((g["started_at"], g["ended_at"]) for g in groups)
    overlaps = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlaps >= 1, spans  # groups ran one after another before: never an overlap
    models = {m["version"]: m for m in rows(fleet.db, "select version, parent from models")}
    made = [g["model_out"] for g in sorted(groups, key=lambda g: g["round_id"])]
    assert [models[v]["parent"] for v in made[1:]] == made[:-1], (made, models)
    tasks = rows(fleet.db, "select * from buffered_tasks where base_version >= 0 and status = 'aggregated'")
    assert len(tasks) == 6 and sorted(t["staleness"] for t in tasks) == [0, 0, 1, 1, 2, 2], tasks


def test_an_update_older_than_max_staleness_is_refused_with_its_reason(tmp_path, mosquitto):
    training = secagg_training(2, secagg=False, dp_mode="off", noise_multiplier=0.0, min_clients=1)
    with DaemonFleet(tmp_path, 2, mosquitto.url, training) as fleet:
        reports = fleet.serve(rounds=2, mode="buffered", buffer=1, concurrency=2, max_staleness=0)
    assert [r.status for r in reports] == ["completed", "completed"], [r.reason for r in reports]
    tasks = rows(fleet.db, "select * from buffered_tasks where base_version >= 0 order by round_id")
    # both first tasks trained on version 0; whichever answered second found version 1 as its target
    first_two = tasks[:2]
    assert [t["base_version"] for t in first_two] == [0, 0]
    refused = [t for t in tasks if t["status"] == "refused"]
    assert refused and refused[0]["round_id"] in {t["round_id"] for t in first_two}, tasks
    assert all(t["reason"] == "StaleUpdate: update is 1 versions old, at most 0 are accepted" for t in refused), refused
    aggregated = [t for t in tasks if t["status"] == "aggregated"]
    assert len(aggregated) == 2 and all(t["staleness"] == 0 and t["weight"] == 1.0 for t in aggregated)
    assert not {t["round_id"] for t in refused} & {t["round_id"] for t in aggregated}


def test_a_restarted_buffered_campaign_keeps_its_epsilon_and_contribution_caps(tmp_path, mosquitto):
    """The second run is ``fedge-coordinator serve --mode buffered`` on the first run's store: it composes
    onto the stored epsilon (one event per group until --max-contributions groups), keeps each device's
    count of aggregated updates, and stops by itself when no device may contribute any more."""
    from click.testing import CliRunner

    from fedge.coordinator.service.cli import cli

    training = secagg_training(2, secagg=False, dp_mode="local", noise_multiplier=1.0, min_clients=1, goal=1)
    buffered = dict(mode="buffered", buffer=1, concurrency=2, max_staleness=10, max_contributions=2)
    with DaemonFleet(tmp_path, 2, mosquitto.url, training) as fleet:
        first = fleet.serve(rounds=1, **buffered)
        assert [r.status for r in first] == ["completed"], [r.reason for r in first]
        args = ["serve", "--db", str(fleet.db), "--broker", mosquitto.url, "--mqtt-protocol", "5"]
        args += ["--no-secagg", "--dp", "local", "--noise-multiplier", "1.0", "--goal", "1", "--min-clients", "1"]
        args += ["--epsilon-budget", "1000", "--checkin-window", "60", "--rounds", "5"]
        args += ["--mode", "buffered", "--buffer", "1", "--concurrency", "2", "--max-staleness", "10"]
        args += ["--max-contributions", "2", "--staleness", "constant"]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    groups = rows(fleet.db, "select * from rounds where status = 'completed' and epsilon is not null order by round_id")
    assert len(groups) == 4, groups  # 2 devices x 2 contributions; then it stopped without waiting for more
    eps = [g["epsilon"] for g in groups]
    assert eps[0] < eps[1], eps  # the restarted run composed onto the stored epsilon
    assert eps[1] == eps[2] == eps[3], eps  # max_contributions 2: no device is in more than two groups
    assert len(rows(fleet.db, "select * from privacy_rounds")) == 2
    counts = rows(
        fleet.db, "select device_id, count(*) as n from buffered_tasks where status = 'aggregated' group by device_id"
    )
    assert sorted(c["n"] for c in counts) == [2, 2], counts


def test_buffered_settings_are_checked_before_serving():
    from fedge.agent.core.errors import ConfigError
    from fedge.coordinator.service.config import ServiceConfig

    secure = secagg_training(2)
    with pytest.raises(ConfigError, match="group of one device"):
        ServiceConfig(db_path="x.db", training=secure, mode="buffered", buffer=1)
    with pytest.raises(ConfigError, match="staleness"):
        ServiceConfig(db_path="x.db", training=secure, mode="buffered", staleness="poly")
    with pytest.raises(ConfigError, match="max_staleness"):
        ServiceConfig(db_path="x.db", training=secure, mode="buffered", max_staleness=-1)
    adaptive = secagg_training(2, target_quantile=0.5, clip_count_stddev=1.0)
    with pytest.raises(ConfigError, match="adaptive clipping"):
        ServiceConfig(db_path="x.db", training=adaptive, mode="buffered")
    assert ServiceConfig(db_path="x.db", training=secure, mode="buffered", buffer=2).buffer == 2
