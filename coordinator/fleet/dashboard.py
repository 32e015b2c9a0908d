"""A read-only local web page over the coordinator's store: rounds as charts, releases, rollouts by phase.

Served by the standard library (``http.server``) on 127.0.0.1 by default; the database is opened
read-only for every request, so the page can run beside ``serve``. Charts are inline SVG drawn
here (no JavaScript, nothing fetched from anywhere). The same data is at ``/api/rounds``,
``/api/releases`` and ``/api/rollouts`` as JSON.
"""

from __future__ import annotations

import html
import json
import logging
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlite_utils

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.http_server import BackgroundHTTPServer, QuietHandler

#: The neighbouring relation of the service's epsilon (``service.SERVICE_RELATION``, Poisson-sampled
#: cohorts) and of the live audit's figures (``rounds.audit.AUDIT_RELATION``), printed beside them;
#: spelled out so the page does not import the accountant (tests check they agree).
EPSILON_RELATION = "add-or-remove-one"
AUDIT_RELATION = "replace-one"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DashboardConfig:
    """Where the store is and where to listen (port 0: any free port)."""

    db_path: str
    host: str = "127.0.0.1"
    port: int = 8765
    refresh_s: int = 10


class _ReadOnlyStore:
    """Just enough of :class:`fedge.coordinator.store.Store` for the release and rollout readers."""

    def __init__(self, path: str) -> None:
        if not Path(path).exists():
            raise ConfigError(f"no coordinator database at {path}")
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)

    def device(self, device_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from devices where device_id = ?", [device_id]))
        return rows[0] if rows else None

    def close(self) -> None:
        self.db.conn.close()


# ---------------------------------------------------------------------- data


def rounds_data(store: Any) -> list[dict[str, Any]]:
    """Every round: status, participants, dropouts, accuracy, loss, epsilon and delta, the planned DP
    mode, and the live audit's figures."""
    if "rounds" not in store.db.table_names():
        return []
    out = []
    for r in store.db.query("select * from rounds order by round_id"):
        dropped = json.loads(r.get("dropped") or "{}")
        eps = r.get("epsilon")
        plan = json.loads(r.get("plan") or "{}")
        privacy = plan.get("privacy") if isinstance(plan, dict) else None
        out.append(
            {
                "round": r["round_id"],
                "status": r["status"],
                "reason": r.get("reason") or "",
                "participants": r.get("participants") or 0,
                "dropped": int(sum(dropped.values())),
                "accuracy": r.get("accuracy"),
                "loss": r.get("loss"),
                "epsilon": eps if eps is not None and math.isfinite(eps) else None,
                "delta": r.get("delta"),
                # the round's DP mode as planned (off, local, distributed); None before it had a plan
                "dp": privacy.get("mode") if isinstance(privacy, dict) else None,
                "model": r.get("model_out"),
                "relation": EPSILON_RELATION if eps is not None else None,
                "epsilon_empirical": r.get("epsilon_empirical"),
                "epsilon_lower_bound": r.get("epsilon_lower_bound"),
                "audit_relation": AUDIT_RELATION if r.get("epsilon_lower_bound") is not None else None,
            }
        )
    return out


def _audit_cell(r: dict[str, Any]) -> str:
    """The live privacy audit beside epsilon: estimate / lower bound, or '-' for a round without one."""
    est, low = r.get("epsilon_empirical"), r.get("epsilon_lower_bound")
    if low is None:
        return "-"
    return f"{'-' if est is None else _fmt(est)} / {_fmt(low)}"


def class_count(store: Any) -> int | None:
    """How many classes the fleet's model tells apart, for the accuracy chart's chance level: from the
    metadata of the latest round's model architecture (a built model's as imported into the store, else
    the zoo's sidecar). None when unknown, or when its accuracy is not a match of one class in n (a
    built model trained on float targets)."""
    tables = set(store.db.table_names())
    if not {"rounds", "models"} <= tables:
        return None
    rows = list(
        store.db.query(
            "select m.architecture from rounds r join models m on m.version = r.model_in"
            " order by r.round_id desc limit 1"
        )
    )
    if not rows:
        return None
    arch = rows[0]["architecture"]
    meta: bytes | None = None
    if "model_files" in tables:
        files = list(store.db.query("select meta from model_files where architecture = ?", [arch]))
        meta = files[0]["meta"] if files else None
    if meta is None:
        from fedge.agent.training.models import MODELS_DIR, list_models

        if arch not in list_models():
            return None
        meta = (MODELS_DIR / f"{arch}.json").read_bytes()
    try:
        doc = json.loads(meta)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("loss", "softmax_cross_entropy") != "softmax_cross_entropy":
        return None
    n = doc.get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else None


def releases_data(store: Any) -> list[dict[str, Any]]:
    from fedge.coordinator.fleet.releases import list_releases

    if "releases" not in store.db.table_names():
        return []
    return [r.to_dict() for r in list_releases(store)]


def rollouts_data(store: Any) -> list[dict[str, Any]]:
    from fedge.coordinator.fleet.controller import list_rollouts

    if "rollouts" not in store.db.table_names():
        return []
    return [v.to_dict() for v in list_rollouts(store)]


# ---------------------------------------------------------------------- SVG charts

#: The plot area's margins: room for the y tick labels and the rotated y title on the left, the
#: title and the legend row above (so the legend never lies over the data), the x ticks and title below.
PAD_L, PAD_R, PAD_T, PAD_B = 60, 14, 48, 44
#: Rough width of one legend character at 11px, for laying the legend row out on the server.
_LEGEND_CHAR_PX = 7.0


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _tick_text(v: float) -> str:
    """A tick value as written: ``3``, ``0.2``, ``2.5`` (no float noise such as ``0.30000000000000004``)."""
    return f"{round(v, 9):g}"


def nice_ticks(lo: float, hi: float, *, integer: bool = False, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 (2.5 too unless ``integer``) times a power
    of ten, about ``target`` of them, the first at or below ``lo`` and the last at or above ``hi``.
    With ``integer`` every tick is a whole number (rounds, device counts)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw)
    if integer:
        step = max(1.0, round(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 9) for k in range(first, last + 1)]


def _round_ticks(xs: Sequence[int]) -> list[int]:
    """Whole-round ticks within the rounds shown (never outside them: the axis spans the data)."""
    x0, x1 = min(xs), max(xs)
    return [int(t) for t in nice_ticks(x0, x1, integer=True, target=6) if x0 <= t <= x1] or [x0]


def _svg_open(chart_id: str, title: str, width: int, height: int) -> list[str]:
    e = html.escape
    return [
        f'<svg id="{e(chart_id)}" class="chart" role="img" aria-label="{e(title)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{PAD_L}" y="16" class="title">{e(title)}</text>',
    ]


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    """The legend as one row between the title and the plot area: ``(swatch, name)`` with swatch
    ``line`` (a line series), ``bar`` (a bar series) or ``chance`` (the dashed chance level)."""
    e = html.escape
    parts, x, y = ['<g class="legend">'], float(PAD_L), 34
    for i, (swatch, name) in enumerate(entries):
        if swatch == "chance":
            parts.append(f'<line x1="{x:.0f}" y1="{y - 4}" x2="{x + 16:.0f}" y2="{y - 4}" class="chance"/>')
            cls = "chance-label"
        elif swatch == "bar":
            parts.append(f'<rect x="{x:.0f}" y="{y - 9}" width="10" height="10" class="s{i}"/>')
            cls = f"s{i}"
        else:
            parts.append(f'<line x1="{x:.0f}" y1="{y - 4}" x2="{x + 16:.0f}" y2="{y - 4}" class="swatch s{i}"/>')
            cls = f"s{i}"
        parts.append(f'<text x="{x + 20:.0f}" y="{y}" class="legend {cls}">{e(name)}</text>')
        x += 20 + _LEGEND_CHAR_PX * len(name) + 16
    parts.append("</g>")
    return "".join(parts)


def _axes(
    width: int,
    height: int,
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    x_title: str,
    y_title: str,
) -> str:
    """Axis lines, light grid lines at the y ticks, tick labels (``class="tick x"`` / ``"tick y"``) and
    the two axis titles (``class="axis-title x"`` / ``"axis-title y"``, the latter turned upright)."""
    e = html.escape
    bottom, right = height - PAD_B, width - PAD_R
    parts = [
        f'<line x1="{PAD_L}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>'
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{bottom}" class="axis"/>'
    ]
    for py, label in y_ticks:
        parts.append(
            f'<line x1="{PAD_L}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" class="grid"/>'
            f'<text x="{PAD_L - 6}" y="{py + 3.5:.1f}" text-anchor="end" class="tick y">{e(label)}</text>'
        )
    for px, label in x_ticks:
        parts.append(
            f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 4}" class="axis"/>'
            f'<text x="{px:.1f}" y="{bottom + 15}" text-anchor="middle" class="tick x">{e(label)}</text>'
        )
    mid_y = (PAD_T + bottom) / 2
    parts.append(
        f'<text x="{(PAD_L + right) / 2:.1f}" y="{height - 8}" text-anchor="middle" class="axis-title x">{e(x_title)}</text>'
        f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" transform="rotate(-90 14 {mid_y:.1f})"'
        f' class="axis-title y">{e(y_title)}</text>'
    )
    return "".join(parts)


def line_chart(
    chart_id: str,
    title: str,
    xs: Sequence[int],
    series: dict[str, Sequence[float | None]],
    *,
    x_title: str = "round",
    y_title: str = "",
    y_range: tuple[float, float] | None = None,
    chance: int | None = None,
    width: int = 520,
    height: int = 240,
) -> str:
    """An inline SVG line chart of one or more series over rounds; missing values break the line.

    Rounds get whole-number ticks; the y axis runs over ``y_range`` (else from 0, or the lowest value,
    to a round tick above the highest). ``chance``: the number of classes, drawn as a dashed level at
    1/chance with its own legend entry. The legend is a row above the plot area."""
    vals = [v for s in series.values() for v in s if v is not None]
    e = html.escape
    parts = _svg_open(chart_id, title, width, height)
    if not xs or not vals:
        parts.append(f'<text x="{PAD_L}" y="{height // 2}">no data yet</text></svg>')
        return "".join(parts)
    lo, hi = y_range if y_range is not None else (min(vals + [0.0]), max(vals))
    y_ticks = nice_ticks(lo, hi if hi > lo else lo + 1.0)
    lo, hi = min(y_ticks[0], lo), max(y_ticks[-1], hi)
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1
    pw, ph = width - PAD_L - PAD_R, height - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / span * pw if x1 != x0 else PAD_L + pw / 2

    def py(y: float) -> float:
        return PAD_T + ph - (y - lo) / (hi - lo) * ph

    parts.append(
        _axes(
            width,
            height,
            [(px(x), str(x)) for x in _round_ticks(xs)],
            [(py(t), _tick_text(t)) for t in y_ticks],
            x_title,
            y_title,
        )
    )
    entries = [("line", name) for name in series]
    if chance is not None and lo <= 1 / chance <= hi:
        level = py(1 / chance)
        parts.append(
            f'<line x1="{PAD_L}" y1="{level:.1f}" x2="{PAD_L + pw}" y2="{level:.1f}" class="chance">'
            f"<title>chance level: 1/{chance} = {_fmt(1 / chance)}</title></line>"
        )
        entries.append(("chance", f"chance (1/{chance})"))
    for i, (name, ys) in enumerate(series.items()):
        segments: list[list[str]] = [[]]
        for x, y in zip(xs, ys):
            if y is None:
                segments.append([])
                continue
            segments[-1].append(f"{px(x):.1f},{py(y):.1f}")
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" class="s{i}">'
                f"<title>{e(name)} round {x}: {_fmt(y)}</title></circle>"
            )
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline points="{" ".join(seg)}" class="s{i}" fill="none"/>')
    parts.append(_legend(entries))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    chart_id: str,
    title: str,
    xs: Sequence[int],
    series: dict[str, Sequence[int]],
    *,
    x_title: str = "round",
    y_title: str = "",
    width: int = 520,
    height: int = 240,
) -> str:
    """An inline SVG grouped bar chart of counts per round, with whole-number ticks on both axes."""
    e = html.escape
    parts = _svg_open(chart_id, title, width, height)
    top = max([v for s in series.values() for v in s] + [0])
    if not xs or top == 0:
        parts.append(f'<text x="{PAD_L}" y="{height // 2}">no data yet</text></svg>')
        return "".join(parts)
    y_ticks = nice_ticks(0, top, integer=True)
    scale = y_ticks[-1]  # the top tick, at or above the highest bar
    pw, ph = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    slot = pw / len(xs)
    bw = max(1.0, slot * 0.8 / len(series))
    where = {x: PAD_L + j * slot + slot / 2 for j, x in enumerate(xs)}
    parts.append(
        _axes(
            width,
            height,
            [(where[x], str(x)) for x in _round_ticks(xs) if x in where],
            [(PAD_T + ph - t / scale * ph, _tick_text(t)) for t in y_ticks],
            x_title,
            y_title,
        )
    )
    for j, x in enumerate(xs):
        for i, (name, ys) in enumerate(series.items()):
            h = ys[j] / scale * ph
            bx = PAD_L + j * slot + slot * 0.1 + i * bw
            parts.append(
                f'<rect x="{bx:.1f}" y="{PAD_T + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" class="column s{i}">'
                f"<title>{e(name)} round {x}: {ys[j]}</title></rect>"
            )
    parts.append(_legend([("bar", name) for name in series]))
    parts.append("</svg>")
    return "".join(parts)


def epsilon_placeholder(chart_id: str, text: str) -> str:
    """What stands in for the ε chart when there is no ε to draw: one short line, no empty axes."""
    return f'<div id="{html.escape(chart_id)}" class="chart placeholder">{html.escape(text)}</div>'


# ---------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}.charts{display:flex;flex-wrap:wrap;gap:1rem;margin-bottom:1rem}.chart{border:1px solid #ddd;background:#fff}
.title{font-weight:600;font-size:13px}.tick{font-size:10px;fill:#555}.legend{font-size:11px}.axis{stroke:#888}
.axis-title{font-size:11px;fill:#333}.grid{stroke:#eee}.chance{stroke:#777;stroke-width:1.5;stroke-dasharray:5 4}
text.chance-label{fill:#555}.placeholder{padding:1rem;width:12rem;color:#555;font-size:.9rem}
polyline.s0,circle.s0,line.s0{stroke:#1f77b4}polyline.s1,circle.s1,line.s1{stroke:#ff7f0e}
polyline.s2,circle.s2,line.s2{stroke:#2ca02c}circle.s0{fill:#1f77b4}circle.s1{fill:#ff7f0e}circle.s2{fill:#2ca02c}
polyline,line.swatch{stroke-width:2}rect.s0{fill:#1f77b4}rect.s1{fill:#ff7f0e}
text.s0{fill:#1f77b4}text.s1{fill:#ff7f0e}text.s2{fill:#2ca02c}
.bar{display:inline-block;width:120px;height:10px;background:#eee;vertical-align:middle;margin-right:.3rem}
.bar span{display:inline-block;height:10px;vertical-align:top}.bar .ok{background:#2ca02c}
.bar .failed{background:#d62728}.bar .back{background:#ff7f0e}.bar .skipped{background:#aaa}.status-rolled_back,.status-aborted{color:#b00}
.status-completed{color:#070}
"""


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    if not rows:
        return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody><tr><td colspan="{len(headers)}">{e(empty)}</td></tr></tbody></table>'
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _phase_cell(p: dict[str, Any]) -> str:
    """One phase: a bar split into installed (green), failed (red: install failed or no report in time),
    rolled back (amber) and skipped (grey), with the counts; what is still pending is the bar's empty rest."""
    n = p["devices"]
    failed = p["failed"] + p["timed_out"] + p.get("rollback_failed", 0)
    back = p["rolled_back"] + p["rollback_sent"]
    parts = [("ok", p["installed"]), ("failed", failed), ("back", back), ("skipped", p["skipped"])]
    segments = "".join(f'<span class="{cls}" style="width:{100.0 * k / n:.0f}%"></span>' for cls, k in parts if k and n)
    kinds = [("install failed", p["failed"]), ("timed out", p["timed_out"])]
    kinds.append(("could not roll back", p.get("rollback_failed", 0)))
    why = [f"{k} {what}" for what, k in kinds if k]
    failures = f"{failed} failed ({', '.join(why)})" if failed else "0 failed"
    skipped = f", {p['skipped']} skipped" if p["skipped"] else ""
    pending = p["sent"] + p.get("waiting", 0)
    return (
        f'<div class="phase">phase {p["phase"]} ({_fmt(p["percent"])}%): <span class="bar">{segments}</span>'
        f"{p['installed']} installed, {failures}, {pending} pending, {back} rolled back{skipped} of {n}</div>"
    )


def _epsilon_chart(rounds: list[dict[str, Any]], xs: list[int]) -> str:
    """ε so far (and the live audit's figures) over rounds; one line of text when there is nothing to
    draw: ``DP off: no ε`` unless some round was planned with DP (then no ε has been spent yet)."""
    series: dict[str, Sequence[float | None]] = {
        name: values
        for name, values in (
            (f"ε (accountant, {EPSILON_RELATION})", [r["epsilon"] for r in rounds]),
            (f"audit estimate ({AUDIT_RELATION})", [r.get("epsilon_empirical") for r in rounds]),
            (f"audit 95% lower bound ({AUDIT_RELATION})", [r.get("epsilon_lower_bound") for r in rounds]),
        )
        if any(v is not None for v in values)
    }
    if rounds and not series:
        planned = any(r.get("dp") not in (None, "off") for r in rounds)
        return epsilon_placeholder("chart-epsilon", "DP on: no ε spent yet" if planned else "DP off: no ε")
    deltas = [r["delta"] for r in rounds if r.get("delta")]
    title = f"Privacy spent (δ = {deltas[-1]:g})" if deltas else "Privacy spent"
    return line_chart("chart-epsilon", title, xs, series, y_title="ε spent so far")


def render_page(
    rounds: list[dict[str, Any]],
    releases: list[dict[str, Any]],
    rollouts: list[dict[str, Any]],
    refresh_s: int = 10,
    *,
    num_classes: int | None = None,
) -> str:
    """The whole page as HTML (pure: tests and the server call it with the same data).

    ``num_classes`` (:func:`class_count`) draws the chance level on the accuracy chart; unknown, none is drawn."""
    e = html.escape
    xs = [r["round"] for r in rounds]
    charts = "".join(
        [
            line_chart(
                "chart-accuracy",
                "Accuracy of the global model (held-out data)",
                xs,
                {"accuracy": [r["accuracy"] for r in rounds]},
                y_title="fraction correct",
                y_range=(0.0, 1.0),
                chance=num_classes,
            ),
            bar_chart(
                "chart-participants",
                "Participants and dropouts",
                xs,
                {"participants": [r["participants"] for r in rounds], "dropped": [r["dropped"] for r in rounds]},
                y_title="devices",
            ),
            _epsilon_chart(rounds, xs),
        ]
    )
    round_rows = [
        [
            str(r["round"]),
            e(r["status"]),
            str(r["participants"]),
            str(r["dropped"]),
            "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}",
            "-" if r["epsilon"] is None else _fmt(r["epsilon"]),
            _audit_cell(r),
            e(r["reason"]),
        ]
        for r in reversed(rounds[-50:])
    ]
    release_rows = [
        [
            e(r["version"]),
            e(r["parent"] or "-"),
            e(r["architecture"]),
            f"<code>{e(r['sha256'][:12])}</code>",
            e(", ".join(f"{k} {_fmt(v)}" for k, v in r["metrics"].items()) or "-"),
            e(", ".join(map(str, r["produced_by"])) or r["source"]),
            f"<code>{e(r['key_id'])}</code>",
        ]
        for r in reversed(releases)
    ]
    rollout_rows = [
        [
            e(r["rollout_id"]),
            e(r["version"]),
            e(r["target"]),
            f'<span class="status-{e(r["status"])}">{e(r["status"])}</span>',
            f"{r['phase']} of {len(r['phases'])}",
            "".join(_phase_cell(p) for p in r["phases"]),
            e(r["reason"]),
        ]
        for r in reversed(rollouts)
    ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{int(refresh_s)}">'
        f"<title>fedge coordinator</title><style>{_CSS}</style></head><body>"
        f"<h1>fedge coordinator</h1><p>{len(rounds)} rounds, {len(releases)} releases, {len(rollouts)} rollouts."
        f' JSON: <a href="/api/rounds">rounds</a>, <a href="/api/releases">releases</a>, <a href="/api/rollouts">rollouts</a>.</p>'
        f'<h2>Rounds</h2><div class="charts">{charts}</div>'
        + _table(
            "rounds",
            [
                "round",
                "status",
                "participants",
                "dropped",
                "accuracy",
                f"epsilon ({EPSILON_RELATION})",
                f"audit, {AUDIT_RELATION} (estimate / 95% lower bound)",
                "reason",
            ],
            round_rows,
            "no rounds yet",
        )
        + "<h2>Rollouts</h2>"
        + _table(
            "rollouts",
            ["rollout", "release", "target", "status", "phase", "progress by phase", "reason"],
            rollout_rows,
            "no rollouts yet",
        )
        + "<h2>Releases</h2>"
        + _table(
            "releases",
            ["version", "parent", "architecture", "sha256", "metrics", "rounds / source", "key"],
            release_rows,
            "no releases yet",
        )
        + "</body></html>"
    )


# ---------------------------------------------------------------------- server


class _Handler(QuietHandler):
    log_name = "dashboard"
    extra_headers = (("Cache-Control", "no-store"),)
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            store = _ReadOnlyStore(self.server.config.db_path)
        except (ConfigError, sqlite3.Error) as e:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", str(e).encode())
        try:
            if path == "/":
                body = render_page(
                    rounds_data(store),
                    releases_data(store),
                    rollouts_data(store),
                    self.server.config.refresh_s,
                    num_classes=class_count(store),
                )
                return self._send(HTTPStatus.OK, "text/html; charset=utf-8", body.encode())
            api = {"/api/rounds": rounds_data, "/api/releases": releases_data, "/api/rollouts": rollouts_data}.get(path)
            if api is None:
                return self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")
            return self._send(HTTPStatus.OK, "application/json", json.dumps(api(store), indent=1).encode())
        except sqlite3.Error as e:
            log.warning("dashboard query failed: %s", e)
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"database busy or not migrated")
        finally:
            store.close()

    def do_POST(self) -> None:  # noqa: N802
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"read-only")

    do_PUT = do_DELETE = do_PATCH = do_POST


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], config: DashboardConfig) -> None:
        self.config = config
        super().__init__(address, _Handler)


class Dashboard(BackgroundHTTPServer):
    """The dashboard server: ``start()`` (background thread), ``url``, ``stop()``; or ``with``."""

    def __init__(self, config: DashboardConfig) -> None:
        super().__init__("dashboard", config.host, config.port, lambda address: _Server(address, config))
        self.config = config
