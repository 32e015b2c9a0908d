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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlite_utils

from fedge.agent.core.errors import ConfigError
from fedge.coordinator.http_server import BackgroundHTTPServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DashboardConfig:
    """Where the store is and where to listen (port 0: any free port)."""

    db_path: str
    host: str = "127.0.0.1"
    port: int = 8765
    refresh_s: int = 10


class _ReadOnlyStore:
    """Just enough of :class:`coordinator.store.Store` for the release and rollout readers."""

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
    """Every round: status, participants, dropouts, accuracy, loss, epsilon, and the live audit's figures."""
    if "rounds" not in store.db.table_names():
        return []
    out = []
    for r in store.db.query("select * from rounds order by round_id"):
        dropped = json.loads(r.get("dropped") or "{}")
        eps = r.get("epsilon")
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
                "model": r.get("model_out"),
                "epsilon_empirical": r.get("epsilon_empirical"),
                "epsilon_lower_bound": r.get("epsilon_lower_bound"),
            }
        )
    return out


def _audit_cell(r: dict[str, Any]) -> str:
    """The live privacy audit beside epsilon: estimate / lower bound, or '-' for a round without one."""
    est, low = r.get("epsilon_empirical"), r.get("epsilon_lower_bound")
    if low is None:
        return "-"
    return f"{'-' if est is None else _fmt(est)} / {_fmt(low)}"


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


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    chart_id: str,
    title: str,
    xs: Sequence[int],
    series: dict[str, Sequence[float | None]],
    *,
    width: int = 520,
    height: int = 220,
) -> str:
    """An inline SVG line chart of one or more series over rounds; missing values break the line."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 28, 32
    vals = [v for s in series.values() for v in s if v is not None]
    e = html.escape
    parts = [
        f'<svg id="{e(chart_id)}" class="chart" role="img" aria-label="{e(title)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{pad_l}" y="18" class="title">{e(title)}</text>',
    ]
    if not xs or not vals:
        parts.append(f'<text x="{pad_l}" y="{height // 2}">no data yet</text></svg>')
        return "".join(parts)
    lo, hi = min(vals + [0.0]), max(vals)
    hi = hi if hi > lo else lo + 1.0
    x0, x1 = min(xs), max(xs)
    span = (x1 - x0) or 1
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x: float) -> float:
        return pad_l + (x - x0) / span * pw if x1 != x0 else pad_l + pw / 2

    def py(y: float) -> float:
        return pad_t + ph - (y - lo) / (hi - lo) * ph

    parts.append(
        f'<line x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}" class="axis"/>'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + ph}" class="axis"/>'
    )
    for frac in (0.0, 0.5, 1.0):
        y = lo + frac * (hi - lo)
        parts.append(f'<text x="{pad_l - 6}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">{_fmt(y)}</text>')
    for x, anchor in ((x0, "start"), (x1, "end")) if x1 != x0 else ((x0, "middle"),):
        parts.append(f'<text x="{px(x):.1f}" y="{height - 10}" text-anchor="{anchor}" class="tick">round {x}</text>')
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
        parts.append(f'<text x="{pad_l + 8 + 110 * i}" y="{pad_t + 12}" class="legend s{i}">{e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    chart_id: str,
    title: str,
    xs: Sequence[int],
    series: dict[str, Sequence[int]],
    *,
    width: int = 520,
    height: int = 220,
) -> str:
    """An inline SVG grouped bar chart of counts per round."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 28, 32
    e = html.escape
    parts = [
        f'<svg id="{e(chart_id)}" class="chart" role="img" aria-label="{e(title)}" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{pad_l}" y="18" class="title">{e(title)}</text>',
    ]
    top = max([v for s in series.values() for v in s] + [0])
    if not xs or top == 0:
        parts.append(f'<text x="{pad_l}" y="{height // 2}">no data yet</text></svg>')
        return "".join(parts)
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    slot = pw / len(xs)
    bw = max(1.0, slot * 0.8 / len(series))
    parts.append(
        f'<line x1="{pad_l}" y1="{pad_t + ph}" x2="{pad_l + pw}" y2="{pad_t + ph}" class="axis"/>'
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" text-anchor="end" class="tick">{top}</text>'
    )
    for j, x in enumerate(xs):
        for i, (name, ys) in enumerate(series.items()):
            h = ys[j] / top * ph
            bx = pad_l + j * slot + slot * 0.1 + i * bw
            parts.append(
                f'<rect x="{bx:.1f}" y="{pad_t + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" class="s{i}">'
                f"<title>{e(name)} round {x}: {ys[j]}</title></rect>"
            )
    parts.append(
        f'<text x="{pad_l}" y="{height - 10}" class="tick">round {xs[0]}</text>'
        f'<text x="{pad_l + pw}" y="{height - 10}" text-anchor="end" class="tick">round {xs[-1]}</text>'
    )
    for i, name in enumerate(series):
        parts.append(f'<text x="{pad_l + 8 + 110 * i}" y="{pad_t + 12}" class="legend s{i}">{e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f3f3f3}.charts{display:flex;flex-wrap:wrap;gap:1rem}.chart{border:1px solid #ddd;background:#fff}
.title{font-weight:600;font-size:13px}.tick{font-size:10px;fill:#555}.legend{font-size:11px}.axis{stroke:#888}
polyline.s0,circle.s0{stroke:#1f77b4}polyline.s1,circle.s1{stroke:#ff7f0e}circle.s0{fill:#1f77b4}circle.s1{fill:#ff7f0e}
polyline{stroke-width:2}rect.s0{fill:#1f77b4}rect.s1{fill:#ff7f0e}text.s0{fill:#1f77b4}text.s1{fill:#ff7f0e}
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
    failed = p["failed"] + p["timed_out"]
    back = p["rolled_back"] + p["rollback_sent"]
    parts = [("ok", p["installed"]), ("failed", failed), ("back", back), ("skipped", p["skipped"])]
    segments = "".join(f'<span class="{cls}" style="width:{100.0 * k / n:.0f}%"></span>' for cls, k in parts if k and n)
    why = [f"{k} {what}" for what, k in (("install failed", p["failed"]), ("timed out", p["timed_out"])) if k]
    failures = f"{failed} failed ({', '.join(why)})" if failed else "0 failed"
    skipped = f", {p['skipped']} skipped" if p["skipped"] else ""
    pending = p["sent"] + p.get("waiting", 0)
    return (
        f'<div class="phase">phase {p["phase"]} ({_fmt(p["percent"])}%): <span class="bar">{segments}</span>'
        f"{p['installed']} installed, {failures}, {pending} pending, {back} rolled back{skipped} of {n}</div>"
    )


def render_page(
    rounds: list[dict[str, Any]], releases: list[dict[str, Any]], rollouts: list[dict[str, Any]], refresh_s: int = 10
) -> str:
    """The whole page as HTML (pure: tests and the server call it with the same data)."""
    e = html.escape
    xs = [r["round"] for r in rounds]
    audited = any(r.get("epsilon_lower_bound") is not None for r in rounds)
    charts = "".join(
        [
            line_chart(
                "chart-accuracy", "Accuracy of the global model", xs, {"accuracy": [r["accuracy"] for r in rounds]}
            ),
            bar_chart(
                "chart-participants",
                "Participants and dropouts",
                xs,
                {"participants": [r["participants"] for r in rounds], "dropped": [r["dropped"] for r in rounds]},
            ),
            line_chart(
                "chart-epsilon",
                "Privacy spent (epsilon)",
                xs,
                {"epsilon": [r["epsilon"] for r in rounds]}
                | (
                    {
                        "audit estimate": [r["epsilon_empirical"] for r in rounds],
                        "audit 95% lower bound": [r["epsilon_lower_bound"] for r in rounds],
                    }
                    if audited
                    else {}
                ),
            ),
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
                "epsilon",
                "audit (estimate / 95% lower bound)",
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


class _Handler(BaseHTTPRequestHandler):
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
                    rounds_data(store), releases_data(store), rollouts_data(store), self.server.config.refresh_s
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

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("dashboard: " + fmt, *args)


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], config: DashboardConfig) -> None:
        self.config = config
        super().__init__(address, _Handler)


class Dashboard(BackgroundHTTPServer):
    """The dashboard server: ``start()`` (background thread), ``url``, ``stop()``; or ``with``."""

    def __init__(self, config: DashboardConfig) -> None:
        super().__init__("dashboard", config.host, config.port, lambda address: _Server(address, config))
        self.config = config
