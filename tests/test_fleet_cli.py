"""``fedge-coordinator releases|rollouts``: thin commands, tables for people, JSON for scripts, named errors."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from fedge.agent.core.cliutil import run
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.release import verify_release
from fedge.coordinator.fleet.releases import signed_release, trusted_keys
from fedge.coordinator.service.cli import cli
from fedge.coordinator.service.enrollment import enroll
from fedge.coordinator.store import Store


def _run(*args: str) -> tuple[int, str]:
    """Run the CLI as ``fedge-coordinator`` would (named errors become exit codes); its exit code and stdout."""
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        code = run(cli, "fedge-coordinator", list(args))
        return code, out.getvalue().decode()


def test_release_and_rollout_commands(tmp_path, isolated_logging):
    db = str(tmp_path / "c.db")
    np.savez(tmp_path / "w.npz", weights=np.linspace(-1, 1, 650, dtype=np.float32))
    np.save(tmp_path / "w2.npy", np.zeros(650, np.float32))
    store = Store(db)
    for i in range(4):
        enroll(store, f"pi-{i}", IdentityKey.generate().public_bytes().hex(), "pi4", ("lab",))
    store.close()

    code, out = _run(
        "releases", "import", str(tmp_path / "w.npz"), "--version", "lr-1", "--architecture", "logreg", "--db", db
    )
    assert code == 0 and "release lr-1" in out
    assert (
        _run(
            "releases",
            "import",
            str(tmp_path / "w2.npy"),
            "--version",
            "lr-2",
            "--architecture",
            "logreg",
            "--parent",
            "lr-1",
            "--db",
            db,
        )[0]
        == 0
    )
    code, out = _run("releases", "list", "--json", "--db", db)
    rows = json.loads(out)
    assert [r["version"] for r in rows] == ["lr-1", "lr-2"] and rows[1]["parent"] == "lr-1"
    assert rows[0]["source"] == "import:w.npz"
    code, out = _run("releases", "list", "--db", db)
    assert out.splitlines()[0].split()[:3] == ["version", "parent", "arch"] and "lr-2" in out

    code, out = _run("releases", "rotate-key", "--db", db)
    assert code == 0 and "rotation 1" in out
    assert _run("releases", "sign", "lr-1", "--db", db)[0] == 0
    store = Store(db)
    rel = signed_release(store, "lr-1")
    verify_release(rel.manifest, rel.signature, rel.weights, trusted_keys(store))  # re-signed with the new key
    store.close()

    code, out = _run("rollouts", "create", "--release", "lr-2", "--class", "pi4", "--phases", "25,100", "--db", db)
    assert code == 0 and "4 devices" in out and "rollout r1" in out
    view = json.loads(_run("rollouts", "show", "r1", "--json", "--db", db)[1])
    assert [p["devices"] for p in view["phases"]] == [1, 3] and view["status"] == "active"
    assert "phase" in _run("rollouts", "show", "r1", "--db", db)[1]
    assert _run("rollouts", "pause", "r1", "--db", db)[1].strip() == "rollout r1: paused"
    code, _ = _run("rollouts", "pause", "r1", "--db", db)
    assert code == 2  # ConfigError: already paused
    assert _run("rollouts", "resume", "r1", "--db", db)[0] == 0
    assert "aborted" in _run("rollouts", "rollback", "r1", "--db", db)[1]
    assert json.loads(_run("rollouts", "list", "--json", "--db", db)[1])[0]["status"] == "aborted"
    assert _run("rollouts", "pin", "tag:lab", "lr-1", "--db", db)[0] == 0
    assert _run("rollouts", "pin", "nope", "lr-1", "--db", db)[0] == 2
    assert _run("rollouts", "create", "--release", "missing", "--class", "pi4", "--db", db)[0] == 2


def test_a_command_that_creates_a_store_says_so(tmp_path, capsys, isolated_logging):
    """A mistyped ``--db`` on ``releases import`` makes a new store with a new release key: it says so."""
    np.savez(tmp_path / "w.npz", weights=np.zeros(650, np.float32))
    db = tmp_path / "typo.db"
    argv = ["releases", "import", str(tmp_path / "w.npz"), "--version", "lr-1", "--architecture", "logreg"]
    assert run(cli, "fedge-coordinator", [*argv, "--db", str(db)]) == 0
    err = capsys.readouterr().err
    assert f"{db}: no coordinator store there yet; creating a new one" in err, err
    assert run(cli, "fedge-coordinator", [*argv[:3], "--version", "lr-2", *argv[5:], "--db", str(db)]) == 0
    assert "creating" not in capsys.readouterr().err  # an existing store: nothing to say
