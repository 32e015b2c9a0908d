"""The dashboard: JSON endpoints over a real store, and the page rendered by headless Chromium
(Debian's ``chromium``, installed by ``.ci/run``) with its round charts and rollout table: axis
titles, whole-round ticks, the chance level, a legend clear of the data (measured by the browser's
layout), and one line instead of an empty ε chart when DP is off."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from fedge.coordinator.fleet.controller import create_rollout
from fedge.coordinator.fleet.dashboard import (
    Dashboard,
    DashboardConfig,
    class_count,
    line_chart,
    nice_ticks,
    render_page,
)
from fedge.coordinator.fleet.rollouts import Criteria, Spec, Target
from fedge.coordinator.store import Store
from tests.fleet_fixtures import ARCH, CLASSES, Fleet, put_release, truth

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A coordinator store with 6 rounds, two releases and a staged rollout stopped after its first phase."""
    tmp = tmp_path_factory.mktemp("dash")
    fleet = Fleet(tmp, 10)
    store, clock = fleet.store, fleet.clock
    store.put_model("logreg-r0", truth(), architecture=ARCH, now=clock())  # the zoo's logreg: 10 classes
    for rid in range(1, 7):
        store.open_round(rid, goal=10, model_in="logreg-r0", plan={"privacy": {"mode": "distributed"}}, now=clock())
        store.finish_round(
            rid,
            "completed" if rid != 4 else "abandoned",
            "ok" if rid != 4 else "check-in: 1 eligible",
            clock() + 5,
            participants=10 - rid % 3,
            dropped={"masked_input": rid % 3},
            accuracy=0.5 + 0.07 * rid if rid != 4 else None,
            epsilon=0.4 * rid,
            delta=1e-5,
        )
    put_release(store, "logreg-r5", truth(), None, clock)
    create_rollout(
        store,
        Spec(
            "canary-1",
            "logreg-r5",
            Target(device_class="pi4"),
            phases=(0.2, 0.6, 1.0),
            criteria=Criteria(min_executed=2),
            phase_wait_s=3600,
        ),
        clock=clock,
    )
    fleet.pump(rounds=3)  # phase 1 (2 devices) installs; phase 2 waits for the soak time
    path = str(tmp / "coordinator.db")
    fleet.close()
    return path


@pytest.fixture(scope="module")
def dashboard(populated):
    with Dashboard(DashboardConfig(db_path=populated, port=0)) as d:
        yield d


@pytest.fixture(scope="module")
def dp_off_dashboard(tmp_path_factory):
    """A store of three rounds trained without DP: no epsilon anywhere."""
    path = str(tmp_path_factory.mktemp("dash-dp-off") / "coordinator.db")
    store = Store(path)
    store.put_model("logreg-r0", truth(), architecture=ARCH, now=1.0)
    for rid in range(1, 4):
        store.open_round(rid, goal=4, model_in="logreg-r0", plan={"privacy": {"mode": "off"}}, now=float(rid))
        store.finish_round(rid, "completed", "ok", rid + 0.5, participants=4, dropped={}, accuracy=0.3 + 0.1 * rid)
    store.close()
    with Dashboard(DashboardConfig(db_path=path, port=0)) as d:
        yield d


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_json_endpoints_carry_rounds_releases_and_rollout_phases(dashboard):
    status, body = _get(dashboard.url + "api/rounds")
    rounds = json.loads(body)
    assert status == 200 and [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert rounds[3]["accuracy"] is None and rounds[5]["epsilon"] == pytest.approx(2.4)
    releases = json.loads(_get(dashboard.url + "api/releases")[1])
    assert [r["version"] for r in releases] == ["logreg-r5"]
    (rollout,) = json.loads(_get(dashboard.url + "api/rollouts")[1])
    assert rollout["status"] == "active" and rollout["phase"] == 1
    assert [p["devices"] for p in rollout["phases"]] == [2, 4, 4]
    assert rollout["phases"][0]["installed"] == 2
    assert _get(dashboard.url + "nope")[0] == 404
    req = urllib.request.Request(dashboard.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405  # read-only


def test_page_escapes_what_it_shows():
    page = render_page(
        [],
        [],
        [
            {
                "rollout_id": "<script>x</script>",
                "version": "v",
                "target": "t",
                "status": "active",
                "phase": 1,
                "phases": [],
                "reason": "",
            }
        ],
    )
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert "no data yet" in line_chart("c", "t", [], {"a": []})


#: Injected into a copy of the served page (which has no JavaScript of its own): measures what
#: Chromium laid out and writes it into the DOM as JSON, for ``--dump-dom`` to carry back.
LAYOUT_PROBE = """<script>
(() => {
  const box = (el) => el.getBoundingClientRect();
  const meets = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const out = {};
  for (const svg of document.querySelectorAll("svg.chart")) {
    const frame = box(svg);
    const legend = svg.querySelector("g.legend");
    const marks = [...svg.querySelectorAll(":scope > circle, :scope > rect.column, :scope > polyline, :scope > line.chance")];
    const texts = [...svg.querySelectorAll("text")];
    // the plot area: from the y axis to the x axis's right end, the top of the y axis to the x axis
    const [xAxis, yAxis] = [...svg.querySelectorAll(":scope > line.axis")].map(box);
    const inside = (b) =>
      b.left >= yAxis.left - 3.5 && b.right <= xAxis.right + 3.5 && b.top >= yAxis.top - 3.5 && b.bottom <= xAxis.bottom + 3.5;
    const clash = [];
    texts.forEach((a, i) => texts.slice(i + 1).forEach((b) => {
      if (meets(box(a), box(b))) clash.push([a.textContent, b.textContent]);
    }));
    out[svg.id] = {
      marks: marks.length,
      legend_over_data: legend ? marks.filter((m) => meets(box(legend), box(m))).length : null,
      marks_off_the_plot: marks.filter((m) => !inside(box(m))).map((m) => m.outerHTML.slice(0, 80)),
      marks_over_text: marks.filter((m) => texts.some((t) => meets(box(t), box(m)))).length,
      text_outside: texts.filter((t) => {
        const b = box(t);
        return b.left < frame.left || b.right > frame.right || b.top < frame.top || b.bottom > frame.bottom;
      }).map((t) => t.textContent),
      text_clash: clash,
    };
  }
  const pre = document.createElement("pre");
  pre.id = "layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def _chromium(flags, *args, timeout=90):
    return subprocess.run(flags + list(args), capture_output=True, text=True, timeout=timeout, check=True).stdout


def _svg(dom: str, chart_id: str) -> str:
    chart = dom[dom.index(f'<svg id="{chart_id}"') :]
    return chart[: chart.index("</svg>")]


def _texts(svg: str, cls: str) -> list[str]:
    return re.findall(rf'<text\b[^>]*\bclass="{cls}"[^>]*>([^<]*)</text>', svg)


@pytest.fixture
def chromium_flags(tmp_path):
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)")
def test_headless_chromium_renders_the_round_chart_and_rollout_table(dashboard, chromium_flags, tmp_path):
    flags = chromium_flags
    dom = _chromium(flags, "--dump-dom", dashboard.url)
    # the browser parsed the SVG charts into the DOM: the accuracy line has its 5 points (round 4 has none)
    chart = _svg(dom, "chart-accuracy")
    assert chart.count("<circle") == 5 and "<polyline" in chart
    assert 'id="chart-participants"' in dom and 'id="chart-epsilon"' in dom
    # every chart: both axes titled, whole-round ticks along x (round 4 included: it ran)
    titles = {}
    for chart_id in ("chart-accuracy", "chart-participants", "chart-epsilon"):
        svg = _svg(dom, chart_id)
        (x_title,), (y_title,) = _texts(svg, "axis-title x"), _texts(svg, "axis-title y")
        titles[chart_id] = y_title
        assert x_title == "round", chart_id
        assert _texts(svg, "tick x") == ["1", "2", "3", "4", "5", "6"], chart_id
    assert titles == {
        "chart-accuracy": "fraction correct",
        "chart-participants": "devices",
        "chart-epsilon": "ε spent so far",
    }
    participants = _svg(dom, "chart-participants")
    assert all(t.isdigit() for t in _texts(participants, "tick y")), _texts(participants, "tick y")
    assert _texts(chart, "tick y") == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    # the chance level of the zoo's logreg (10 classes) on the accuracy chart, dashed and in the legend
    (chance,) = re.findall(r'<line\b[^>]*class="chance"[^>]*>', chart.split('<g class="legend">')[0])
    y = float(re.search(r'y1="([\d.]+)"', chance).group(1))
    zero, one = (float(re.search(rf'y="([\d.]+)"[^>]*>{v}<', chart).group(1)) - 3.5 for v in ("0", "1"))
    assert y == pytest.approx(zero + (one - zero) / CLASSES, abs=0.2)
    assert f"chance (1/{CLASSES})" in _texts(chart, "legend chance-label")
    assert "Privacy spent (δ = 1e-05)" in _svg(dom, "chart-epsilon")

    # the browser's own layout: no legend over a point, bar or line; no text outside its chart or over other text
    probe = tmp_path / "probe.html"
    probe.write_text(_get(dashboard.url)[1].decode().replace("</body>", LAYOUT_PROBE + "</body>"))
    laid = _chromium(flags, "--dump-dom", probe.as_uri())
    layout = json.loads(html.unescape(re.search(r'<pre id="layout">(.*?)</pre>', laid, re.S).group(1)))
    assert set(layout) == {"chart-accuracy", "chart-participants", "chart-epsilon"}
    for chart_id, measured in layout.items():
        assert measured["marks"] > 0 and measured["legend_over_data"] == 0, (chart_id, measured)
        assert measured["marks_off_the_plot"] == [] and measured["marks_over_text"] == 0, (chart_id, measured)
        assert measured["text_outside"] == [] and measured["text_clash"] == [], (chart_id, measured)

    table = dom[dom.index('<table id="rollouts"') :]
    table = table[: table.index("</table>")]
    assert "canary-1" in table and "logreg-r5" in table and "phase 1 (20%)" in table and "2 installed" in table
    assert '<table id="releases"' in dom and "logreg-r5" in dom
    png = tmp_path / "dashboard.png"
    subprocess.run(
        flags + ["--window-size=1280,1400", f"--screenshot={png}", dashboard.url],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)")
def test_headless_chromium_shows_one_line_instead_of_an_empty_epsilon_chart_when_dp_is_off(
    dp_off_dashboard, chromium_flags
):
    dom = _chromium(chromium_flags, "--dump-dom", dp_off_dashboard.url)
    assert '<svg id="chart-epsilon"' not in dom
    assert re.search(r'<div id="chart-epsilon" class="chart placeholder">DP off: no ε</div>', dom)
    assert _texts(_svg(dom, "chart-accuracy"), "tick x") == ["1", "2", "3"]


def _round(r: int, **fields):
    """One row of :func:`rounds_data`."""
    base = {"round": r, "status": "completed", "reason": "ok", "participants": 3, "dropped": 0, "accuracy": 0.5}
    return {**base, "loss": 1.0, "epsilon": None, "delta": None, "dp": None, "model": None, **fields}


def test_epsilon_chart_gives_way_to_a_line_of_text_only_without_epsilon():
    rounds = [_round(1), _round(2, dp="off")]
    assert '<div id="chart-epsilon" class="chart placeholder">DP off: no ε</div>' in render_page(rounds, [], [])
    planned = [{**rounds[0], "dp": "distributed"}]  # planned with DP, abandoned before any was spent
    assert "DP on: no ε spent yet" in render_page(planned, [], [])
    spent = [{**rounds[1], "epsilon": 0.7, "dp": "distributed"}]
    page = render_page(spent, [], [])
    assert '<svg id="chart-epsilon"' in page and 'class="chart placeholder"' not in page
    assert "no data yet" in render_page([], [], [])  # no rounds: nothing known about DP yet


def test_ticks_are_round_numbers_and_whole_on_round_and_count_axes():
    assert nice_ticks(1, 6, integer=True, target=6) == [1, 2, 3, 4, 5, 6]
    assert nice_ticks(1, 200, integer=True, target=6) == [0, 50, 100, 150, 200]
    assert nice_ticks(0, 9, integer=True) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert nice_ticks(0, 2.4) == [0, 0.5, 1, 1.5, 2, 2.5]
    svg = line_chart("c", "t", list(range(1, 201)), {"a": [0.5] * 200})
    assert _texts(svg, "tick x") == ["50", "100", "150", "200"]  # inside the rounds shown, never round 0


def test_the_class_count_comes_from_the_model_of_the_latest_round(tmp_path):
    store = Store(str(tmp_path / "c.db"))
    try:
        assert class_count(store) is None  # no rounds yet
        store.put_model("logreg-r0", truth(), architecture=ARCH, now=1.0)
        store.open_round(1, goal=2, model_in="logreg-r0", plan={}, now=1.0)
        assert class_count(store) == CLASSES  # the zoo's sidecar
        meta = {"name": "hand", "num_classes": 3, "loss": "softmax_cross_entropy"}
        store.db["model_files"].insert({"architecture": "hand", "meta": json.dumps(meta).encode(), "model": b""})
        store.put_model("hand-r1", truth(), architecture="hand", now=2.0)
        store.open_round(2, goal=2, model_in="hand-r1", plan={}, now=2.0)
        assert class_count(store) == 3  # an imported built model's own metadata
        store.db["model_files"].update("hand", {"meta": json.dumps({**meta, "loss": "binary_cross_entropy"}).encode()})
        assert class_count(store) is None  # accuracy is not one class in n: no chance level to draw
        store.put_model("gone-r2", truth(), architecture="not-in-the-zoo", now=3.0)
        store.open_round(3, goal=2, model_in="gone-r2", plan={}, now=3.0)
        assert class_count(store) is None
    finally:
        store.close()
    page = render_page([_round(1)], [], [])
    assert 'class="chance"' not in page  # unknown class count: no chance level invented


def _phase(**counts):
    base = {
        "phase": 1,
        "percent": 100.0,
        "devices": 2,
        "waiting": 0,
        "sent": 0,
        "installed": 0,
        "failed": 0,
        "skipped": 0,
        "timed_out": 0,
        "rollback_sent": 0,
        "rolled_back": 0,
    }
    return {**base, **counts}


def _rollout_cell(phase):
    page = render_page(
        [],
        [],
        [
            {
                "rollout_id": "r",
                "version": "v",
                "target": "t",
                "status": "active",
                "phase": 1,
                "phases": [phase],
                "reason": "",
            }
        ],
    )
    return page[page.index('<div class="phase">') :][: page[page.index('<div class="phase">') :].index("</div>")]


def test_a_phase_whose_devices_all_timed_out_is_painted_as_failures_not_green():
    cell = _rollout_cell(_phase(timed_out=2))
    assert 'class="ok"' not in cell  # no green segment at all
    assert '<span class="failed" style="width:100%">' in cell
    assert "0 installed, 2 failed (2 timed out), 0 pending" in cell and "of 2" in cell


def test_a_mixed_phase_splits_the_bar_by_outcome():
    cell = _rollout_cell(_phase(devices=4, installed=2, failed=1, sent=1))
    assert '<span class="ok" style="width:50%">' in cell and '<span class="failed" style="width:25%">' in cell
    assert "2 installed, 1 failed (1 install failed), 1 pending" in cell


def test_every_epsilon_on_the_page_names_its_neighbouring_relation():
    """The accountant's epsilon is add-or-remove-one (the service's), the live audit's figures replace-one."""
    from fedge.coordinator.fleet import dashboard
    from fedge.coordinator.rounds.audit import AUDIT_RELATION
    from fedge.coordinator.service.service import SERVICE_RELATION

    assert (dashboard.EPSILON_RELATION, dashboard.AUDIT_RELATION) == (SERVICE_RELATION, AUDIT_RELATION)
    rounds = [
        dict(round=1, status="completed", reason="", participants=3, dropped=0, accuracy=0.5, loss=1.0,
             epsilon=1.5, delta=1e-5, dp="distributed", relation="add-or-remove-one",
             epsilon_empirical=0.4, epsilon_lower_bound=0.1, audit_relation="replace-one"),
    ]  # fmt: skip
    page = render_page(rounds, [], [])
    assert "epsilon (add-or-remove-one)" in page and "audit, replace-one (estimate / 95% lower bound)" in page
    assert "ε (accountant, add-or-remove-one)" in page and "audit estimate (replace-one)" in page
