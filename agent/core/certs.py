"""Device identity certificates: the enrollment authority's signature over (device id, identity key).

A device learns its SecAgg+ neighbours' identity keys from the coordinator, which could lie; each
key therefore comes with the enrollment authority's signature, and the device checks it against
the authority key it received when it was enrolled. Trust rests on that key, not on the round.
"""

from __future__ import annotations

from fedge.agent.core.crypto import IdentityKey, transcript, verify


def certificate_payload(device_id: str, identity_public: bytes) -> bytes:
    """What the enrollment authority signs for one device."""
    return transcript("enrollment/device-cert", device_id, identity_public)


def issue_certificate(authority: IdentityKey, device_id: str, identity_public: bytes) -> bytes:
    """The authority's 64-byte signature binding ``device_id`` to ``identity_public``."""
    return authority.sign(certificate_payload(device_id, identity_public))


def verify_certificate(authority_public: bytes, device_id: str, identity_public: bytes, certificate: bytes) -> None:
    """Raise an opaque SecurityError unless the authority certified this binding."""
    verify(authority_public, certificate_payload(device_id, identity_public), certificate)
