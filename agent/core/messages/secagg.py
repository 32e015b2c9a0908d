"""SecAgg+ wire messages, one pair per stage (see :mod:`agent.core.secagg.stages`).

Coordinator -> device: :class:`SecAggConfig` (broadcast, ADVERTISE_KEYS), :class:`NeighbourKeys`
(SHARE_KEYS), :class:`RelayedShares` (MASKED_INPUT), :class:`Survivors` (CONSISTENCY_CHECK),
:class:`UnmaskRequest` (UNMASK). Device -> coordinator: :class:`KeyAdvertisement`,
:class:`EncryptedShares`, :class:`MaskedInput`, :class:`SurvivorSignature`,
:class:`UnmaskShares`. Semantic checks (sizes, signatures, stage) live in the state machines;
``__post_init__`` only checks shape invariants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from agent.core.secagg.params import SecAggParams
from agent.core.wire import message


@message("secagg.config")
@dataclass(frozen=True)
class SecAggConfig:
    """The round's parameters, graph seed and ordered roster (device ids joined by newlines)."""

    round_id: int
    params: SecAggParams
    graph_seed: bytes
    roster: bytes

    @cached_property
    def roster_ids(self) -> tuple[str, ...]:
        """The roster as device ids; index i is client i of the graph."""
        return tuple(self.roster.decode("utf-8").split("\n")) if self.roster else ()


@message("secagg.advertise")
@dataclass(frozen=True)
class KeyAdvertisement:
    """A device's two X25519 public keys for the round, signed with its identity key."""

    device_id: str
    round_id: int
    c_public: bytes
    s_public: bytes
    signature: bytes


@message("secagg.neighbour_keys")
@dataclass(frozen=True)
class NeighbourKeys:
    """The advertisements of the device's neighbours that answered ADVERTISE_KEYS."""

    round_id: int
    adverts: tuple[KeyAdvertisement, ...]


@message("secagg.shares")
@dataclass(frozen=True)
class EncryptedShares:
    """A device's AEAD-sealed shares, one per neighbour; the coordinator only relays them."""

    device_id: str
    round_id: int
    recipients: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.recipients) != len(self.ciphertexts):
            raise ValueError("one ciphertext per recipient")


@message("secagg.relayed_shares")
@dataclass(frozen=True)
class RelayedShares:
    """Sealed shares addressed to one device, from the neighbours that answered SHARE_KEYS."""

    round_id: int
    senders: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.senders) != len(self.ciphertexts):
            raise ValueError("one ciphertext per sender")


@message("secagg.masked_input")
@dataclass(frozen=True)
class MaskedInput:
    """The device's masked vector (uint32, or uint16 when bits <= 16)."""

    device_id: str
    round_id: int
    vector: np.ndarray


@message("secagg.survivors")
@dataclass(frozen=True)
class Survivors:
    """Who sent a masked input: a bitmap over the roster (``numpy.packbits`` order, uint8)."""

    round_id: int
    bitmap: np.ndarray


@message("secagg.survivor_signature")
@dataclass(frozen=True)
class SurvivorSignature:
    """The device's signature over the survivor set it was shown."""

    device_id: str
    round_id: int
    signature: bytes


@message("secagg.unmask_request")
@dataclass(frozen=True)
class UnmaskRequest:
    """The neighbours' signatures over the survivor set; the device checks them before unmasking."""

    round_id: int
    signers: tuple[str, ...]
    signatures: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.signers) != len(self.signatures):
            raise ValueError("one signature per signer")


@message("secagg.unmask")
@dataclass(frozen=True)
class UnmaskShares:
    """Self-mask shares of surviving neighbours and key shares of dropped ones, never both.

    Arrays are (len(ids), 11) uint32 field elements (see :mod:`agent.core.crypto.shamir`).
    """

    device_id: str
    round_id: int
    alive: tuple[str, ...]
    self_mask_shares: np.ndarray
    dropped: tuple[str, ...]
    key_shares: np.ndarray

    def __post_init__(self) -> None:
        if set(self.alive) & set(self.dropped):
            raise ValueError("a neighbour cannot be both alive and dropped")
