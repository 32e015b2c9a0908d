"""Certificates for the broker's TLS: a fleet CA, the broker's server certificate, and one client
certificate per device (its common name is the device id, which Mosquitto's
``use_identity_as_username`` turns into the username the ACL patterns match).

Only for the broker's transport security; protocol keys live in ``fedge.agent.core.crypto``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.agent.core.errors import ConfigError
from fedge.agent.core.topics import check_device_id

COORDINATOR_CN = "coordinator"


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM private key (unencrypted: store it with mode 0600)."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``name.crt`` and ``name.key`` (0600) into ``directory``; return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return crt, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(cn: str = "fedge fleet CA", *, days: int = 3650, now: dt.datetime | None = None) -> CertKey:
    """A self-signed CA that signs the broker's and the devices' certificates."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def issue(
    ca: CertKey,
    cn: str,
    *,
    server_names: tuple[str, ...] = (),
    days: int = 825,
    now: dt.datetime | None = None,
) -> CertKey:
    """A certificate for ``cn`` signed by ``ca``: a server one if ``server_names`` (DNS names or IPs)."""
    now = now or dt.datetime.now(dt.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def issue_device(ca: CertKey, device_id: str, **kw: object) -> CertKey:
    """A client certificate whose common name is the (validated) device id."""
    if device_id == COORDINATOR_CN:
        raise ConfigError(f"{COORDINATOR_CN!r} is reserved for the coordinator's certificate")
    return issue(ca, check_device_id(device_id), **kw)  # type: ignore[arg-type]


def make_broker_pki(
    directory: Path, devices: tuple[str, ...], *, broker_names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> dict[str, tuple[Path, Path]]:
    """Write ``ca``, ``broker``, ``coordinator`` and one pair per device into ``directory``."""
    ca = make_ca()
    out = {"ca": ca.write(directory, "ca")}
    out["broker"] = issue(ca, "fedge-broker", server_names=broker_names).write(directory, "broker")
    out[COORDINATOR_CN] = issue(ca, COORDINATOR_CN).write(directory, COORDINATOR_CN)
    for d in devices:
        out[d] = issue_device(ca, d).write(directory, d)
    return out
