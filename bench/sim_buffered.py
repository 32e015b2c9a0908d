"""Buffered (FedBuff) against synchronous rounds on the simulated clock, same seed, data, profiles and upload budget.

    python bench/sim_buffered.py OUT [--quick]

Runs the synchronous campaign, then buffered mode with as many groups as the synchronous uploads
need; prints both curves (sim_seconds, uploads, accuracy per version), the simulated time each
mode takes to reach the synchronous run's final accuracy, and writes ``OUT/buffered_vs_sync.png``
and ``OUT/comparison.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from fedge.simulations import runner
from fedge.simulations.config import SimConfig
from fedge.simulations.report import Summary, write_comparison

COMMON = dict(
    population=100,
    per_round=20,
    model="logreg",
    dataset="digits",
    partition="dirichlet:0.5",
    secagg=True,
    profiles=(("pi4", 0.5), ("phone", 0.3), ("car", 0.2)),
    local_epochs=5,
    learning_rate=0.1,
    seed=0,
    workers=0,
)
SYNC_ROUNDS = 40
BUFFER, CONCURRENCY, MAX_STALENESS, STALENESS, SERVER_LR = 5, 12, 10, "poly:0.5", 1.0


def time_to(summary: Summary, target: float) -> float:
    """Simulated seconds when a version first reaches ``target`` accuracy (inf: never)."""
    return next((r.sim_seconds for r in summary.rounds if r.accuracy >= target), math.inf)


def curve(summary: Summary) -> list[tuple[int, float, int, float]]:
    return [(r.round, round(r.sim_seconds, 1), r.uploads, round(r.accuracy, 4)) for r in summary.rounds]


def main(out: Path, quick: bool = False) -> dict:
    rounds = 6 if quick else SYNC_ROUNDS
    sync_cfg = SimConfig(rounds=rounds, **COMMON)
    sync = runner.run(dataclasses.replace(sync_cfg, out=str(out / "sync")), show_progress=False)
    budget = sync.rounds[-1].uploads
    groups = math.ceil(1.5 * budget / BUFFER)  # enough groups; the curve is cut at the budget below
    buf_cfg = SimConfig(
        rounds=groups,
        mode="buffered",
        buffer=BUFFER,
        concurrency=CONCURRENCY,
        max_staleness=MAX_STALENESS,
        staleness=STALENESS,
        server_opt=dataclasses.replace(sync_cfg.server_opt, learning_rate=SERVER_LR),
        out=str(out / "buffered"),
        **COMMON,
    )
    buf = runner.run(buf_cfg, show_progress=False)
    buf = dataclasses.replace(buf, rounds=tuple(r for r in buf.rounds if r.uploads <= budget))  # the same budget
    target = sync.rounds[-1].accuracy
    result = {
        "settings": {
            **{k: (dict(v) if k == "profiles" else v) for k, v in COMMON.items()},
            "sync_rounds": rounds,
            "buffer": BUFFER,
            "concurrency": CONCURRENCY,
            "max_staleness": MAX_STALENESS,
            "staleness": STALENESS,
            "server_lr": SERVER_LR,
            "buffered_groups": groups,
        },
        "target_accuracy": target,
        "sync": {"time_to_target": time_to(sync, target), "final": curve(sync)[-1], "curve": curve(sync)},
        "buffered": {
            "time_to_target": time_to(buf, target),
            "final": curve(buf)[-1],
            "curve": curve(buf),
            "refused": sum(r.refused for r in buf.rounds),
        },
    }
    result["ratio"] = result["buffered"]["time_to_target"] / result["sync"]["time_to_target"]
    write_comparison({"synchronous": sync, "buffered": buf}, out / "buffered_vs_sync.png")
    (out / "comparison.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    res = main(Path(sys.argv[1]), quick="--quick" in sys.argv)
    print(json.dumps({k: v for k, v in res.items() if k not in ("sync", "buffered")}, indent=1))
    for mode in ("sync", "buffered"):
        print(mode, "time to target:", res[mode]["time_to_target"], "final:", res[mode]["final"])
    print("ratio buffered/sync:", res["ratio"])
