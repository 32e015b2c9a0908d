"""Seconds per round and peak memory of the protocol simulator at 1,000 and 10,000 clients per round.

Population 100,000, digits (Dirichlet 0.5), the zoo's TFLite mlp, profiles pi4/phone/car; each
case with SecAgg+ and distributed DP, and with secure aggregation (and DP) off. Then the cohort
cost: a round of 1,000 clients out of 100,000 against 1,000 out of 1,000 (target within 1.2x),
interleaved. Each case runs in a fresh process whose peak memory is sampled as the summed RSS of
the driver and its device-host workers. Timings on a shared machine are noisy: ratios come from
the same run.

Run: ``.venv/bin/python bench/sim.py [--quick]``; the last line is JSON.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROFILES = (("pi4", 0.5), ("phone", 0.3), ("car", 0.2))


def _case(population: int, per_round: int, rounds: int, secure: bool, workers: int | None) -> dict:
    """Run one configuration in this process; seconds per round and the process tree's peak RSS."""
    import psutil

    from fedge.simulations import runner
    from fedge.simulations.config import SimConfig

    me = psutil.Process()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak[0] = max(peak[0], total)
            done.wait(0.2)

    threading.Thread(target=sample, daemon=True).start()
    config = SimConfig(
        population=population,
        per_round=per_round,
        rounds=rounds,
        model="mlp",
        dataset="digits",
        partition="dirichlet:0.5",
        secagg=secure,
        dp="distributed" if secure else "off",
        noise_multiplier=1.0 if secure else 0.0,
        clip=1.0,
        delta=1e-6,
        seed=0,
        profiles=PROFILES,
        workers=workers,
    )
    t0 = time.perf_counter()
    summary = runner.run(config, show_progress=False)
    total = time.perf_counter() - t0
    done.set()
    rs = summary.rounds
    stages: dict[str, float] = {}
    for r in rs:
        for k, v in r.seconds_per_stage.items():
            stages[k] = stages.get(k, 0.0) + v / len(rs)
    return {
        "population": population,
        "per_round": per_round,
        "secagg_dp": secure,
        "hosts": summary.extra["hosts"],
        "round_seconds": [round(r.seconds, 2) for r in rs],
        "median_round_seconds": statistics.median(r.seconds for r in rs),
        "seconds_per_stage": {k: round(v, 2) for k, v in stages.items()},
        "participants": [r.participants for r in rs],
        "epsilon": [r.epsilon for r in rs],
        "setup_seconds": summary.extra["setup_seconds"],
        "total_seconds": total,
        "peak_rss_mb": peak[0] / 2**20,
    }


def run_case(*args: object) -> dict:
    """:func:`_case` in a fresh interpreter, so each peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--case", *map(str, args)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main(quick: bool) -> None:
    big = 2000 if quick else 10_000
    result: dict[str, object] = {}
    for per_round in (1000, big):
        for secure in (True, False):
            r = run_case(100_000, per_round, 2 if per_round > 1000 else 3, secure, "auto")
            result[f"{per_round}_of_100000_{'secagg_dp' if secure else 'plain'}"] = {
                k: r[k] for k in ("median_round_seconds", "peak_rss_mb", "participants", "seconds_per_stage", "hosts")
            }
    cost: dict[int, list[float]] = {1000: [], 100_000: []}
    for _ in range(1 if quick else 2):
        for population in cost:
            cost[population].append(run_case(population, 1000, 3, True, "auto")["median_round_seconds"])
    result["cohort_cost"] = {
        "round_seconds_1k_of_1k": min(cost[1000]),
        "round_seconds_1k_of_100k": min(cost[100_000]),
        "ratio": min(cost[100_000]) / min(cost[1000]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        pop, per, rounds, secure, workers = sys.argv[2:7]
        print(
            json.dumps(
                _case(int(pop), int(per), int(rounds), secure == "True", None if workers == "auto" else int(workers))
            )
        )
    else:
        main("--quick" in sys.argv)
