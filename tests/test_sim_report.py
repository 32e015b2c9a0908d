"""Reports: summary.json schema, rounds.csv, PNG plots (checked through their matplotlib artists),
the plain progress lines."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from fedge.simulations.report import (
    PLOTS,
    ROUND_KEYS,
    RoundRecord,
    Summary,
    comparison_figure,
    figures,
    progress,
    write_report,
)

#: What the simulator's summary names beside the rounds (runner.py): the class count and the profiles.
EXTRA = {
    "data": {"name": "digits", "num_classes": 10},
    "population": {"profiles": ["pi4", "phone"], "counts": [12, 8]},
}


def _record(r: int, epsilon: float | None, **more) -> RoundRecord:
    return RoundRecord(
        round=r,
        accuracy=0.5 + r / 100,
        loss=1.0 / r,
        epsilon=epsilon,
        delta=1e-6,
        participants=90,
        dropped=10,
        bytes_up=9000,
        bytes_down=10000,
        seconds=0.25,
        dropped_per_stage={"unavailable": 4, "masked_input": 6},
        seconds_per_stage={"train": 0.2, "evaluate": 0.05},
        group_accuracy={"profile:pi4": 0.6, "profile:phone": 0.55, "size:q1": 0.4, "size:q4": 0.7},
        uploads=10 * r,
        sim_seconds=30.0 * r,
        **more,
    )


def _run(epsilons, **more) -> Summary:
    return Summary({}, tuple(_record(i, e, **more) for i, e in enumerate(epsilons, 1)), extra=EXTRA)


def test_summary_json_has_the_documented_schema(tmp_path) -> None:
    config = {"population": 100, "per_round": 10, "sampling": {"scheme": "uniform_without_replacement", "rate": 0.1}}
    summary = Summary(config, (_record(1, 0.5), _record(2, 0.8), _record(3, math.inf)), extra={"engine": "x", **EXTRA})
    paths = write_report(summary, tmp_path / "out")
    assert [p.name for p in paths] == ["summary.json", "rounds.csv", *PLOTS]

    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["config"] == config and doc["engine"] == "x"
    assert doc["data"]["num_classes"] == 10  # the chance level of the accuracy plots
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    for r in doc["rounds"]:
        assert list(r)[: len(ROUND_KEYS)] == list(ROUND_KEYS)
        assert isinstance(r["participants"], int) and isinstance(r["bytes_up"], int)
        assert r["dropped_per_stage"]["masked_input"] == 6
    assert doc["rounds"][2]["epsilon"] is None  # infinity is not JSON: written as null

    rows = list(csv.DictReader((tmp_path / "out" / "rounds.csv").open()))
    assert len(rows) == 3 and float(rows[1]["epsilon"]) == 0.8
    assert rows[0]["dropped_unavailable"] == "4" and rows[0]["accuracy_profile:pi4"] == "0.6"

    for name in PLOTS:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _visible_ticks(axis) -> list[float]:
    lo, hi = sorted(axis.get_view_interval())
    return [t for t in axis.get_majorticklocs() if lo <= t <= hi]


def _all_axes():
    """Every axes of every plot, with its file name: a DP run with groups, and the two-run comparison."""
    figs = figures(_run([0.5, 0.8, 1.1]))
    figs["comparison"] = comparison_figure({"synchronous": _run([None] * 3), "buffered": _run([None] * 5)})
    for fig in figs.values():
        fig.draw_without_rendering()  # ticks and legend positions as they are saved
    return [(name, ax) for name, fig in figs.items() for ax in fig.axes]


def test_every_axis_has_a_title_and_round_axes_have_integer_ticks() -> None:
    axes, counted = _all_axes(), 0
    for name, ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (name, ax.get_title())
        if ax.get_xlabel() == "round" or ax.get_xlabel().startswith("updates aggregated"):
            ticks = _visible_ticks(ax.xaxis)
            assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
            counted += 1
    assert counted == 3  # accuracy and audit against rounds, accuracy against uploads
    assert axes[0][1].get_ylabel() == "test accuracy (fraction correct)"


def _chance_lines(ax) -> list:
    return [
        line
        for line in ax.get_lines()
        if line.get_linestyle() == "--"
        and "chance" in line.get_label()
        and all(y == pytest.approx(0.1) for y in line.get_ydata())
    ]


def test_accuracy_plots_draw_the_chance_level_from_the_class_count() -> None:
    accuracy = [(n, ax) for n, ax in _all_axes() if ax.get_ylabel().startswith("test accuracy")]
    assert {n for n, _ in accuracy} == {PLOTS[0], PLOTS[1], PLOTS[2], "comparison"}
    for name, ax in accuracy:
        assert len(_chance_lines(ax)) == 1, name
        assert ax.get_ylim()[0] == 0  # the level is on the plot
    # no class count in the summary: no chance level drawn, and no invented one
    unknown = figures(Summary({}, (_record(1, 0.5), _record(2, 0.6))))
    assert not any(line for ax in unknown[PLOTS[0]].axes for line in ax.get_lines() if "chance" in line.get_label())


def _data_bbox(ax):
    """The display-space box around every data point and bar of the axes (the chance line spans it all, left out)."""
    from matplotlib.transforms import Bbox

    boxes = [p.get_window_extent() for p in ax.patches]
    for line in ax.get_lines():
        if "chance" in line.get_label():
            continue
        xy = ax.transData.transform(line.get_xydata())
        xy = xy[~(xy != xy).any(axis=1)]  # a missing value (NaN) is no point
        boxes.append(Bbox([xy.min(axis=0), xy.max(axis=0)]))
    return Bbox.union(boxes)


def test_legends_cover_no_data() -> None:
    legends = 0
    for name, ax in _all_axes():
        legend = ax.get_legend()
        if legend is None:
            continue
        legends += 1
        box = legend.get_window_extent()
        for other in ax.figure.axes:  # not this plot's data, nor the other panel's
            if other.lines or other.patches:
                assert not box.overlaps(_data_bbox(other)), (name, box, _data_bbox(other))
    assert legends == 5  # one per plot; the comparison's two panels share one


def test_group_bars_are_labelled_for_a_reader() -> None:
    (ax,) = figures(_run([0.5]))[PLOTS[2]].axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["phone (n=8)", "pi4 (n=12)", "Q1 (fewest examples)", "Q4 (most examples)"]
    assert [round(p.get_height(), 2) for p in ax.patches] == [0.55, 0.6, 0.4, 0.7]
    assert ax.get_xlabel() == "client group" and "round 1" in ax.get_title()


def test_without_dp_no_epsilon_plot_is_written_and_the_report_lists_what_it_wrote(tmp_path) -> None:
    written = write_report(_run([None, None]), tmp_path / "off")
    assert [p.name for p in written] == ["summary.json", "rounds.csv", PLOTS[0], PLOTS[2]]
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == sorted(p.name for p in written)
    # the canary audit without DP still has its estimate to plot, and only that
    audited = write_report(_run([None, None], epsilon_empirical=0.3, epsilon_lower_bound=0.1), tmp_path / "audit")
    assert [p.name for p in audited][2:] == [PLOTS[0], PLOTS[2], PLOTS[3]]  # no accuracy against ε
    (ax,) = figures(_run([None], epsilon_empirical=0.3))[PLOTS[3]].axes
    assert [line.get_label() for line in ax.get_lines()] == ["audit estimate (Gaussian fit, replace-one)"]


def test_progress_prints_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    seen = list(progress(range(3), 3, stream=out))
    assert seen == [0, 1, 2]
    assert out.getvalue().splitlines() == ["rounds: 1/3", "rounds: 2/3", "rounds: 3/3"]
