"""Buffered (FedBuff) against synchronous rounds on the simulated clock, same seed, data, profiles and upload budget.

    python bench/sim_buffered.py OUT [--quick] [--seeds 0,1,2,3] [--buffer K] [--concurrency C]
                                     [--max-staleness S] [--staleness F] [--server-lr LR]

For each seed: runs the synchronous campaign, then buffered mode with as many groups as the
synchronous uploads need; prints both curves (sim_seconds, uploads, accuracy per version), the
simulated time each mode takes to reach the synchronous run's final accuracy, and writes
``OUT/seed-N/buffered_vs_sync.png`` and ``OUT/seed-N/comparison.json``. Last, one line per seed
and the pass rate: a seed passes when buffered reaches the target in at most half the simulated
time synchronous rounds take to first reach it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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


def main(
    out: Path,
    quick: bool = False,
    seed: int = 0,
    buffer: int = BUFFER,
    concurrency: int = CONCURRENCY,
    max_staleness: int = MAX_STALENESS,
    staleness: str = STALENESS,
    server_lr: float = SERVER_LR,
) -> dict:
    rounds = 6 if quick else SYNC_ROUNDS
    common = {**COMMON, "seed": seed}
    sync_cfg = SimConfig(rounds=rounds, **common)
    sync = runner.run(dataclasses.replace(sync_cfg, out=str(out / "sync")), show_progress=False)
    budget = sync.rounds[-1].uploads
    groups = math.ceil(1.5 * budget / buffer)  # enough groups; the curve is cut at the budget below
    buf_cfg = SimConfig(
        rounds=groups,
        mode="buffered",
        buffer=buffer,
        concurrency=concurrency,
        max_staleness=max_staleness,
        staleness=staleness,
        server_opt=dataclasses.replace(sync_cfg.server_opt, learning_rate=server_lr),
        out=str(out / "buffered"),
        **common,
    )
    buf = runner.run(buf_cfg, show_progress=False)
    buf = dataclasses.replace(buf, rounds=tuple(r for r in buf.rounds if r.uploads <= budget))  # the same budget
    target = sync.rounds[-1].accuracy
    result = {
        "settings": {
            **{k: (dict(v) if k == "profiles" else v) for k, v in common.items()},
            "sync_rounds": rounds,
            "buffer": buffer,
            "concurrency": concurrency,
            "max_staleness": max_staleness,
            "staleness": staleness,
            "server_lr": server_lr,
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
    result["ratio_to_sync_length"] = result["buffered"]["time_to_target"] / sync.rounds[-1].sim_seconds
    write_comparison({"synchronous": sync, "buffered": buf}, out / "buffered_vs_sync.png")
    (out / "comparison.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--buffer", type=int, default=BUFFER)
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    ap.add_argument("--max-staleness", type=int, default=MAX_STALENESS)
    ap.add_argument("--staleness", default=STALENESS)
    ap.add_argument("--server-lr", type=float, default=SERVER_LR)
    a = ap.parse_args()
    rows = []
    for seed in [int(x) for x in a.seeds.split(",")]:
        res = main(
            a.out / f"seed-{seed}",
            a.quick,
            seed,
            a.buffer,
            a.concurrency,
            a.max_staleness,
            a.staleness,
            a.server_lr,
        )
        print(f"seed {seed}:", json.dumps({k: v for k, v in res.items() if k not in ("sync", "buffered")}))
        for mode in ("sync", "buffered"):
            print(f"  {mode} time to target:", res[mode]["time_to_target"], "final:", res[mode]["final"])
        rows.append((seed, res))
    print("seed  target  sync_s  buffered_s  ratio  ratio_to_sync_length  refused")
    for seed, res in rows:
        print(
            f"{seed:4d}  {res['target_accuracy']:.4f}  {res['sync']['time_to_target']:6.0f}"
            f"  {res['buffered']['time_to_target']:10.0f}  {res['ratio']:.3f}  {res['ratio_to_sync_length']:.3f}"
            f"  {res['buffered']['refused']}"
        )
    passed = sum(res["ratio"] <= 0.5 for _, res in rows)
    print(f"passed (ratio <= 0.5): {passed} of {len(rows)}")
