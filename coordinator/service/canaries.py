"""Canary clients of a live fleet's privacy audit, inside the coordinator process.

Each inserted canary of a :class:`~fedge.coordinator.rounds.audit.CanaryAudit` is a
:class:`~fedge.agent.participant.Participant` with its own identity key and an enrollment
certificate from the coordinator's authority, so real devices check it as they check any peer.
Its training is replaced by the canary update (its direction at the round's clip norm); clipping,
quantization and SecAgg+ masking are the participant's own. It adds no distributed-DP noise share:
its randomness lives in the coordinator, which could subtract it, so the round's noise is planned
over the real devices' ``min_clients`` alone and a canary's share would only blunt the audit. Messages to and from a canary
go through the wire codec but not the broker. Canaries are never devices: they are not in the
store's device table, round members or participant counts. The audit seed comes from the OS and
lives in this process only, so the audit covers the rounds of one ``serve`` run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.certs import issue_certificate
from fedge.agent.core.crypto import IdentityKey, random_seed
from fedge.agent.core.errors import FedgeError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.rounds import Task
from fedge.agent.core.secagg.params import supported_suites
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.secure import PeerDirectory, secagg_factory
from fedge.coordinator.rounds.audit import AuditResult, CanaryAudit, canary_index, is_canary

log = logging.getLogger(__name__)


class LiveCanaries:
    """The inserted canaries of one audit, their keys and certificates, and their round participants."""

    def __init__(
        self,
        pairs: int,
        dimension: int,
        delta: float,
        authority: IdentityKey,
        rng: np.random.Generator,
        seed: int | None = None,
    ) -> None:
        self.audit = CanaryAudit(pairs, dimension, random_seed() if seed is None else seed, delta)
        self._authority_public = authority.public_bytes()
        self._keys = {cid: IdentityKey.generate() for cid in self.audit.inserted_ids()}
        self._certs = {cid: issue_certificate(authority, cid, k.public_bytes()) for cid, k in self._keys.items()}
        self._rng = rng
        self._round: dict[str, Participant] = {}

    def join(self, round_id: int, rate: float) -> list[str]:
        """The canaries taking part in round ``round_id`` (each with ``rate``), ready to answer."""
        ids = self.audit.takes_part(round_id, rate)
        self._round = {cid: self._participant(cid) for cid in ids}
        return ids

    def _participant(self, cid: str) -> Participant:
        index = canary_index(cid)
        assert index is not None
        seed = self.audit.seed

        def train(task: Task) -> LocalResult:
            p = task.plan
            return LocalResult(self._update(seed, index, task.weights.size, p.privacy.clip_norm), p.example_cap, 0.0)

        directory = PeerDirectory(authority_public=self._authority_public)
        factory = secagg_factory(cid, self._keys[cid], directory)
        rng = np.random.default_rng(self._rng.integers(2**63))
        # no noise share: this process knows the canary's randomness, so its noise could be subtracted;
        # the round's noise is planned over the real devices alone (build_round's ``canaries``)
        return Participant(cid, train, rng, factory, directory, noise_share=False)

    @staticmethod
    def _update(seed: int, index: int, dimension: int, clip_norm: float) -> np.ndarray:
        from fedge.coordinator.rounds.audit import canary_update

        return canary_update(seed, index, dimension, clip_norm)

    def identity(self, cid: str) -> bytes:
        return self._keys[cid].public_bytes()

    def certificate(self, cid: str) -> bytes:
        return self._certs[cid]

    @staticmethod
    def suites() -> tuple[str, ...]:
        return supported_suites()

    def deliver(self, out: Outbound, reply: Callable[[str, Any], None]) -> None:
        """Hand one message to its canary (through the wire codec) and pass each reply to ``reply``."""
        participant = self._round.get(out.device_id)
        if participant is None:
            return
        try:
            for msg in participant.handle(wire.decode(wire.encode(out.message))):
                reply(out.device_id, wire.decode(wire.encode(msg)))
        except FedgeError as e:  # a canary that cannot go on drops out, as a device would
            log.warning("canary dropped out: %s", e, extra={"device": out.device_id})
            self._round.pop(out.device_id, None)

    def end_round(self, model_delta: np.ndarray | None) -> AuditResult | None:
        """Feed a completed round's released model delta (None: the round failed); the audit so far."""
        self._round = {}
        if model_delta is not None:
            self.audit.observe(model_delta)
        return self.audit.result() if self.audit.rounds else None


__all__ = ["LiveCanaries", "is_canary"]
