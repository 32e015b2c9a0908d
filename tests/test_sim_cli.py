"""``fedge-sim run``: flags into SimConfig, config errors as one line and exit code 2, reproducible runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.agent.core.cliutil import run as run_cli
from fedge.simulations import runner
from fedge.simulations.cli import cli
from fedge.simulations.config import SimConfig
from fedge.simulations.population import make_population
from fedge.simulations.report import ROUND_KEYS, RoundRecord, Summary

RESEARCHER = (
    "run --population 100000 --per-round 10000 --rounds 50 --model mlp --dataset synthetic:1,1 "
    "--partition dirichlet:0.5 --secagg --dp distributed --noise-multiplier 1.0 --clip 1.0 "
    "--delta 1e-6 --seed 0 --out {out}"
)


def _sim(argv: str) -> int:
    return run_cli(cli, "fedge-sim", argv.split())


def test_adaptive_clip_flag_is_the_target_quantile_of_the_config(monkeypatch, tmp_path) -> None:
    """One name end to end: ``--adaptive-clip Q`` is ``SimConfig.target_quantile``, as in TrainingConfig."""
    seen: list[SimConfig] = []
    one_round = RoundRecord(1, 0.5, 1.0, None, 1e-6, 1, 0, 0, 0, 0.0)
    monkeypatch.setattr(runner, "run", lambda config, **_: seen.append(config) or Summary({}, (one_round,)))
    argv = "run --population 20 --per-round 5 --rounds 2 --model logreg --dataset digits --dp local"
    argv += " --noise-multiplier 0.5 --clip-count-stddev 1"
    assert _sim(f"{argv} --adaptive-clip 0.5 --out {tmp_path}") == 0
    population = make_population(20, (), np.random.default_rng(0))
    assert seen[0].target_quantile == 0.5
    assert runner.training_config(seen[0], population)[0].target_quantile == 0.5


def test_the_researchers_command_parses_into_one_config(monkeypatch, tmp_path) -> None:
    seen: list[SimConfig] = []
    one_round = RoundRecord(1, 0.5, 1.0, None, 1e-6, 1, 0, 0, 0, 0.0)
    monkeypatch.setattr(runner, "run", lambda config, **_: seen.append(config) or Summary({}, (one_round,)))
    assert _sim(RESEARCHER.format(out=tmp_path) + " --profiles pi4=0.5,phone=0.3,car=0.2") == 0
    (c,) = seen
    assert c == SimConfig(
        population=100_000,
        per_round=10_000,
        rounds=50,
        model="mlp",
        dataset="synthetic:1,1",
        partition="dirichlet:0.5",
        secagg=True,
        dp="distributed",
        noise_multiplier=1.0,
        clip=1.0,
        delta=1e-6,
        seed=0,
        profiles=(("pi4", 0.5), ("phone", 0.3), ("car", 0.2)),
        out=str(tmp_path),
    )
    resolved = c.resolved()
    assert resolved["sampling"] == {"scheme": "uniform_without_replacement", "rate": 0.1}
    assert resolved["profiles"] == {"pi4": 0.5, "phone": 0.3, "car": 0.2}


@pytest.mark.parametrize(
    "extra,message",
    [
        ("--dp distributed --noise-multiplier 1", "--dp distributed: needs --secagg"),
        ("--per-round 11", "--per-round: expected 1..population (10)"),
        ("--dp local", "--noise-multiplier: expected > 0 with --dp local"),
        ("--dp maybe", "--dp: expected one of off, local, distributed"),
        ("--model resnet", "--model: expected one of"),
        ("--delta 1", "--delta"),
        ("--partition dirichlet:0", "--partition"),
        ("--profiles pi4=0.5", "shares sum to 0.5"),
        ("--workers -1", "--workers: expected >= 0"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(capsys, extra: str, message: str) -> None:
    base = "run --population 10 --per-round 5 --rounds 1 --model logreg --dataset digits"
    code = _sim(f"{base} {extra}")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fedge-sim: error: ") and message in err and err.count("\n") == 1


def test_model_and_data_shape_mismatch_is_refused(capsys) -> None:
    code = _sim("run --population 10 --per-round 5 --rounds 1 --model cnn --dataset digits")
    assert code == 2
    assert "(28, 28, 1)" in capsys.readouterr().err


def test_a_small_run_writes_the_report_and_reproduces(tmp_path) -> None:
    argv = (
        "run --population 300 --per-round 40 --rounds 3 --model logreg --dataset digits "
        "--partition dirichlet:0.5 --profiles pi4=0.5,phone=0.3,car=0.2 --learning-rate 0.5 --local-epochs 5 --seed 7 --out {}"
    )
    assert _sim(argv.format(tmp_path / "a")) == 0
    assert _sim(argv.format(tmp_path / "b")) == 0
    assert _sim(argv.replace("--seed 7", "--seed 8").format(tmp_path / "c")) == 0
    a, b, c = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "abc")

    assert a["config"]["sampling"]["rate"] == pytest.approx(40 / 300)
    assert a["config"]["profiles"] == {"pi4": 0.5, "phone": 0.3, "car": 0.2}
    assert "fedge protocol" in a["engine"]
    for r in a["rounds"]:
        assert set(ROUND_KEYS) <= set(r)
        assert r["participants"] + r["dropped"] == 40
        assert sum(r["dropped_per_stage"].values()) >= r["dropped"]
        assert {"profile:pi4", "profile:car", "size:q1"} <= set(r["group_accuracy"])

    def numbers(doc: dict) -> list:
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in doc["rounds"]]

    assert numbers(a) == numbers(b)  # same seed, same numbers
    assert numbers(a) != numbers(c)
    assert a["rounds"][-1]["accuracy"] > 0.3  # 10 classes: well above chance after 3 rounds
    for name in ("rounds.csv", "accuracy_vs_round.png", "accuracy_per_group.png"):
        assert (tmp_path / "a" / name).is_file()


def test_a_swapped_round_engine_gets_the_cohort_and_reports_its_epsilon(tmp_path) -> None:
    from fedge.simulations.engine import RoundWork

    calls = []

    def engine(round_, weights, behaviour, federation, rng):
        calls.append((round_, len(behaviour.client_ids), federation.num_clients))
        return RoundWork(weights, {"protocol": 0.0}, examples=7, epsilon=0.5 * round_, participants=15, bytes_up=1234)

    config = SimConfig(
        population=50,
        per_round=20,
        rounds=2,
        model="logreg",
        dataset="digits",
        secagg=True,
        dp="distributed",
        noise_multiplier=1.0,
        out=str(tmp_path),
    )
    summary = runner.run(config, engine=engine, show_progress=False)
    assert calls == [(1, 20, 50), (2, 20, 50)]
    assert [r.epsilon for r in summary.rounds] == [0.5, 1.0]
    assert [r.examples for r in summary.rounds] == [7, 7]
    assert [(r.participants, r.dropped, r.bytes_up) for r in summary.rounds] == [(15, 5, 1234)] * 2
    assert summary.rounds[0].bytes_down == 20 * 4 * summary.extra["model"]["params"]  # estimated: all available
    assert "protocol" in summary.rounds[0].seconds_per_stage
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["rounds"][1]["epsilon"] == 1.0 and doc["engine"] == "engine"


def test_a_run_keeps_the_protocols_per_round_info_lines_out_unless_debug_is_asked(tmp_path, caplog) -> None:
    """Three INFO lines per round per stage buried the progress; --log-level DEBUG shows them again,
    and the loggers' levels are restored after the run (in-process callers and later tests see no change)."""
    import logging

    argv = f"run --population 10 --per-round 4 --rounds 2 --model logreg --dataset digits --secagg --out {tmp_path}"
    caplog.set_level(logging.DEBUG)
    assert _sim(f"--log-level INFO {argv}") == 0
    per_round = [
        r for r in caplog.records if r.name.startswith(("fedge.coordinator.rounds", "fedge.simulations.protocol"))
    ]
    assert not [r for r in per_round if r.levelno < logging.WARNING], [r.getMessage() for r in per_round]
    assert any(r.name == "fedge.simulations.runner" for r in caplog.records)  # the run's own INFO line stays
    assert logging.getLogger("fedge.coordinator.rounds").level == logging.NOTSET
    caplog.clear()
    assert _sim(f"--log-level DEBUG {argv}") == 0
    assert any(r.name == "fedge.coordinator.rounds.engine" and r.levelno == logging.INFO for r in caplog.records)
