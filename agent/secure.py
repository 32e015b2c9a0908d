"""Device-side glue between a round's :class:`~fedge.agent.participant.Participant` and SecAgg+.

:class:`PeerDirectory` holds the neighbours' identity keys a device trusts for one round: either
certified by the enrollment authority (:class:`~fedge.agent.core.messages.rounds.Peers`, the MQTT
deployment) or handed over by a trusted party (the simulator, which plays the PKI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from fedge.agent.core.certs import verify_certificate
from fedge.agent.core.crypto import AgreementKey, IdentityKey, exchange, verify
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.rounds import Peers, Task
from fedge.agent.core.secagg.client import SecAggClient

log = logging.getLogger(__name__)


class PeerDirectory:
    """Identity keys of peers, accepted only with a valid enrollment certificate (or pre-trusted)."""

    def __init__(
        self, authority_public: bytes | None = None, trusted: Callable[[str], bytes | None] | None = None
    ) -> None:
        if authority_public is None and trusted is None:
            raise ValueError("a peer directory needs an enrollment authority key or a trusted lookup")
        self._authority = authority_public
        self._trusted = trusted
        self._keys: dict[str, bytes] = {}

    def add(self, msg: Peers) -> None:
        """Verify every certificate first (SecurityError on any bad one), then accept them all."""
        if self._authority is None:
            raise ProtocolError("this device does not take certified peers")
        for d, k, c in zip(msg.device_ids, msg.identity_keys, msg.certificates):
            verify_certificate(self._authority, d, k, c)
        self._keys.update(zip(msg.device_ids, msg.identity_keys))

    def lookup(self, device_id: str) -> bytes | None:
        key = self._keys.get(device_id)
        if key is None and self._trusted is not None:
            key = self._trusted(device_id)
        return key


def secagg_factory(
    device_id: str,
    identity: IdentityKey,
    directory: PeerDirectory,
    verifier: Callable[[bytes, bytes, bytes], None] = verify,
    agreement: Callable[[AgreementKey, bytes], bytes] = exchange,
    require_suite: str | None = None,
) -> Callable[[Task, np.ndarray], SecAggClient]:
    """What a Participant calls to build its SecAgg+ client for a task, with its input set.

    ``verifier`` checks peers' signatures and ``agreement`` computes X25519 secrets; a simulator
    host passes one shared :class:`~fedge.agent.core.crypto.SignatureMemo` and
    :class:`~fedge.agent.core.crypto.AgreementMemo` for all of its devices. ``require_suite`` (the
    profile's ``[secagg] require_suite``) makes the client refuse a round with any other suite.
    """

    def build(task: Task, vector: np.ndarray) -> SecAggClient:
        client = SecAggClient(
            device_id,
            identity,
            directory.lookup,
            round_id=task.round_id,
            verifier=verifier,
            agreement=agreement,
            require_suite=require_suite,
        )
        client.set_input(vector)
        return client

    return build


def trusted_lookup(keys: Mapping[str, bytes]) -> Callable[[str], bytes | None]:
    """A lookup over keys the caller vouches for (the simulator's own roster)."""
    return keys.get
