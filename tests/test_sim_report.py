"""Reports: summary.json schema, rounds.csv, PNG plots, the plain progress lines."""

from __future__ import annotations

import csv
import io
import json
import math

from fedge.simulations.report import PLOTS, ROUND_KEYS, RoundRecord, Summary, progress, write_report


def _record(r: int, epsilon: float | None) -> RoundRecord:
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
        group_accuracy={"profile:pi4": 0.6, "size:q1": 0.4},
    )


def test_summary_json_has_the_documented_schema(tmp_path) -> None:
    config = {"population": 100, "per_round": 10, "sampling": {"scheme": "uniform_without_replacement", "rate": 0.1}}
    summary = Summary(config, (_record(1, 0.5), _record(2, 0.8), _record(3, math.inf)), extra={"engine": "x"})
    paths = write_report(summary, tmp_path / "out")
    assert [p.name for p in paths] == ["summary.json", "rounds.csv", *PLOTS]

    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["config"] == config and doc["engine"] == "x"
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


def test_plots_without_privacy_accounting_still_render(tmp_path) -> None:
    write_report(Summary({}, (_record(1, None), _record(2, None))), tmp_path)
    assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 1000


def test_progress_prints_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    seen = list(progress(range(3), 3, stream=out))
    assert seen == [0, 1, 2]
    assert out.getvalue().splitlines() == ["rounds: 1/3", "rounds: 2/3", "rounds: 3/3"]
