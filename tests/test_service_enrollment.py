"""Enrollment (enroll, list, revoke, certificates) through the library and ``fedge-coordinator devices``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fedge.agent.core.certs import verify_certificate
from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.errors import ConfigError, ProtocolError, SecurityError
from fedge.coordinator.service.cli import cli
from fedge.coordinator.service.enrollment import authority, certificate, enroll, list_devices, revoke
from fedge.coordinator.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "c.db"))
    yield s
    s.close()


def key_hex() -> str:
    return IdentityKey.generate().public_bytes().hex()


def test_enroll_issues_a_certificate_the_authority_key_verifies(store) -> None:
    k = key_hex()
    d = enroll(store, "pi-1", k, "pi4", ["lab", "lab", "a"])
    assert (d.device_id, d.identity_hex, d.device_class, d.tags, d.revoked) == ("pi-1", k, "pi4", ("a", "lab"), False)
    auth = authority(store).public_bytes()
    verify_certificate(auth, "pi-1", bytes.fromhex(k), certificate(store, "pi-1"))
    with pytest.raises(SecurityError):  # the certificate binds this id to this key only
        verify_certificate(auth, "pi-2", bytes.fromhex(k), certificate(store, "pi-1"))
    assert authority(store).public_bytes() == auth  # created once, then loaded


def test_bad_ids_and_keys_are_config_errors(store) -> None:
    for dev, k in [("a/b", key_hex()), ("x" * 65, key_hex()), ("ok", "zz"), ("ok", "ab" * 31), ("ok", "ab" * 33)]:
        with pytest.raises(ConfigError):
            enroll(store, dev, k, "pi4")
    assert list_devices(store) == []


def test_revoked_devices_are_rejected_and_may_reenroll_with_a_new_key(store) -> None:
    k1 = key_hex()
    enroll(store, "pi-1", k1, "pi4")
    with pytest.raises(ConfigError, match="another identity key"):
        enroll(store, "pi-1", key_hex(), "pi4")
    enroll(store, "pi-1", k1, "pi4")  # same key again: idempotent
    revoke(store, "pi-1")
    with pytest.raises(ProtocolError):
        store.require_device("pi-1")
    with pytest.raises(ProtocolError):
        certificate(store, "pi-1")
    k2 = key_hex()
    assert enroll(store, "pi-1", k2, "pi4").identity_hex == k2
    assert store.require_device("pi-1")["revoked"] == 0
    with pytest.raises(ConfigError):
        revoke(store, "nobody")


def test_devices_cli_enroll_list_revoke(tmp_path, isolated_logging) -> None:
    db = str(tmp_path / "c.db")
    r = CliRunner()
    k = key_hex()
    out = r.invoke(
        cli, ["devices", "enroll", "--device-id", "car-7", "--identity", k, "--class", "car", "--tag", "eu", "--db", db]
    )
    assert out.exit_code == 0, out.output
    assert "enrolled car-7 (car)" in out.output and "enrollment authority" in out.output
    listed = json.loads(r.invoke(cli, ["devices", "list", "--json", "--db", db]).stdout)
    assert listed[0]["device_id"] == "car-7" and listed[0]["identity"] == k and listed[0]["tags"] == ["eu"]
    assert not listed[0]["revoked"]
    assert r.invoke(cli, ["devices", "revoke", "car-7", "--db", db]).exit_code == 0
    table = r.invoke(cli, ["devices", "list", "--db", db]).stdout
    assert "car-7" in table and "revoked" in table
    bad = r.invoke(cli, ["devices", "enroll", "--device-id", "x", "--identity", "nothex", "--class", "car", "--db", db])
    assert bad.exit_code != 0
