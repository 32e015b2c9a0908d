"""Anti-rollback: a device refuses a genuine, correctly signed release that is older than the one
it runs on the same model line when it comes as a new rollout; going back is only the rollback
command of a rollout it took. Real agent store, real Ed25519 release keys."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.messages.fleet import (
    InstallCommand,
    InstallResult,
    ReleaseManifest,
    RollbackCommand,
    SignedRelease,
)
from fedge.agent.core.release import key_id, sign_release, sign_rollback, weights_sha256
from fedge.agent.releases import ReleaseManager
from fedge.agent.store import Store as AgentStore

DEVICE = "dev-1"


def _release(key: IdentityKey, version: str, created: float, parent: str = "", arch: str = "logreg") -> SignedRelease:
    w = np.random.default_rng(int(created)).normal(size=650).astype("<f4")
    m = ReleaseManifest(
        version,
        parent,
        arch,
        weights_sha256(w),
        w.size,
        {"accuracy": 0.9},
        (3,),
        "rounds",
        key_id(key.public_bytes()),
        created,
    )
    return SignedRelease(m, sign_release(m, key), w)


@pytest.fixture()
def device(tmp_path):
    key = IdentityKey.generate()
    store = AgentStore(tmp_path / "a.db")
    manager = ReleaseManager(store.db, DEVICE, evaluator=lambda m, w: (0.5, 10))
    manager.trust_key(key.public_bytes())

    def send(msg):
        (report,) = manager.handle(wire.decode(wire.encode(msg)))
        return report

    yield key, manager, send
    store.close()


def test_an_old_genuine_release_under_a_new_rollout_id_is_refused(device):
    key, manager, send = device
    old, new = _release(key, "v1", 100.0), _release(key, "v2", 200.0, parent="v1")
    assert send(InstallCommand(DEVICE, "ro-1", old)).result is InstallResult.INSTALLED
    assert send(InstallCommand(DEVICE, "ro-2", new)).result is InstallResult.INSTALLED
    replay = send(InstallCommand(DEVICE, "ro-evil", old))
    assert replay.result is InstallResult.REFUSED and replay.detail == "older than the running release"
    assert manager.running() == "v2"
    # an older release signed later than v2 but named as v2's parent is refused too
    assert send(InstallCommand(DEVICE, "ro-evil-2", _release(key, "v1", 300.0))).result is InstallResult.REFUSED
    # the signed rollback of a rollout it took still goes back
    assert send(sign_rollback(key, DEVICE, "ro-2", "v2")).result is InstallResult.ROLLED_BACK
    assert manager.running() == "v1"
    # newer releases and other model lines install as before
    assert (
        send(InstallCommand(DEVICE, "ro-3", _release(key, "v3", 300.0, parent="v2"))).result is InstallResult.INSTALLED
    )
    assert send(InstallCommand(DEVICE, "ro-4", _release(key, "m1", 50.0, arch="mlp"))).result is InstallResult.INSTALLED


def test_a_rollback_names_a_rollout_the_device_took(device):
    key, manager, send = device
    assert send(InstallCommand(DEVICE, "ro-1", _release(key, "v1", 100.0))).result is InstallResult.INSTALLED
    assert (
        send(InstallCommand(DEVICE, "ro-2", _release(key, "v2", 200.0, parent="v1"))).result is InstallResult.INSTALLED
    )
    assert send(sign_rollback(key, DEVICE, "ro-other", "v2")).result is InstallResult.UNCHANGED
    # a rollout the device took, but not the one that installed what it runs now
    assert send(sign_rollback(key, DEVICE, "ro-1", "v2")).result is InstallResult.UNCHANGED
    assert manager.running() == "v2"


def test_a_rollback_not_signed_by_a_trusted_release_key_is_refused(device):
    """Going back is as guarded as going forward: unsigned, forged or another key's rollbacks change nothing."""
    key, manager, send = device
    assert send(InstallCommand(DEVICE, "ro-1", _release(key, "v1", 100.0))).result is InstallResult.INSTALLED
    assert (
        send(InstallCommand(DEVICE, "ro-2", _release(key, "v2", 200.0, parent="v1"))).result is InstallResult.INSTALLED
    )
    stranger = IdentityKey.generate()
    good = sign_rollback(key, DEVICE, "ro-2", "v2")
    forged = [
        sign_rollback(stranger, DEVICE, "ro-2", "v2"),  # an untrusted key
        RollbackCommand(DEVICE, "ro-2", "v2", good.key_id, bytes(64)),  # the trusted key's id, no signature
        RollbackCommand(DEVICE, "ro-2", "v2", good.key_id, sign_rollback(key, "dev-2", "ro-2", "v2").signature),
    ]
    for cmd in forged:
        report = send(cmd)
        assert report.result is InstallResult.REFUSED and report.detail == "rollback signature refused", report
    assert manager.running() == "v2"
    assert send(good).result is InstallResult.ROLLED_BACK and manager.running() == "v1"
