"""Releases that carry their architecture: a built model's .tflite and .json travel inside the
signed release, the device checks both hashes, writes the files, measures the memory one training
step takes and refuses a model over its profile's cap. Real SQLite, real keys, real TFLite."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.errors import ConfigError
from fedge.agent.core.messages.fleet import InstallResult, ReleaseManifest, SignedRelease
from fedge.agent.core.release import verify_signed
from fedge.agent.releases import LocalEvaluator, ReleaseManager
from fedge.agent.store import Store as AgentStore
from fedge.agent.training.memory import training_peak_bytes
from fedge.agent.training.models import MODELS_DIR, load_spec
from fedge.agent.training.trainer import Trainer
from fedge.coordinator.fleet.releases import (
    create_release,
    import_model,
    model_path,
    signed_release,
    trusted_keys,
)
from fedge.coordinator.store import Store

SPECS = MODELS_DIR / "specs"


@pytest.fixture
def coord(tmp_path):
    store = Store(str(tmp_path / "coordinator.db"))
    store.put_model("mlp-0", Trainer(load_spec("mlp")).initial_weights(), architecture="mlp")
    create_release(store, "mlp-0")
    yield store
    store.close()


def _device(tmp_path, coord, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = AgentStore(tmp_path / "agent.db")
    models = tmp_path / "models"
    mgr = ReleaseManager(s.db, "dev-1", models_dir=models, evaluator=LocalEvaluator(s, models_dir=models), **kw)
    for public in trusted_keys(coord).values():
        mgr.trust_key(public)
    return s, mgr


def test_import_model_signs_the_files_and_a_device_installs_and_trains_it(tmp_path, coord):
    rel = import_model(coord, SPECS / "digits_cnn.tflite", version="dcnn-0")
    m = rel.manifest
    tfl, meta = (SPECS / "digits_cnn.tflite").read_bytes(), (SPECS / "digits_cnn.json").read_bytes()
    import hashlib

    assert m.architecture == "digits_cnn" and m.model_sha256 == hashlib.sha256(tfl).hexdigest()
    assert m.model_meta_sha256 == hashlib.sha256(meta).hexdigest() and m.source == "import:digits_cnn.tflite"
    signed = signed_release(coord, "dcnn-0")
    assert signed.model == tfl and signed.model_meta == meta
    # it travels through the wire codec whole
    back = wire.decode(wire.encode(signed), expect=SignedRelease)
    assert back.model == tfl and back.manifest == m

    s, mgr = _device(tmp_path, coord)
    try:
        assert mgr.install(signed_release(coord, "mlp-0"), "r0").result is InstallResult.INSTALLED
        report = mgr.install(back, "r1")
        assert report.result is InstallResult.INSTALLED, report
        assert mgr.running() == "dcnn-0"
        path = mgr.model_path(mgr.current())
        assert path.read_bytes() == tfl and path.with_suffix(".json").read_bytes() == meta
        assert path.is_relative_to(tmp_path / "models")
        assert mgr.last_model_memory is not None and mgr.last_model_memory > 0
        # the device trains the installed file (its own copy), from the release's weights
        t = Trainer(load_spec(path))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 64)).astype(np.float32)
        y = rng.integers(0, 10, 40)
        r = t.train(mgr.current().weights, x, y, epochs=1, batch_size=8, learning_rate=0.05, rng=rng)
        assert r.steps == 5 and np.isfinite(r.loss) and np.abs(r.delta).sum() > 0
        # the file is gone from disk: the store's copy (hash-checked) brings it back
        path.unlink()
        assert mgr.model_path(mgr.current()).read_bytes() == tfl
    finally:
        s.close()
    # the coordinator can train it too: the architecture name resolves to the stored files
    assert load_spec(model_path(coord, "digits_cnn", tmp_path / "coord-models")).name == "digits_cnn"
    assert model_path(coord, "mlp") is None


def test_a_round_output_of_a_built_model_carries_its_files(tmp_path, coord):
    import_model(coord, SPECS / "digits_cnn.tflite", version="dcnn-0")
    w = coord.model("dcnn-0").weights + 0.01
    coord.put_model("digits_cnn-r1", w, architecture="digits_cnn", parent="dcnn-0", produced_by_round=1)
    rel = create_release(coord, "digits_cnn-r1")
    assert rel.manifest.model_sha256 == coord.db.execute("select model_sha256 from model_files").fetchone()[0]
    assert signed_release(coord, "digits_cnn-r1").model == (SPECS / "digits_cnn.tflite").read_bytes()
    # a zoo release carries nothing and signs what it signed before model files existed
    zoo = signed_release(coord, "mlp-0")
    assert zoo.model == b"" and zoo.manifest.model_sha256 == ""


def test_tampered_or_missing_model_files_are_refused(tmp_path, coord):
    import_model(coord, SPECS / "digits_cnn.tflite", version="dcnn-0")
    good = signed_release(coord, "dcnn-0")
    keys = trusted_keys(coord)
    verify_signed(good, keys)
    flipped = bytearray(good.model)
    flipped[len(flipped) // 2] ^= 0x01
    bad_model = dataclasses.replace(good, model=bytes(flipped))
    bad_meta = dataclasses.replace(good, model_meta=good.model_meta.replace(b"digits", b"digitz"))
    stripped = dataclasses.replace(good, model=b"", model_meta=b"")
    # hashes dropped from the manifest (a zoo-looking release) but files still attached: signature fails
    unsigned = dataclasses.replace(
        good, manifest=dataclasses.replace(good.manifest, model_sha256="", model_meta_sha256="")
    )
    s, mgr = _device(tmp_path, coord)
    try:
        for i, rel in enumerate((bad_model, bad_meta, stripped, unsigned)):
            report = mgr.install(rel, f"r{i}")
            assert report.result is InstallResult.REFUSED and report.detail == "release refused", i
        assert mgr.running() == "" and not (tmp_path / "models").exists()  # nothing written
        assert mgr.install(good, "ok").result is InstallResult.INSTALLED
    finally:
        s.close()


def test_a_model_over_the_memory_cap_fails_to_install_with_the_reason(tmp_path, coord):
    import_model(coord, SPECS / "har_cnn1d.tflite", version="har-0")
    s, mgr = _device(tmp_path, coord, memory_cap_mb=4, batch_size=32)
    try:
        assert mgr.install(signed_release(coord, "mlp-0"), "r0").result is InstallResult.INSTALLED
        report = mgr.install(signed_release(coord, "har-0"), "r1")
        need = mgr.last_model_memory
        # measured on this machine: 13.2 MiB at batch 32 (docs/fleet.md); the cap is 4 MiB
        assert need is not None and need > 4 * 2**20
        assert report.result is InstallResult.FAILED and "over this device's cap of 4 MiB" in report.detail, report
        assert f"needs {need / 2**20:.1f} MiB at batch 32 (measured)" in report.detail
        assert mgr.running() == "mlp-0" and mgr.taken("r1") == "failed"
    finally:
        s.close()
    s, mgr = _device(tmp_path / "big", coord, memory_cap_mb=512, batch_size=32)
    try:
        assert mgr.install(signed_release(coord, "har-0"), "r1").result is InstallResult.INSTALLED
    finally:
        s.close()


def test_a_model_this_devices_data_cannot_feed_fails_to_install_with_the_reason(tmp_path, coord):
    """Before, the release installed (only the test split was checked, and this device has none), then the
    daemon switched its model, failed on its own data and a restart refused to start. Now the install
    fails, naming the shapes, and the device keeps running what it ran."""
    from fedge.agent.local_data import import_examples

    import_model(coord, SPECS / "har_cnn1d.tflite", version="har-0")
    s, mgr = _device(tmp_path, coord)
    try:
        data = tmp_path / "digits.npz"
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.normal(size=(20, 64)).astype(np.float32), y=rng.integers(0, 10, 20))
        import_examples(s, data, load_spec("mlp"), split="train", test_fraction=0.0)
        assert mgr.install(signed_release(coord, "mlp-0"), "r0").result is InstallResult.INSTALLED
        report = mgr.install(signed_release(coord, "har-0"), "r1")
        assert report.result is InstallResult.FAILED, report
        assert "stored train examples have shape (64,); model har_cnn1d takes (128, 6)" in report.detail, report
        assert mgr.running() == "mlp-0" and mgr.taken("r1") == "failed"
    finally:
        s.close()


def test_measured_training_memory_grows_with_the_batch():
    small = training_peak_bytes(SPECS / "har_cnn1d.tflite", 32)
    large = training_peak_bytes(SPECS / "har_cnn1d.tflite", 256)
    # activations and gradients of 224 more 128x6 windows through 16/32-channel convolutions:
    # at least 224 * 128 * 16 * 4 bytes (one conv output, float32) more
    assert large - small > 224 * 128 * 16 * 4, (small, large)


def test_import_model_refusals(tmp_path, coord):
    with pytest.raises(ConfigError, match="found 0"):
        import_model(coord, tmp_path, version="x-0")
    import_model(coord, SPECS / "digits_cnn.tflite", version="dcnn-0")
    with pytest.raises(ConfigError, match="exists already"):
        import_model(coord, SPECS / "digits_cnn.tflite", version="dcnn-0")
    # files whose metadata does not match the model are refused before anything is stored
    other = tmp_path / "other"
    other.mkdir()
    (other / "digits_cnn.tflite").write_bytes((SPECS / "digits_cnn.tflite").read_bytes())
    (other / "digits_cnn.json").write_bytes((SPECS / "sensor_regression.json").read_bytes())
    with pytest.raises(ConfigError, match="not a trainable built model"):
        import_model(coord, other, version="x-1")
    # another model under a name already imported is refused (its releases would change meaning)
    coord.db.execute("update model_files set meta = cast(meta || x'20' as blob) where architecture = 'digits_cnn'")
    with pytest.raises(ConfigError, match="different model named 'digits_cnn'"):
        import_model(coord, SPECS / "digits_cnn.tflite", version="x-2")


def test_an_old_release_message_without_model_fields_still_decodes(coord):
    zoo = signed_release(coord, "mlp-0")
    m = zoo.manifest
    old_manifest = [getattr(m, f.name) for f in dataclasses.fields(ReleaseManifest)][:-2]
    # what a coordinator from before this change sent: 10 manifest fields, 3 release fields
    import msgpack

    from fedge.agent.core.wire import MAGIC, WIRE_VERSION, _to_plain

    plain = _to_plain(zoo)
    assert len(plain) == 5 and len(plain[0]) == 12
    old = msgpack.packb([MAGIC, WIRE_VERSION, "fleet.release", [plain[0][:10], *plain[1:3]]], use_bin_type=True)
    back = wire.decode(old, expect=SignedRelease)
    assert back.manifest == m and back.model == b"" and old_manifest[0] == m.version
    verify_signed(back, trusted_keys(coord))
