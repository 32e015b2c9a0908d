"""``fedge-sim run --model PATH``: a model built from a spec trains through the real protocol (SecAgg+, DP).

The data is an ``.npz`` of character windows written here (each writer repeats its own line), so
the test needs neither the Shakespeare archive nor TensorFlow: the committed ``shakespeare_gru``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import pytest

from fedge.agent.core.cliutil import run
from fedge.agent.training.models import MODELS_DIR
from fedge.simulations.cli import cli
from fedge.simulations.config import SimConfig

MODEL = MODELS_DIR / "specs" / "shakespeare_gru.tflite"
LINES = [
    "to be, or not to be, that is the question: ",
    "now is the winter of our discontent, made glorious ",
    "all the world's a stage, and all the men and women merely players; ",
]


def text_windows(path, writers: int = 12, per_writer: int = 40, seed: int = 0):
    vocab = sorted(set("".join(LINES)))
    rng = np.random.default_rng(seed)
    xs, ys, ws = [], [], []
    for k in range(writers):
        ids = np.array([vocab.index(c) for c in LINES[k % len(LINES)]])
        stream = np.tile(ids, 200 // len(ids) + 2)
        for s in rng.integers(0, len(ids), per_writer):
            xs.append(stream[s : s + 80])
            ys.append(stream[s + 80])
            ws.append(k)
    np.savez(path, x=np.array(xs, np.float32), y=np.array(ys, np.int64), writer=np.array(ws))
    return path


def test_built_gru_trains_through_secagg_and_dp(tmp_path):
    data = text_windows(tmp_path / "lines.npz")
    argv = (
        f"run --population 12 --per-round 6 --rounds 3 --model {MODEL} --dataset {data} --partition natural "
        f"--secagg --dp distributed --noise-multiplier 0.05 --clip 2.0 --learning-rate 1.0 --local-epochs 2 "
        f"--seed 3 --workers 0 --out {tmp_path / 'out'}"
    ).split()
    assert run(cli, "fedge-sim", argv) == 0
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "fedge protocol" in doc["engine"]
    losses = [r["loss"] for r in doc["rounds"]]
    print("losses", losses, "accuracy", [r["accuracy"] for r in doc["rounds"]])
    for r in doc["rounds"]:
        assert r["participants"] == 6 and math.isfinite(r["epsilon"])
    # the model starts at ln 80 = 4.38 (zero head); measured 4.03, 3.64, 3.51 after rounds 1 to 3
    assert losses[-1] < 0.85 * math.log(80) and losses[-1] < losses[0]


def test_model_path_that_is_not_a_built_model_is_refused(tmp_path, capsys):
    argv = f"run --population 5 --per-round 2 --rounds 1 --model {tmp_path / 'none.tflite'} --dataset digits".split()
    assert run(cli, "fedge-sim", argv) == 2
    assert "the path of a built .tflite" in capsys.readouterr().err


SPECS = MODELS_DIR / "specs"
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def sensor_windows(path, writers: int = 4, per_writer: int = 12, seed: int = 0):
    """Random [128, 6] windows with labels 0..11 (the shape of har_cnn1d's input and head)."""
    rng = np.random.default_rng(seed)
    n = writers * per_writer
    y = np.arange(n) % 12
    x = rng.normal(size=(n, 128, 6)).astype(np.float32) + y[:, None, None] * 0.1
    np.savez(path, x=x, y=y, writer=np.repeat(np.arange(writers), per_writer))
    return path


def test_spec_path_trains_the_model_built_beside_it(tmp_path):
    data = sensor_windows(tmp_path / "w.npz")
    spec = SPECS / "har_cnn1d.toml"
    argv = (
        f"run --population 4 --per-round 2 --rounds 1 --model {spec} --dataset {data} --partition natural "
        f"--seed 1 --workers 0 --out {tmp_path / 'out'}"
    ).split()
    assert run(cli, "fedge-sim", argv) == 0
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["model"]["name"] == str(SPECS / "har_cnn1d.tflite")
    assert doc["model"]["params"] == 2460 and doc["model"]["input_shape"] == [128, 6]
    assert len(doc["rounds"]) == 1


@pytest.mark.parametrize("name", sorted(p.stem for p in SPECS.glob("*.toml")))
def test_every_shipped_spec_resolves_to_its_committed_model(name):
    cfg = SimConfig(population=2, per_round=1, rounds=1, model=str(SPECS / f"{name}.toml"), dataset="digits")
    assert cfg.model == str(SPECS / f"{name}.tflite")


@pytest.mark.skipif(HAS_TF, reason="checks the refusal without TensorFlow")
@pytest.mark.parametrize("beside", ["none", "other_seed"])
def test_spec_without_its_built_model_names_the_modelgen_extra(tmp_path, monkeypatch, capsys, beside):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    text = (SPECS / "har_cnn1d.toml").read_text()
    if beside == "other_seed":  # the committed files, but the spec now draws other initial weights
        text = text.replace("seed = 201", "seed = 202")
        for suffix in (".tflite", ".json"):
            shutil.copy(SPECS / f"har_cnn1d{suffix}", tmp_path / f"har_cnn1d{suffix}")
    (tmp_path / "har_cnn1d.toml").write_text(text)
    argv = f"run --population 4 --per-round 2 --rounds 1 --model {tmp_path / 'har_cnn1d.toml'} --dataset digits"
    assert run(cli, "fedge-sim", argv.split()) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedge-sim: error: --model: ")
    assert "pip install 'fedge[modelgen]'" in err
    assert ("no built model har_cnn1d.tflite" if beside == "none" else "differs in generator") in err
