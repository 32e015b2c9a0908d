"""Local data in a real SQLite store: migrations, .npz/CSV import, clear errors, exact reload, the CLI."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from fedge.agent.cli import cli
from fedge.agent.core import migrations
from fedge.agent.core.cliutil import run
from fedge.agent.core.errors import ConfigError, TrainingError
from fedge.agent.local_data import example_stats, import_examples, load_examples
from fedge.agent.store import MIGRATIONS, Store
from fedge.agent.training.models import load_spec
from fedge.agent.training.tflite_file import read_model_file
from tests.training_fixtures import digits


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "agent.db")
    yield s
    s.close()


def test_store_records_its_migrations_once(tmp_path):
    path = tmp_path / "a.db"
    Store(path).close()
    with Store(path) as s:
        assert migrations.applied(s.db) == [name for name, _ in MIGRATIONS]
        assert "examples" in s.db.table_names()
    calls = []
    extra = [("999_test", lambda db: calls.append(db["t"].create({"id": int}, pk="id")))]
    Store(path, extra_migrations=extra).close()
    Store(path, extra_migrations=extra).close()
    assert len(calls) == 1


def test_npz_import_round_trips_exactly_and_splits(store, tmp_path):
    x, y = digits()
    f = tmp_path / "d.npz"
    np.savez(f, x=x.reshape(-1, 8, 8), y=y)  # any row shape of the right size is accepted
    spec = load_spec("mlp")
    r = import_examples(store, f, spec, test_fraction=0.25, rng=np.random.default_rng(0))
    assert (r.train, r.test) == (len(x) - 449, 449)
    xtr, ytr = load_examples(store, "train", spec)
    xte, yte = load_examples(store, "test", spec)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32 and xtr.shape == (r.train, 64)
    both = np.concatenate([xtr, xte])
    order = np.lexsort(both.T[::-1])
    want = np.lexsort(x.T[::-1])
    np.testing.assert_array_equal(both[order], x[want])
    assert sorted(np.concatenate([ytr, yte]).tolist()) == sorted(y.tolist())
    stats = example_stats(store)
    assert stats["train"]["examples"] == r.train and stats["test"]["shapes"] == ["[64]"]


def test_csv_import_with_header_and_gzip(store, tmp_path):
    x, y = digits()
    rows = np.c_[x[:20], y[:20]]
    plain = tmp_path / "d.csv"
    np.savetxt(plain, rows, delimiter=",", header=",".join([f"f{i}" for i in range(64)] + ["label"]), comments="")
    packed = tmp_path / "d.csv.gz"
    with gzip.open(packed, "wt") as fh:
        np.savetxt(fh, rows[:5], delimiter=",", fmt="%.9g")
    spec = load_spec("logreg")
    assert import_examples(store, plain, spec).train == 20
    assert import_examples(store, packed, spec, split="test").test == 5
    xtr, ytr = load_examples(store, "train")
    np.testing.assert_allclose(xtr, x[:20], rtol=1e-6)
    np.testing.assert_array_equal(ytr, y[:20])
    np.testing.assert_allclose(load_examples(store, "test")[0], x[:5], rtol=1e-6)


@pytest.mark.parametrize(
    "arrays,match",
    [
        (dict(x=np.zeros((5, 63)), y=np.zeros(5)), r"shape \(63,\).*takes \(64,\)"),
        (dict(x=np.zeros((5, 64)), y=np.zeros(4)), "labels of shape"),
        (dict(x=np.zeros((5, 64)), y=np.array([0, 1, 2, 3, 10])), "label 10 of example 4"),
        (dict(x=np.zeros((5, 64)), y=np.array([0, 1, 2, 3, 1.5])), "label 1.5 of example 4"),
        (dict(x=np.zeros((5, 64)), y=np.array([0, -1, 2, 3, 1])), "label -1 of example 1"),
        (dict(x=np.full((5, 64), np.nan), y=np.zeros(5)), "NaN"),
        (dict(x=np.zeros((0, 64)), y=np.zeros(0)), "no examples"),
        (dict(features=np.zeros((5, 64)), y=np.zeros(5)), r"missing array\(s\) \['x'\]"),
        (dict(x=np.array([{"a": 1}] * 5, dtype=object), y=np.zeros(5)), "not a readable .npz"),
    ],
)
def test_bad_npz_is_a_clear_training_error(store, tmp_path, arrays, match):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(TrainingError, match=match):
        import_examples(store, f, load_spec("logreg"))
    assert example_stats(store)["train"]["examples"] == 0  # nothing half-imported


def test_bad_csv_and_bad_arguments(store, tmp_path):
    spec = load_spec("logreg")
    f = tmp_path / "bad.csv"
    f.write_text("1,2,3\n4,5,x\n")
    with pytest.raises(TrainingError, match="not a numeric CSV"):
        import_examples(store, f, spec)
    f.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(TrainingError, match=r"\(2,\).*takes \(64,\)"):
        import_examples(store, f, spec)
    with pytest.raises(ConfigError, match="no such file"):
        import_examples(store, tmp_path / "missing.npz", spec)
    (tmp_path / "d.parquet").write_text("")
    with pytest.raises(ConfigError, match="unknown data format"):
        import_examples(store, tmp_path / "d.parquet", spec)
    with pytest.raises(ConfigError, match="split"):
        import_examples(store, f, spec, split="validation")
    with pytest.raises(ConfigError, match="rng"):
        import_examples(store, f, spec, test_fraction=0.5)


def test_mixed_shapes_are_refused_on_load(store, tmp_path):
    f64, f784 = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(f64, x=np.zeros((3, 64)), y=np.zeros(3))
    np.savez(f784, x=np.zeros((3, 28, 28)), y=np.zeros(3))
    import_examples(store, f64, load_spec("logreg"))
    with pytest.raises(TrainingError, match="takes"):
        load_examples(store, "train", load_spec("cnn"))
    import_examples(store, f784, load_spec("cnn"))
    with pytest.raises(TrainingError, match="mixes example shapes"):
        load_examples(store, "train")


def test_cli_data_import_and_stats(tmp_path, capsys):
    x, y = digits()
    f = tmp_path / "d.npz"
    np.savez(f, x=x[:100], y=y[:100])
    db = str(tmp_path / "cli.db")
    assert run(cli, "fedge-agent", ["data", "import", str(f), "--model", "mlp", "--db", db]) == 0
    assert "imported 100 examples" in capsys.readouterr().out
    assert run(cli, "fedge-agent", ["data", "stats", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["examples"] == 100
    np.savez(f, x=x[:10], y=y[:10] + 10)
    assert run(cli, "fedge-agent", ["data", "import", str(f), "--model", "mlp", "--db", db]) == TrainingError.exit_code
    assert "is not an integer in [0, 10)" in capsys.readouterr().err


def test_flatbuffer_reader_rejects_garbage():
    with pytest.raises(TrainingError, match="TFL3"):
        read_model_file(b"not a model at all")
    data = load_spec("logreg").path.read_bytes()
    with pytest.raises(TrainingError, match="malformed"):
        read_model_file(data[:64])
