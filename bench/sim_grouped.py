"""Round time and memory of SecAgg+ rounds aggregated in 1, 2 and 4 groups (``--group-size``).

Synthetic(1,1), the zoo's logreg60, ideal devices (every cohort member is in the roster), SecAgg+
on, DP off, 2 device-host worker processes, the groups' SecAgg+ servers in 2 group worker processes
(``--group-engine process``) or on the driver's threads (``thread``): peak RSS is reported for the
driver (the coordinator and the runner), the group workers and the device hosts apart, and in total.
Each case runs in a fresh interpreter.

Run: ``nice -n 10 .venv/bin/python bench/sim_grouped.py curve ENGINE [SIZES...]`` or
``... big PER_ROUND GROUP_SIZE [ENGINE]`` (one round out of PER_ROUND devices); the last line is JSON.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _case(per_round: int, group_size: int, workers: int, partition: str = "natural", engine: str = "process") -> dict:
    import psutil

    from fedge.simulations import runner
    from fedge.simulations.config import SimConfig

    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(name)s %(message)s")
    logging.getLogger("fedge.simulations.protocol").setLevel(logging.INFO)
    me = psutil.Process()
    peak = {"driver": 0, "groups": 0, "hosts": 0, "total": 0}
    done = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        last = 0.0
        while not done.is_set():
            try:
                d = me.memory_info().rss
                groups = hosts = 0
                for c in me.children(recursive=True):
                    rss = c.memory_info().rss
                    if "fedge.coordinator.workers" in " ".join(c.cmdline()):
                        groups += rss
                    else:
                        hosts += rss
            except psutil.Error:
                continue
            total = d + groups + hosts
            for k, v in (("driver", d), ("groups", groups), ("hosts", hosts), ("total", total)):
                peak[k] = max(peak[k], v)
            if time.perf_counter() - last > 15:
                last = time.perf_counter()
                print(
                    f"{last - t0:7.1f} s: driver {d / 2**20:.0f} MB, group workers {groups / 2**20:.0f} MB, "
                    f"total {total / 2**20:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
            done.wait(0.2)

    threading.Thread(target=sample, daemon=True).start()
    config = SimConfig(
        population=max(per_round, 1000),
        per_round=per_round,
        rounds=1,
        model="logreg",
        dataset="synthetic:1,1",
        partition=partition,
        secagg=True,
        seed=0,
        workers=workers,
        group_size=group_size,
        group_engine=engine,
    )
    summary = runner.run(config, show_progress=False)
    total = time.perf_counter() - t0
    done.set()
    r = summary.rounds[-1]
    return {
        "per_round": per_round,
        "group_size": group_size,
        "groups": max(1, per_round // group_size) if group_size else 1,
        "status": r.status,
        "participants": r.participants,
        "round_seconds": r.seconds,
        "seconds_per_stage": {k: round(v, 2) for k, v in r.seconds_per_stage.items()},
        "run_seconds": total,
        "group_engine": engine,
        "peak_driver_mb": peak["driver"] / 2**20,
        "peak_group_workers_mb": peak["groups"] / 2**20,
        "peak_device_hosts_mb": peak["hosts"] / 2**20,
        "peak_total_mb": peak["total"] / 2**20,
    }


def run_case(per_round: int, group_size: int, engine: str, workers: int = 2) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "case", str(per_round), str(group_size), str(workers), engine],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1] == "case":
        n, g, w = map(int, sys.argv[2:5])
        print(json.dumps(_case(n, g, w, engine=sys.argv[5])))
    elif sys.argv[1] == "curve":
        engine = sys.argv[2]
        sizes = [int(x) for x in sys.argv[3:]] or [2000, 4000, 8000]
        rows = []
        for n in sizes:
            for g in (1, 2, 4):
                row = run_case(n, 0 if g == 1 else n // g, engine)
                rows.append(row)
                print(
                    f"{n:>7} devices, {g} group(s), {engine}: round {row['round_seconds']:.1f} s, driver peak "
                    f"{row['peak_driver_mb']:.0f} MB, group workers {row['peak_group_workers_mb']:.0f} MB, "
                    f"total {row['peak_total_mb']:.0f} MB, "
                    f"unmask {row['seconds_per_stage'].get('unmask', 0):.2f} s",
                    flush=True,
                )
        print(json.dumps(rows))
    else:
        # the command of the issue: fedge-sim run --population N --per-round N --group-size G
        # --dataset synthetic:1,1 --model logreg --secagg --rounds 1 (default partition iid)
        engine = sys.argv[4] if len(sys.argv) > 4 else "process"
        print(json.dumps(_case(int(sys.argv[2]), int(sys.argv[3]), 2, "iid", engine)))


if __name__ == "__main__":
    main()
