"""The committed model zoo on the installed runtime: loads, builtin ops only, trains, matches numpy.

Every model is loaded and trained on the installed TFLite runtime (tflite-runtime 2.14 in CI),
so an op version it does not support fails here, not on a device.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.agent.training import acceptance, layerspec, reference
from fedge.agent.training.models import MODELS_DIR, family_of, list_models, load_spec, model_for
from fedge.agent.training.runtime import load_interpreter
from fedge.agent.training.tflite_file import read_model_file
from fedge.agent.training.trainer import Trainer
from tests.training_fixtures import data_for

MODELS = ["logreg", "mlp", "cnn", "logreg60", "mlp60"]
#: What each model must say about itself: architecture and one example's shape.
EXPECTED = {
    "logreg": ("multinomial logistic regression 64->10", (64,)),
    "mlp": ("mlp 64->32 relu->10", (64,)),
    "cnn": ("cnn 28x28x1 conv3x3x8 valid relu -> maxpool2x2 -> dense 10", (28, 28, 1)),
    "logreg60": ("multinomial logistic regression 60->10", (60,)),
    "mlp60": ("mlp 60->32 relu->10", (60,)),
}
LR = 0.1


def runners(name: str):
    interp = load_interpreter(load_spec(name).path)
    return {k: interp.get_signature_runner(k) for k in ("train", "infer", "get_weights", "set_weights")}


def test_zoo_lists_its_five_models():
    assert list_models() == ("cnn", "logreg", "logreg60", "mlp", "mlp60")


@pytest.mark.parametrize("name", MODELS)
def test_model_has_only_builtin_ops_and_its_metadata(name):
    spec = load_spec(name)
    info = read_model_file(spec.path.read_bytes())
    assert info.op_codes, "no op codes read"
    custom = [op.custom_code for op in info.op_codes if op.is_custom]
    assert custom == [], f"{name} contains custom/Flex ops {custom}"
    meta = json.loads(info.metadata["fedge_model"])
    assert meta["name"] == name and meta["version"] == spec.version == 2  # v2: zero heads, He hidden kernels
    assert meta["num_classes"] == 10
    assert meta["input_shape"] == [None, *spec.input_shape]
    assert (spec.architecture, spec.input_shape) == EXPECTED[name]
    assert spec.weight_shapes[0][0] == spec.input_shape[0] or name == "cnn"


@pytest.mark.parametrize("name", MODELS)
def test_model_signatures_and_dynamic_batch_dimension(name):
    spec = load_spec(name)
    sigs = load_interpreter(spec.path).get_signature_list()
    assert sorted(sigs) == ["get_weights", "infer", "set_weights", "train"]
    assert sorted(sigs["train"]["inputs"]) == ["lr", "x", "y"]
    assert sorted(sigs["get_weights"]["outputs"]) == sorted(spec.weight_names)
    assert sorted(sigs["set_weights"]["inputs"]) == sorted(spec.weight_names)
    r = runners(name)
    x, _ = data_for(name)
    for n in (1, 17, 64):
        assert r["infer"](x=x[:n])["logits"].shape == (n, 10)


@pytest.mark.parametrize("name", MODELS)
def test_get_set_weights_round_trip_exactly(name):
    spec = load_spec(name)
    r = runners(name)
    rng = np.random.default_rng(7)
    new = {k: rng.standard_normal(s).astype(np.float32) for k, s in zip(spec.weight_names, spec.weight_shapes)}
    r["set_weights"](**new)
    got = r["get_weights"]()
    for k in spec.weight_names:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], new[k])


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_17_gives_the_reference_loss_and_logits(name):
    r = runners(name)
    # away from the zoo's start (a zero head predicts uniformly, whatever the batch)
    rng = np.random.default_rng(17)
    w = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in r["get_weights"]().items()}
    r["set_weights"](**w)
    x, y = data_for(name)
    xb, yb = x[100:117], y[100:117]
    np.testing.assert_allclose(r["infer"](x=xb)["logits"], reference.logits(name, w, xb), atol=1e-5)
    want, _ = reference.sgd_step(name, w, xb, yb, LR)
    got = float(r["train"](x=xb, y=yb, lr=np.float32(LR))["loss"])
    assert abs(got - want) < 1e-5
    # a fixed-batch model would have averaged over the wrong count: make sure 17 != 32 matters
    assert abs(want - reference.sgd_step(name, w, x[100:132], y[100:132], LR)[0]) > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_100_steps_match_the_numpy_reference_and_the_loss_falls(name):
    """Same start, same batches (mixed sizes): TFLite and numpy agree to 1e-5 and both learn."""
    r = runners(name)
    w = r["get_weights"]()
    x, y = data_for(name)
    held_x, held_y = x[-300:], y[-300:]
    before, _ = reference.loss_and_grads(name, w, held_x, held_y)
    rng = np.random.default_rng(3)
    for step in range(100):
        idx = rng.choice(len(x) - 300, size=17 if step % 3 == 0 else 32, replace=False)
        got = float(r["train"](x=x[idx], y=y[idx], lr=np.float32(LR))["loss"])
        want, w = reference.sgd_step(name, w, x[idx], y[idx], LR)
        assert abs(got - want) < 1e-5, f"step {step}: tflite {got} vs numpy {want}"
    tw = r["get_weights"]()
    for k in w:
        np.testing.assert_allclose(tw[k], w[k], atol=1e-5, rtol=0)
    after, _ = reference.loss_and_grads(name, w, held_x, held_y)
    assert after < 0.7 * before, f"held-out loss {before:.3f} -> {after:.3f}"


def test_maxpool_gradient_goes_to_the_first_maximum_on_ties():
    """Tied maxima in a window: TF's rule is row-major first; TFLite and numpy both follow it."""
    r = np.zeros((1, 2, 4, 1), np.float32)
    r[0, :, :2, 0] = [[1, 1], [1, 1]]  # four-way tie
    r[0, :, 2:, 0] = [[0, 2], [2, 1]]  # tie between (0,1) and (1,0)
    p = reference.maxpool2(r)
    g = reference.maxpool2_backward(r, p, np.ones_like(p))
    np.testing.assert_array_equal(g[0, :, :, 0], [[1, 0, 0, 1], [0, 0, 0, 0]])


def test_cnn_tflite_matches_reference_with_ties_in_the_pool():
    """Zero images with a positive conv bias tie every window; the trained weights still agree."""
    spec = load_spec("cnn")
    r = runners("cnn")
    w = r["get_weights"]()
    w["conv_b"] = np.full(8, 0.05, np.float32)
    r["set_weights"](**w)
    x = np.zeros((5, 28, 28, 1), np.float32)
    x[:, 10:14, 10:14] = 1.0  # one bright square: ties outside it, none inside
    y = np.arange(5, dtype=np.int32)
    for _ in range(3):
        r["train"](x=x, y=y, lr=np.float32(0.5))
        _, w = reference.sgd_step("cnn", w, x, y, 0.5)
    got = r["get_weights"]()
    for k in spec.weight_names:
        np.testing.assert_allclose(got[k], w[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_reference_gradients_match_finite_differences(name):
    """The reference is itself checked: analytic gradients against central differences in float64."""
    spec = load_spec(name)
    rng = np.random.default_rng(11)
    w = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in zip(spec.weight_names, spec.weight_shapes)}
    x, y = data_for(name)
    # noise breaks the exact ties and ReLU kinks of blank image regions, where differences lie
    xb, yb = (x[:8] + rng.uniform(0, 0.1, x[:8].shape)).astype(np.float32), y[:8]
    _, grads = reference.loss_and_grads(name, w, xb, yb)
    for k in spec.weight_names:
        flat = grads[k].ravel()
        for i in rng.choice(flat.size, size=min(5, flat.size), replace=False):
            eps = 1e-3
            plus = {kk: v.copy() for kk, v in w.items()}
            minus = {kk: v.copy() for kk, v in w.items()}
            plus[k].ravel()[i] += eps
            minus[k].ravel()[i] -= eps
            num = (
                reference.loss_and_grads(name, plus, xb, yb)[0] - reference.loss_and_grads(name, minus, xb, yb)[0]
            ) / (2 * eps)
            assert abs(num - flat[i]) < 2e-3 + 0.05 * abs(num), f"{k}[{i}]: analytic {flat[i]} vs numeric {num}"


def test_sidecar_and_embedded_metadata_are_checked(tmp_path):
    spec = load_spec("logreg")
    model = tmp_path / "logreg.tflite"
    model.write_bytes(spec.path.read_bytes())
    meta = json.loads((MODELS_DIR / "logreg.json").read_text())
    (tmp_path / "logreg.json").write_text(json.dumps(meta))
    assert load_spec(model).weight_names == ("w", "b")
    (tmp_path / "logreg.json").write_text(json.dumps({**meta, "num_classes": 11}))
    from fedge.agent.core.errors import TrainingError

    with pytest.raises(TrainingError, match="embedded metadata"):
        load_spec(model)
    model.write_bytes(spec.path.read_bytes() + b"\0")
    with pytest.raises(TrainingError, match="sha256"):
        load_spec(model)
    with pytest.raises(TrainingError, match="no model"):
        load_spec("resnet")


def test_model_for_picks_the_family_member_of_the_data_width():
    assert [family_of(n) for n in list_models()] == ["cnn", "logreg", "logreg", "mlp", "mlp"]
    assert model_for("logreg", 60).name == "logreg60" and model_for("mlp", 60).name == "mlp60"
    assert model_for("logreg", 64).name == "logreg" and model_for("mlp", 64).name == "mlp"
    assert model_for("cnn", 784).name == "cnn"
    assert load_spec("mlp60").family == "mlp"
    with pytest.raises(ConfigError, match=r"no zoo mlp model takes 61 input features \(mlp60 takes 60, mlp takes 64\)"):
        model_for("mlp", 61)
    with pytest.raises(ConfigError, match="no model family 'resnet'.*cnn, logreg, mlp"):
        model_for("resnet", 60)


def test_60_input_models_differ_from_the_64_input_ones_only_in_the_first_layer():
    """Same family, same layers: only the first weight matrix's rows (and the seed) change."""
    for small, big in (("logreg60", "logreg"), ("mlp60", "mlp")):
        a, b = load_spec(small), load_spec(big)
        assert a.weight_names == b.weight_names
        assert a.weight_shapes[1:] == b.weight_shapes[1:]
        assert (a.weight_shapes[0], b.weight_shapes[0]) == ((60, *b.weight_shapes[0][1:]), b.weight_shapes[0])
        assert b.num_params - a.num_params == 4 * b.weight_shapes[0][1]


#: Every committed model file: the zoo and the example specs' builds (agent/models/specs/).
COMMITTED = sorted([*MODELS_DIR.glob("*.tflite"), *(MODELS_DIR / "specs").glob("*.tflite")])


def test_the_op_check_covers_every_committed_model():
    specs = sorted(p.stem for p in (MODELS_DIR / "specs").glob("*.toml"))
    assert len(COMMITTED) == 12 and len(specs) == 7
    assert {p.stem for p in COMMITTED} == set(MODELS) | set(specs)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_builtin_ops_at_version_one_and_every_signature_runs(path):
    """Every op is a builtin at version 1, the version every TFLite runtime that has the op runs (tflite-runtime
    2.14 and ai-edge-litert 2.3 among them), and each of the four signatures runs on the installed runtime."""
    info = read_model_file(path.read_bytes())
    assert info.op_codes, "no op codes read"
    assert [op.custom_code for op in info.op_codes if op.is_custom] == []
    newer = sorted({(op.builtin_code, op.version) for op in info.op_codes if op.version != 1})
    assert newer == [], f"{path.name}: builtin ops (code, version) past version 1: {newer}"
    spec, rng = load_spec(path), np.random.default_rng(0)
    if path.parent.name == "specs":
        x, y = acceptance.batch(layerspec.load(path.with_suffix(".toml")), 8, rng)
    else:
        x, y = rng.random((8, *spec.input_shape), np.float32), rng.integers(0, spec.num_classes, 8)
    trainer = Trainer(spec)  # set_weights, train and get_weights
    w0 = trainer.initial_weights()
    out = trainer.train(w0, x, y, epochs=1, batch_size=4, learning_rate=0.01, rng=rng)
    assert out.delta.shape == w0.shape and np.isfinite(out.delta).all() and np.abs(out.delta).max() > 0
    assert np.isfinite(trainer.evaluate(w0 + out.delta, x, y).loss)  # infer
