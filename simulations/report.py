"""Simulation results: per-round records, ``summary.json``, ``rounds.csv``, PNG plots and a progress bar."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: The keys every round of ``summary.json`` carries, in this order (more may follow).
ROUND_KEYS = (
    "round",
    "accuracy",
    "loss",
    "epsilon",
    "epsilon_empirical",
    "epsilon_lower_bound",
    "delta",
    "participants",
    "dropped",
    "bytes_up",
    "bytes_down",
    "seconds",
    "sim_seconds",
    "uploads",
)
#: Further plain columns of ``rounds.csv``.
EXTRA_KEYS = ("examples", "status", "reason", "refused", "staleness_mean", "staleness_max")
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_epsilon.png", "accuracy_per_group.png", "epsilon_audit.png")
T = TypeVar("T")


@dataclass(frozen=True)
class RoundRecord:
    """What one round cost and achieved. ``epsilon`` is None when no DP accountant ran.

    ``examples`` counts the local training examples the round processed (its compute cost).
    ``dropped_per_stage`` counts ``unavailable`` and each SecAgg+ stage; ``seconds_per_stage``
    is wall-clock time of the simulator; ``group_accuracy`` maps a client group
    (``profile:pi4``, ``size:q1``) to the global model's accuracy on that group's clients.
    ``epsilon_empirical`` and ``epsilon_lower_bound`` are the canary audit's Gaussian-fit estimate
    and one-run lower bound over the rounds so far (every round's aggregate seen), None without
    ``--audit-canaries``; ``audit`` holds its full figures (:class:`coordinator.rounds.audit.AuditResult`).
    ``sim_seconds`` is the simulated time (:mod:`fedge.simulations.clock`) when this model version
    was made (or the round ended), ``uploads`` the updates aggregated into the model so far. Buffered
    mode: ``refused`` updates since the last version (too stale), and the staleness of this group's
    members (mean, max; 0 in synchronous rounds).
    """

    round: int
    accuracy: float
    loss: float
    epsilon: float | None
    delta: float
    participants: int
    dropped: int
    bytes_up: int
    bytes_down: int
    seconds: float
    examples: int = 0
    dropped_per_stage: dict[str, int] = field(default_factory=dict)
    seconds_per_stage: dict[str, float] = field(default_factory=dict)
    group_accuracy: dict[str, float] = field(default_factory=dict)
    #: ``completed``, or ``abandoned`` with the coordinator's ``reason`` (the model is then unchanged)
    status: str = "completed"
    reason: str = ""
    epsilon_empirical: float | None = None
    epsilon_lower_bound: float | None = None
    audit: dict[str, Any] | None = None
    sim_seconds: float = 0.0
    uploads: int = 0
    refused: int = 0
    staleness_mean: float = 0.0
    staleness_max: int = 0

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object: :data:`ROUND_KEYS` first, then the breakdowns."""
        d = dataclasses.asdict(self)
        return {**{k: d.pop(k) for k in ROUND_KEYS}, **d}


@dataclass(frozen=True)
class Summary:
    """A finished run: its resolved config, every round, and run-level facts (``extra``)."""

    config: dict[str, Any]
    rounds: tuple[RoundRecord, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "rounds": [r.to_json() for r in self.rounds], **self.extra}


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_summary(summary: Summary, out: Path) -> Path:
    """Write ``out/summary.json`` (strict JSON, no NaN)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    path.write_text(json.dumps(_finite_or_none(summary.to_json()), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(summary: Summary, out: Path) -> Path:
    """Write ``out/rounds.csv``: one row per round, breakdowns flattened to ``dropped_<stage>``, ``seconds_<stage>``, ``accuracy_<group>``."""
    out.mkdir(parents=True, exist_ok=True)
    stages = sorted({k for r in summary.rounds for k in r.dropped_per_stage})
    timers = sorted({k for r in summary.rounds for k in r.seconds_per_stage})
    groups = sorted({k for r in summary.rounds for k in r.group_accuracy})
    header = [
        *ROUND_KEYS,
        *EXTRA_KEYS,
        *(f"dropped_{s}" for s in stages),
        *(f"seconds_{s}" for s in timers),
        *(f"accuracy_{g}" for g in groups),
    ]
    path = out / "rounds.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in summary.rounds:
            w.writerow(
                [
                    *("" if getattr(r, k) is None else getattr(r, k) for k in (*ROUND_KEYS, *EXTRA_KEYS)),
                    *(r.dropped_per_stage.get(s, "") for s in stages),
                    *(r.seconds_per_stage.get(s, "") for s in timers),
                    *(r.group_accuracy.get(g, "") for g in groups),
                ]
            )
    return path


def write_plots(summary: Summary, out: Path) -> list[Path]:
    """PNG plots: accuracy against rounds, against ε (if accounted), and per client group at the last round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rounds = [r.round for r in summary.rounds]
    acc = [r.accuracy for r in summary.rounds]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, acc, marker=".")
    ax.set(xlabel="round", ylabel="test accuracy", title="Accuracy against rounds")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / PLOTS[0]))

    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [(r.epsilon, r.accuracy) for r in summary.rounds if r.epsilon is not None]
    if eps:
        ax.plot([e for e, _ in eps], [a for _, a in eps], marker=".")
        ax.set(xlabel=f"ε (δ = {summary.rounds[-1].delta:g})", ylabel="test accuracy")
    else:
        ax.text(
            0.5, 0.5, "no privacy accounting in this run (--dp off)", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_title("Accuracy against ε")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / PLOTS[1]))

    paths_tail = [_audit_plot(summary, out / PLOTS[3], plt)]

    fig, ax = plt.subplots(figsize=(7, 4))
    last = summary.rounds[-1].group_accuracy if summary.rounds else {}
    names = sorted(last)
    ax.bar(range(len(names)), [last[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="accuracy", title="Accuracy per client group (last round)", ylim=(0, 1))
    fig.tight_layout()
    paths.append(_save(fig, out / PLOTS[2]))
    return paths + paths_tail


def _audit_plot(summary: Summary, path: Path, plt: Any) -> Path:
    """Accountant ε against the canary audit's estimate and lower bound, over rounds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = [r.round for r in summary.rounds]
    series = [
        ("epsilon", "accountant ε", "-"),
        ("epsilon_empirical", "audit estimate (Gaussian fit)", "--"),
        ("epsilon_lower_bound", "audit lower bound (95%)", ":"),
    ]
    drawn = False
    for key, label, style in series:
        values = [getattr(r, key) for r in summary.rounds]
        if any(v is not None and math.isfinite(v) for v in values):
            ax.plot(
                rounds,
                [math.nan if v is None or not math.isfinite(v) else v for v in values],
                style,
                marker=".",
                label=label,
            )
            drawn = True
    if drawn:
        ax.set(xlabel="round", ylabel=f"ε (δ = {summary.rounds[-1].delta:g})")
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            "no ε and no audit in this run (--dp off, no --audit-canaries)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_title("Accountant ε against the canary audit")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(summary: Summary, out: Path) -> list[Path]:
    """Everything a run leaves in ``out``: summary.json, rounds.csv and the plots."""
    return [write_summary(summary, out), write_csv(summary, out), *write_plots(summary, out)]


def progress(items: Iterable[T], total: int, desc: str = "rounds", stream: Any = None) -> Iterator[T]:
    """Iterate with a progress bar: tqdm on a terminal, one plain line per item otherwise."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, file=stream)
        return
    for i, item in enumerate(items, 1):
        yield item
        print(f"{desc}: {i}/{total}", file=stream, flush=True)


def write_comparison(runs: dict[str, Summary], path: Path) -> Path:
    """One PNG comparing runs (e.g. sync and buffered): accuracy against simulated time and against uploads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, summary in runs.items():
        rows = summary.rounds
        left.plot([r.sim_seconds for r in rows], [r.accuracy for r in rows], marker=".", label=name)
        right.plot([r.uploads for r in rows], [r.accuracy for r in rows], marker=".", label=name)
    left.set(xlabel="simulated seconds", ylabel="test accuracy", title="Accuracy against simulated time")
    right.set(xlabel="updates aggregated", ylabel="test accuracy", title="Accuracy against uploads")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
