"""Release signing on the device: nothing tampered, mis-signed or signed by an unknown key is ever
loaded, the previous release keeps running, and the release key rotates without re-enrollment."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import SecurityError
from fedge.agent.core.messages.fleet import InstallCommand, InstallResult, ReleaseManifest, SignedRelease
from fedge.agent.core.release import (
    apply_rotation,
    key_id,
    sign_release,
    sign_rotation,
    verify_release,
    weights_sha256,
)
from fedge.agent.releases import ReleaseManager
from fedge.agent.store import Store as AgentStore
from fedge.coordinator.fleet import releases as coord_releases
from fedge.coordinator.store import Store

DEVICE = "dev-1"


def _release(key: IdentityKey, version: str, weights: np.ndarray, **kw) -> SignedRelease:
    w = np.ascontiguousarray(weights, dtype="<f4")
    m = ReleaseManifest(
        version,
        kw.get("parent", ""),
        "logreg",
        weights_sha256(w),
        w.size,
        {"accuracy": 0.9},
        (3,),
        "rounds",
        key_id(key.public_bytes()),
        1.0,
    )
    return SignedRelease(m, sign_release(m, key), w)


class _Device:
    """A ReleaseManager on a real agent store, with an evaluator that records what it was asked to load."""

    def __init__(self, path, trusted: IdentityKey) -> None:
        self.store = AgentStore(path)
        self.loaded: list[str] = []
        self.manager = ReleaseManager(self.store.db, DEVICE, evaluator=self._eval)
        self.manager.trust_key(trusted.public_bytes())

    def _eval(self, manifest, weights):
        self.loaded.append(manifest.version)
        return 0.5, 10

    def install(self, rel: SignedRelease, rollout: str):
        (report,) = self.manager.handle(wire.decode(wire.encode(InstallCommand(DEVICE, rollout, rel))))
        return report


@pytest.fixture()
def setup(tmp_path):
    key = IdentityKey.generate()
    dev = _Device(tmp_path / "a.db", key)
    w1 = np.random.default_rng(0).normal(size=650).astype(np.float32)
    r1 = _release(key, "v1", w1)
    assert dev.install(r1, "ro-1").result is InstallResult.INSTALLED
    dev.r1 = r1
    yield key, dev, r1
    dev.store.close()


def _assert_refused(dev: _Device, rel: SignedRelease, rollout: str) -> None:
    loaded = list(dev.loaded)
    report = dev.install(rel, rollout)
    assert report.result is InstallResult.REFUSED and report.detail == "release refused"
    assert dev.loaded == loaded  # never handed to the interpreter
    assert dev.manager.running() == "v1" and report.running == "v1"
    np.testing.assert_array_equal(dev.manager.current().weights, dev.r1.weights)  # the previous release, intact


def test_tampered_weights_are_never_loaded(setup):
    key, dev, r1 = setup
    good = _release(key, "v2", np.ones(650, np.float32), parent="v1")
    w = good.weights.copy()
    w[17] += 1e-3
    _assert_refused(dev, dataclasses.replace(good, weights=w), "ro-2")
    # same hash claim, truncated weights
    _assert_refused(dev, dataclasses.replace(good, weights=good.weights[:-1].copy()), "ro-3")


def test_tampered_manifest_and_wrong_signatures_are_refused(setup):
    key, dev, r1 = setup
    good = _release(key, "v2", np.ones(650, np.float32), parent="v1")
    better = dataclasses.replace(good.manifest, metrics={"accuracy": 0.99})
    _assert_refused(dev, dataclasses.replace(good, manifest=better), "ro-2")
    sig = bytearray(good.signature)
    sig[0] ^= 1
    _assert_refused(dev, dataclasses.replace(good, signature=bytes(sig)), "ro-3")
    # an attacker's key claiming the trusted key id
    attacker = IdentityKey.generate()
    forged = attacker.sign(good.manifest.canonical_bytes())
    _assert_refused(dev, dataclasses.replace(good, signature=forged), "ro-4")


def test_unknown_key_is_refused(setup):
    _, dev, _ = setup
    _assert_refused(dev, _release(IdentityKey.generate(), "v2", np.ones(650, np.float32)), "ro-2")


def test_refusal_is_opaque_and_verify_returns_float32(setup):
    key, _, r1 = setup
    w = verify_release(r1.manifest, r1.signature, r1.weights, {key_id(key.public_bytes()): key.public_bytes()})
    assert w.dtype == np.float32
    errors = []
    for trusted in ({}, {r1.manifest.key_id: IdentityKey.generate().public_bytes()}):
        with pytest.raises(SecurityError) as e:
            verify_release(r1.manifest, r1.signature, r1.weights, trusted)
        errors.append(str(e.value))
    assert errors == ["release refused"] * 2


def test_failed_install_keeps_the_previous_release_and_rollback_restores_it(setup):
    key, dev, r1 = setup
    r2 = _release(key, "v2", np.ones(650, np.float32), parent="v1")

    def broken(manifest, weights):
        raise MemoryError("no room")

    dev.manager._evaluator = broken
    report = dev.install(r2, "ro-2")
    assert report.result is InstallResult.FAILED and dev.manager.running() == "v1"
    dev.manager._evaluator = dev._eval
    assert dev.install(r2, "ro-3").result is InstallResult.INSTALLED
    assert dev.manager.previous().manifest.version == "v1"
    assert dev.manager.rollback("ro-3", "v2").result is InstallResult.ROLLED_BACK
    assert dev.manager.running() == "v1" and dev.manager.previous() is None
    np.testing.assert_array_equal(dev.manager.current().weights, r1.weights)


def test_key_rotation_without_reenrollment(tmp_path):
    store = Store(str(tmp_path / "c.db"))
    try:
        store.put_model("v1", np.zeros(650, np.float32), architecture="logreg")
        old = coord_releases.release_key(store)
        coord_releases.create_release(store, "v1")
        dev = _Device(tmp_path / "a.db", old)
        assert dev.install(coord_releases.signed_release(store, "v1"), "ro-1").result is InstallResult.INSTALLED

        rotation = coord_releases.rotate_key(store)  # retires the old key
        new = coord_releases.release_key(store)
        assert key_id(new.public_bytes()) != key_id(old.public_bytes())
        store.put_model("v2", np.ones(650, np.float32), architecture="logreg", parent="v1")
        coord_releases.create_release(store, "v2")
        rel2 = coord_releases.signed_release(store, "v2")
        assert rel2.manifest.key_id == key_id(new.public_bytes())
        assert dev.install(rel2, "ro-2").result is InstallResult.REFUSED  # not trusted yet

        dev.manager.handle(wire.decode(wire.encode(rotation)))
        assert set(dev.manager.trusted_keys()) == {key_id(new.public_bytes())}
        assert dev.install(rel2, "ro-3").result is InstallResult.INSTALLED
        # the retired key no longer installs anything
        assert dev.install(_release(old, "v3", np.ones(650, np.float32)), "ro-4").result is InstallResult.REFUSED
        # a release signed by the retired key can be re-signed with the new one
        assert coord_releases.sign_release_version(store, "v1").manifest.key_id == key_id(new.public_bytes())
        assert [r.sequence for r in coord_releases.rotations(store)] == [1]
        dev.store.close()
    finally:
        store.close()


def test_rotations_are_checked_and_may_arrive_out_of_order(tmp_path):
    k1, k2, k3 = (IdentityKey.generate() for _ in range(3))
    ids = [key_id(k.public_bytes()) for k in (k1, k2, k3)]
    trusted = {ids[0]: k1.public_bytes()}
    rot1 = sign_rotation(k1, k2, 1, (ids[0],))
    rot2 = sign_rotation(k2, k3, 2, (ids[1],))
    with pytest.raises(SecurityError):
        apply_rotation(trusted, 0, rot2)  # signer not trusted yet
    with pytest.raises(SecurityError):
        apply_rotation(trusted, 1, rot1)  # replay of an applied sequence
    with pytest.raises(SecurityError):  # not signed by the new key
        apply_rotation(trusted, 0, dataclasses.replace(rot1, new_key_signature=k1.sign(b"x")))
    with pytest.raises(SecurityError):  # an attacker's self-signed rotation
        apply_rotation(trusted, 0, sign_rotation(IdentityKey.generate(), k3, 1))
    assert apply_rotation(trusted, 0, rot1) == {ids[1]: k2.public_bytes()}

    dev = _Device(tmp_path / "a.db", k1)
    try:
        dev.manager.handle(rot2)  # held until rot1 makes its signer trusted
        assert set(dev.manager.trusted_keys()) == {ids[0]}
        dev.manager.handle(rot1)
        assert set(dev.manager.trusted_keys()) == {ids[2]}
        dev.manager.handle(rot1)  # replayed: ignored
        assert set(dev.manager.trusted_keys()) == {ids[2]}
    finally:
        dev.store.close()


def test_canonical_bytes_cover_every_field():
    key = IdentityKey.generate()
    m = _release(key, "v1", np.zeros(4, np.float32)).manifest
    changes = dict(
        version="v2",
        parent="v0",
        architecture="mlp",
        sha256="0" * 64,
        num_params=5,
        metrics={"accuracy": 0.1},
        produced_by=(4,),
        source="import:x.npz",
        key_id="0" * 16,
        created=2.0,
        model_sha256="1" * 64,
        model_meta_sha256="2" * 64,
    )
    assert set(changes) == {f.name for f in dataclasses.fields(ReleaseManifest)}
    with_model = dataclasses.replace(m, model_sha256="3" * 64, model_meta_sha256="4" * 64)
    for field, value in changes.items():
        for base in (m, with_model):
            if field.startswith("model_") and base is m:
                continue  # the two model hashes go together; covered on a manifest that carries a model
            assert dataclasses.replace(base, **{field: value}).canonical_bytes() != base.canonical_bytes(), field
    assert with_model.canonical_bytes() != m.canonical_bytes()


def test_a_corrupt_stored_release_is_detected_and_replaced(setup):
    key, dev, r1 = setup
    blob = bytearray(dev.store.db.execute("select release from releases where slot = 'current'").fetchone()[0])
    blob[-10] ^= 0xFF  # a weight byte flipped on disk
    with dev.store.db.conn:
        dev.store.db.execute("update releases set release = ? where slot = 'current'", [bytes(blob)])
    with pytest.raises(SecurityError):
        dev.manager.current()
    r2 = _release(key, "v2", np.ones(650, np.float32), parent="v1")
    report = dev.install(r2, "ro-2")
    assert report.result is InstallResult.INSTALLED and report.baseline is None
    np.testing.assert_array_equal(dev.manager.current().weights, r2.weights)
