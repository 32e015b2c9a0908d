"""A round costs what its cohort costs: 1,000 clients of 100,000 against 1,000 of 1,000, same run.

For each data set, runs the simulation with the same cohort size over both populations (interleaved,
``REPEATS`` times), and reports the ratio of per-round seconds (target <= 1.2), of seconds per
trained example (Synthetic's device sizes are heavy-tailed, so cohorts of the same size differ in
work; this ratio removes that), and of setup seconds. Peak RSS of the whole process is printed too. The round engine is the runner's
default, the protocol engine (SecAgg+ off here: see ``bench/sim.py`` for the secure cases).

Run: ``.venv/bin/python bench/sim_cohort_cost.py``; the last line is JSON.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedge.simulations import runner  # noqa: E402
from fedge.simulations.config import SimConfig  # noqa: E402

COHORT = 1000
ROUNDS = 4
REPEATS = 2
CASES = {
    "synthetic-natural": dict(model="mlp", dataset="synthetic:1,1", partition="natural"),
    "digits-dirichlet": dict(model="mlp", dataset="digits", partition="dirichlet:0.5"),
}


def round_seconds(population: int, case: dict) -> tuple[float, float, float]:
    """Median seconds of a round and seconds per example (the first round is warm-up), and setup seconds."""
    config = SimConfig(
        population=population,
        per_round=COHORT,
        rounds=ROUNDS,
        seed=1,
        profiles=(("pi4", 0.5), ("phone", 0.3), ("car", 0.2)),
        **case,
    )
    summary = runner.run(config, show_progress=False)
    timed = summary.rounds[1:]
    per_example = sum(r.seconds for r in timed) / max(1, sum(r.examples for r in timed))
    return statistics.median(r.seconds for r in timed), per_example, summary.extra["setup_seconds"]


def main() -> None:
    result = {}
    for name, case in CASES.items():
        runs: dict[int, list[tuple[float, float, float]]] = {COHORT: [], 100 * COHORT: []}
        for _ in range(REPEATS):
            for population in runs:
                runs[population].append(round_seconds(population, case))
        small = [min(col) for col in zip(*runs[COHORT])]
        large = [min(col) for col in zip(*runs[100 * COHORT])]
        result[name] = {
            "round_seconds_1k_of_1k": small[0],
            "round_seconds_1k_of_100k": large[0],
            "round_ratio": large[0] / small[0],
            "per_example_ratio": large[1] / small[1],
            "setup_ratio": large[2] / small[2],
        }
        print(
            f"{name}: round {large[0]:.3f}s (1k of 100k) / {small[0]:.3f}s (1k of 1k) = {large[0] / small[0]:.2f}x; "
            f"per example {large[1] / small[1]:.2f}x",
            flush=True,
        )
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
