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
#: ``rounds.csv``'s neighbouring-relation columns (after ``ROUND_KEYS``): the accountant's epsilon's
#: (``summary.json``'s ``relation``) and the canary audit's (always replace-one), empty without a figure.
RELATION_KEYS = ("relation", "audit_relation")
#: The neighbouring relation of every canary-audit figure (``coordinator.rounds.audit.AUDIT_RELATION``).
AUDIT_RELATION = "replace-one"
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
    ``--audit-canaries``; ``audit`` holds its full figures (:class:`fedge.coordinator.rounds.audit.AuditResult`).
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
        *RELATION_KEYS,
        *EXTRA_KEYS,
        *(f"dropped_{s}" for s in stages),
        *(f"seconds_{s}" for s in timers),
        *(f"accuracy_{g}" for g in groups),
    ]
    relation = summary.extra.get("relation") or ""
    path = out / "rounds.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in summary.rounds:
            w.writerow(
                [
                    *("" if getattr(r, k) is None else getattr(r, k) for k in ROUND_KEYS),
                    relation if r.epsilon is not None else "",
                    AUDIT_RELATION if r.epsilon_lower_bound is not None or r.epsilon_empirical is not None else "",
                    *("" if getattr(r, k) is None else getattr(r, k) for k in EXTRA_KEYS),
                    *(r.dropped_per_stage.get(s, "") for s in stages),
                    *(r.seconds_per_stage.get(s, "") for s in timers),
                    *(r.group_accuracy.get(g, "") for g in groups),
                ]
            )
    return path


def write_plots(summary: Summary, out: Path) -> list[Path]:
    """Write the PNG plots this run has data for (:func:`figures`); return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out / name) for name, fig in figures(summary).items()]


#: Labels of the data-size quartile groups (``size:q1`` ... ``size:q4``).
SIZE_QUARTILES = {"q1": "Q1 (fewest examples)", "q2": "Q2", "q3": "Q3", "q4": "Q4 (most examples)"}
ACCURACY_LABEL = "test accuracy (fraction correct)"
_CHANCE_STYLE = {"linestyle": "--", "color": "0.45", "linewidth": 1.2}


def num_classes(summary: Summary) -> int | None:
    """The data set's number of classes (``summary.json``'s ``data.num_classes``), None when unknown."""
    data = summary.extra.get("data")
    n = data.get("num_classes") if isinstance(data, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else None


def group_label(group: str, summary: Summary) -> str:
    """A client group as a reader says it: ``profile:pi4`` -> ``pi4 (n=12)`` (n: the profile's devices
    in the population, when the summary names them), ``size:q1`` -> ``Q1 (fewest examples)``."""
    kind, _, name = group.partition(":")
    if kind == "profile":
        pop = summary.extra.get("population")
        counts = dict(zip(pop.get("profiles", []), pop.get("counts", []))) if isinstance(pop, dict) else {}
        return f"{name} (n={counts[name]})" if name in counts else name
    if kind == "size":
        return SIZE_QUARTILES.get(name, f"data size {name}")
    return group.replace(":", " ")


def figures(summary: Summary) -> dict[str, Any]:
    """The plots this run has data for, as matplotlib figures keyed by file name (in :data:`PLOTS` order).

    Accuracy against rounds; accuracy against ε only when some round has a finite ε (DP on); accuracy
    per client group at the last round when groups were evaluated; the accountant's ε against the
    canary audit only when either has a value. Accuracy plots carry a dashed chance level
    (1/``num_classes``) when the summary names the class count; every legend sits outside the axes.
    """
    out: dict[str, Any] = {}
    rows = summary.rounds
    if not rows:
        return out
    chance = num_classes(summary)
    relation = summary.extra.get("relation")
    delta = f"δ = {rows[-1].delta:g}" + (f", {relation}" if relation else "")

    fig, ax = _figure((6, 4))
    ax.plot([r.round for r in rows], [r.accuracy for r in rows], marker=".", label="global model")
    _accuracy_axes(ax, chance)
    _round_axis(ax)
    ax.set(xlabel="round", title="Accuracy against rounds")
    _legend_outside(ax)
    out[PLOTS[0]] = fig

    eps = [(r.epsilon, r.accuracy) for r in rows if r.epsilon is not None and math.isfinite(r.epsilon)]
    if eps:
        fig, ax = _figure((6, 4))
        ax.plot([e for e, _ in eps], [a for _, a in eps], marker=".", label="global model")
        _accuracy_axes(ax, chance)
        ax.set(xlabel=f"ε spent so far ({delta})", title="Accuracy against ε")
        _legend_outside(ax)
        out[PLOTS[1]] = fig

    last = rows[-1].group_accuracy
    if last:
        out[PLOTS[2]] = _group_figure(summary, last, chance)

    audit = _audit_figure(summary, delta)
    if audit is not None:
        out[PLOTS[3]] = audit
    return out


def _figure(size: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    """A figure of its own (no pyplot state) with an Agg canvas, and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _round_axis(ax: Any) -> None:
    """Integer ticks on the x axis (rounds, uploads: no round 2.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _accuracy_axes(ax: Any, classes: int | None) -> None:
    """Accuracy from 0 to 1, its axis title, and the dashed chance level 1/classes when known."""
    if classes is not None:
        ax.axhline(1 / classes, **_CHANCE_STYLE, label=f"chance (1/{classes} = {1 / classes:.2g})")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ACCURACY_LABEL)
    ax.grid(alpha=0.3)


def _legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, where it cannot cover a point (savefig keeps it in the image)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize="small")


def _group_figure(summary: Summary, accuracy: dict[str, float], chance: int | None) -> Any:
    """Bars per client group, device profiles and data-size quartiles in two colours, named for a reader."""
    names = sorted(accuracy, key=lambda g: (not g.startswith("profile:"), g))
    kinds = {
        "profile": ("C0", "device profile (n: its devices in the population)"),
        "size": ("C2", "quartile of local data size"),
    }
    fig, ax = _figure((7.5, 4))
    seen: set[str] = set()
    for i, g in enumerate(names):
        kind = g.partition(":")[0]
        colour, label = kinds.get(kind, ("C7", "other group"))
        bars = ax.bar(i, accuracy[g], color=colour, label=None if kind in seen else label)
        ax.bar_label(bars, fmt="%.2f", fontsize="small")
        seen.add(kind)
    ax.set_xticks(range(len(names)), [group_label(g, summary) for g in names], rotation=30, ha="right")
    _accuracy_axes(ax, chance)
    ax.xaxis.grid(False)
    ax.set_axisbelow(True)
    ax.set(xlabel="client group", title=f"Accuracy per client group (round {summary.rounds[-1].round})")
    _legend_outside(ax)
    return fig


def _audit_figure(summary: Summary, delta: str) -> Any | None:
    """Accountant ε against the canary audit's estimate and lower bound, over rounds; None when none has a value."""
    rounds = [r.round for r in summary.rounds]
    series = [
        ("epsilon", f"accountant ε ({summary.extra.get('relation') or 'relation n/a'})", "-"),
        ("epsilon_empirical", f"audit estimate (Gaussian fit, {AUDIT_RELATION})", "--"),
        ("epsilon_lower_bound", f"audit lower bound (95%, {AUDIT_RELATION})", ":"),
    ]
    drawn = []
    for key, label, style in series:
        values = [getattr(r, key) for r in summary.rounds]
        finite = [math.nan if v is None or not math.isfinite(v) else v for v in values]
        if any(not math.isnan(v) for v in finite):
            drawn.append((label, style, finite))
    if not drawn:
        return None
    fig, ax = _figure((6, 4))
    for label, style, values in drawn:
        ax.plot(rounds, values, style, marker=".", label=label)
    _round_axis(ax)
    ax.set(xlabel="round", ylabel=f"ε ({delta})", title="Accountant ε against the canary audit")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def write_report(summary: Summary, out: Path) -> list[Path]:
    """Everything a run leaves in ``out``: summary.json, rounds.csv and the plots it has data for (the files written)."""
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


def comparison_figure(runs: dict[str, Summary]) -> Any:
    """Runs side by side (e.g. sync and buffered): accuracy against simulated time and against uploads.

    One legend for both panels, right of them; the chance level when every run names the same class count.
    """
    fig, (left, right) = _figure((11, 4), ncols=2)
    for name, summary in runs.items():
        rows = summary.rounds
        left.plot([r.sim_seconds for r in rows], [r.accuracy for r in rows], marker=".", label=name)
        right.plot([r.uploads for r in rows], [r.accuracy for r in rows], marker=".", label=name)
    classes = {num_classes(s) for s in runs.values()}
    chance = classes.pop() if len(classes) == 1 else None
    for ax in (left, right):
        _accuracy_axes(ax, chance)
    _round_axis(right)
    left.set(xlabel="simulated time (s)", title="Accuracy against simulated time")
    right.set(xlabel="updates aggregated (count)", title="Accuracy against uploads")
    _legend_outside(right)
    return fig


def write_comparison(runs: dict[str, Summary], path: Path) -> Path:
    """Write :func:`comparison_figure` as one PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(comparison_figure(runs), path)
