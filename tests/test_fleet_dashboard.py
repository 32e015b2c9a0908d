"""The dashboard: JSON endpoints over a real store, and the page rendered by headless Chromium
(Debian's ``chromium``, installed by ``.ci/run``) with its round charts and rollout table."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from fedge.coordinator.fleet.controller import create_rollout
from fedge.coordinator.fleet.dashboard import Dashboard, DashboardConfig, line_chart, render_page
from fedge.coordinator.fleet.rollouts import Criteria, Spec, Target
from tests.fleet_fixtures import Fleet, put_release, truth

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    """A coordinator store with 6 rounds, two releases and a staged rollout stopped after its first phase."""
    tmp = tmp_path_factory.mktemp("dash")
    fleet = Fleet(tmp, 10)
    store, clock = fleet.store, fleet.clock
    for rid in range(1, 7):
        store.open_round(rid, goal=10, model_in="m", plan={}, now=clock())
        store.finish_round(
            rid,
            "completed" if rid != 4 else "abandoned",
            "ok" if rid != 4 else "check-in: 1 eligible",
            clock() + 5,
            participants=10 - rid % 3,
            dropped={"masked_input": rid % 3},
            accuracy=0.5 + 0.07 * rid if rid != 4 else None,
            epsilon=0.4 * rid,
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


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium package)")
def test_headless_chromium_renders_the_round_chart_and_rollout_table(dashboard, tmp_path):
    flags = [
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
    dom = subprocess.run(
        flags + ["--dump-dom", dashboard.url], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    # the browser parsed the SVG charts into the DOM: the accuracy line has its 5 points (round 4 has none)
    chart = dom[dom.index('id="chart-accuracy"') :]
    chart = chart[: chart.index("</svg>")]
    assert chart.count("<circle") == 5 and "<polyline" in chart
    assert 'id="chart-participants"' in dom and 'id="chart-epsilon"' in dom
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
