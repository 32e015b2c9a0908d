"""The trainer on real interpreters and real digits: learning, deltas, determinism, caps and aborts."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.core.profiles import load_profile
from fedge.agent.training import reference
from fedge.agent.training.models import load_spec
from fedge.agent.training.runtime import RUNTIMES, load_interpreter, runtime_name
from fedge.agent.training.trainer import STOP_ABORTED, STOP_TIME_CAP, Trainer, train_with_limits
from tests.training_fixtures import digits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mlp() -> Trainer:
    return Trainer(load_spec("mlp"))


def split():
    x, y = digits()
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_training_improves_held_out_accuracy_and_returns_the_delta(mlp):
    xtr, ytr, xte, yte = split()
    w0 = mlp.initial_weights()
    before = mlp.evaluate(w0, xte, yte)
    res = mlp.train(w0, xtr, ytr, epochs=3, batch_size=32, learning_rate=0.1, rng=np.random.default_rng(0))
    assert res.stopped is None and res.num_examples == 1400
    assert res.steps == 3 * 44 and res.epochs == pytest.approx(3.0)
    assert res.delta.dtype == np.float32 and res.delta.shape == (load_spec("mlp").num_params,)
    np.testing.assert_array_equal(res.delta, mlp.flat_weights() - w0)
    after = mlp.evaluate(w0 + res.delta, xte, yte)
    assert before.accuracy < 0.3 and after.accuracy > 0.75, (before, after)
    assert after.loss < 0.5 * before.loss and after.num_examples == len(yte)
    assert res.loss < before.loss


def test_training_is_deterministic_and_one_trainer_serves_many_clients(mlp):
    """Reusing one interpreter for client after client gives what a fresh one gives."""
    xtr, ytr, _, _ = split()
    w0 = mlp.initial_weights()
    kw = dict(epochs=1, batch_size=16, learning_rate=0.05)
    first = mlp.train(w0, xtr[:200], ytr[:200], rng=np.random.default_rng(5), **kw)
    mlp.train(w0 + 1.0, xtr[200:400], ytr[200:400], rng=np.random.default_rng(6), **kw)  # another client
    again = mlp.train(w0, xtr[:200], ytr[:200], rng=np.random.default_rng(5), **kw)
    fresh = Trainer(load_spec("mlp")).train(w0, xtr[:200], ytr[:200], rng=np.random.default_rng(5), **kw)
    np.testing.assert_array_equal(first.delta, again.delta)
    np.testing.assert_array_equal(first.delta, fresh.delta)
    other = mlp.train(w0, xtr[:200], ytr[:200], rng=np.random.default_rng(7), **kw)
    assert not np.array_equal(first.delta, other.delta)


def test_trainer_matches_the_reference_with_the_same_shuffles():
    spec = load_spec("logreg")
    t = Trainer(spec)
    xtr, ytr, _, _ = split()
    x, y = xtr[:100], ytr[:100]
    w0 = t.initial_weights()
    res = t.train(w0, x, y, epochs=2, batch_size=32, learning_rate=0.2, rng=np.random.default_rng(9))
    rng, w, losses = np.random.default_rng(9), spec.split(w0.copy()), []
    for _ in range(2):
        order = rng.permutation(100)
        losses = []
        for lo in range(0, 100, 32):
            idx = order[lo : lo + 32]
            loss, w = reference.sgd_step("logreg", w, x[idx], y[idx], 0.2)
            losses.append(loss * len(idx))
    np.testing.assert_allclose(res.delta, spec.flatten(w) - w0, atol=1e-5)
    assert res.loss == pytest.approx(sum(losses) / 100, abs=1e-5)


def test_time_cap_stops_cleanly_between_steps(mlp):
    xtr, ytr, _, _ = split()
    ticks = itertools.count()
    clock = lambda: float(next(ticks))  # noqa: E731 - one second per look at the clock
    res = mlp.train(
        mlp.initial_weights(),
        xtr,
        ytr,
        epochs=5,
        batch_size=32,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
        max_seconds=10,
        clock=clock,
    )
    assert res.stopped == STOP_TIME_CAP
    assert res.steps == 9  # clock read at t0=0, then before each step: 1..9 pass, 10 stops
    assert 0 < res.epochs < 1 and np.isfinite(res.loss)
    np.testing.assert_array_equal(res.delta, mlp.flat_weights() - mlp.initial_weights())


def test_abort_signal_stops_training(mlp):
    xtr, ytr, _, _ = split()
    calls = itertools.count()
    res = mlp.train(
        mlp.initial_weights(),
        xtr,
        ytr,
        epochs=2,
        batch_size=32,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
        should_abort=lambda: next(calls) >= 50,
    )
    assert res.stopped == STOP_ABORTED and res.steps == 50
    assert res.epochs == pytest.approx(1 + 6 * 32 / 1400)
    immediate = mlp.train(
        mlp.initial_weights(),
        xtr,
        ytr,
        epochs=1,
        batch_size=32,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
        should_abort=lambda: True,
    )
    assert immediate.steps == 0 and np.isnan(immediate.loss) and not immediate.delta.any()


def test_profile_limits_drive_training():
    profile = load_profile(ROOT / "firmware_configs" / "pi4.toml")
    t = Trainer(load_spec("logreg"), num_threads=profile.compute.threads)
    xtr, ytr, _, _ = split()
    res = train_with_limits(t, profile.compute, t.initial_weights(), xtr[:256], ytr[:256], rng=np.random.default_rng(1))
    batches = -(-256 // profile.compute.batch_size)
    assert res.stopped is None and res.steps == profile.compute.epochs * batches


@pytest.mark.parametrize(
    "x_shape,labels,match",
    [
        ((10, 63), np.zeros(10), "shape"),
        ((10, 64), np.zeros(9), "labels"),
        ((10, 64), np.full(10, 10), "labels must be integers"),
        ((10, 64), np.full(10, -1), "labels must be integers"),
        ((10, 64), np.full(10, 0.5), "labels must be integers"),
    ],
)
def test_bad_data_is_a_training_error(mlp, x_shape, labels, match):
    with pytest.raises(TrainingError, match=match):
        mlp.train(
            mlp.initial_weights(),
            np.zeros(x_shape, np.float32),
            labels,
            epochs=1,
            batch_size=4,
            learning_rate=0.1,
            rng=np.random.default_rng(0),
        )


def test_bad_settings_and_weights_are_refused(mlp):
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int32)
    w = mlp.initial_weights()
    for kw in (
        dict(epochs=0, batch_size=4, learning_rate=0.1),
        dict(epochs=1, batch_size=0, learning_rate=0.1),
        dict(epochs=1, batch_size=4, learning_rate=float("nan")),
    ):
        with pytest.raises(ConfigError):
            mlp.train(w, x, y, rng=np.random.default_rng(0), **kw)
    with pytest.raises(TrainingError, match="flat vector"):
        mlp.set_flat_weights(w[:-1])
    with pytest.raises(TrainingError, match="non-finite"):
        mlp.set_flat_weights(np.full_like(w, np.inf))
    with pytest.raises(TrainingError, match="no training examples"):
        mlp.train(w, x[:0], y[:0], epochs=1, batch_size=4, learning_rate=0.1, rng=np.random.default_rng(0))


def test_divergence_is_reported(mlp):
    xtr, ytr, _, _ = split()
    with pytest.raises(TrainingError, match="lower the learning rate"):
        mlp.train(
            mlp.initial_weights() * 1e30,
            xtr,
            ytr,
            epochs=1,
            batch_size=32,
            learning_rate=1.0,
            rng=np.random.default_rng(0),
        )


def test_cnn_trains_on_flat_rows_too():
    t = Trainer(load_spec("cnn"))
    x = np.random.default_rng(0).uniform(0, 1, (8, 784)).astype(np.float32)
    res = t.train(
        t.initial_weights(),
        x,
        np.arange(8) % 10,
        epochs=1,
        batch_size=3,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
    )
    assert res.steps == 3 and res.delta.any()


def test_runtime_selection():
    """CI runs these tests once per runtime; FEDGE_EXPECT_RUNTIME proves which one ran."""
    assert runtime_name() in {m.split(".")[0] for m in RUNTIMES}
    assert runtime_name() == os.environ.get("FEDGE_EXPECT_RUNTIME", runtime_name())
    with pytest.raises(TrainingError, match="unknown TFLite runtime"):
        load_interpreter(load_spec("mlp").path, runtime="onnxruntime")
    with pytest.raises(TrainingError, match="num_threads"):
        load_interpreter(load_spec("mlp").path, num_threads=0)
    with pytest.raises(TrainingError, match="cannot load"):
        load_interpreter(b"TFL3 definitely not a model")
