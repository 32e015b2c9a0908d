"""FedProx in the simulator: the numpy reference trainer's proximal step equals the TFLite
trainer's (both apply w -= lr * mu * (w - w_global) after each SGD step), and --prox-mu pulls the
local models toward the global one (smaller deltas, same seed)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer
from fedge.simulations.trainers import ReferenceTrainer


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_reference_and_tflite_fedprox_agree(mu):
    spec = load_spec("logreg")
    rng = np.random.default_rng(0)
    x = rng.random((40, 64), dtype=np.float32)
    y = rng.integers(0, 10, 40)
    tfl = Trainer(spec, num_threads=1)
    start = (rng.standard_normal(spec.num_params) * 0.1).astype(np.float32)
    a = tfl.train(start, x, y, epochs=3, batch_size=8, learning_rate=0.2, rng=np.random.default_rng(5), prox_mu=mu)
    b = ReferenceTrainer(spec, np.random.default_rng(1)).train(
        start, x, y, epochs=3, batch_size=8, learning_rate=0.2, rng=np.random.default_rng(5), prox_mu=mu
    )
    np.testing.assert_allclose(a.delta, b.delta, atol=2e-5)


def test_the_proximal_term_shrinks_the_local_delta():
    spec = load_spec("logreg")
    rng = np.random.default_rng(2)
    x = rng.random((60, 64), dtype=np.float32)
    y = rng.integers(0, 10, 60)
    ref = ReferenceTrainer(spec, np.random.default_rng(1))
    start = np.zeros(spec.num_params, np.float32)
    plain = ref.train(start, x, y, epochs=5, batch_size=10, learning_rate=0.3, rng=np.random.default_rng(3))
    prox = ref.train(start, x, y, epochs=5, batch_size=10, learning_rate=0.3, rng=np.random.default_rng(3), prox_mu=1.0)
    assert np.linalg.norm(prox.delta) < 0.9 * np.linalg.norm(plain.delta)
