"""SecAgg+ wire messages, one pair per stage (see :mod:`fedge.agent.core.secagg.stages`).

Coordinator -> device: :class:`SecAggConfig` (broadcast, ADVERTISE_KEYS), :class:`NeighbourKeys`
(SHARE_KEYS), :class:`RelayedShares` (MASKED_INPUT), :class:`Survivors` (CONSISTENCY_CHECK),
:class:`UnmaskRequest` (UNMASK). Device -> coordinator: :class:`KeyAdvertisement`,
:class:`EncryptedShares`, :class:`MaskedInput`, :class:`SurvivorSignature`,
:class:`UnmaskShares`. Lists of devices travel as uint32 roster indices (the order of
``SecAggConfig.roster``) and fixed-size items as one concatenated ``bytes``, so decoding costs
O(1) Python work per message. Semantic checks (sizes, signatures, stage) live in the state
machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedge.agent.core.secagg.params import SecAggParams
from fedge.agent.core.wire import message

#: Sealed share size: nonce 12 + (sender, receiver) 8 + 2 x 11 uint32 field elements + tag 16.
SEALED_SHARE_BYTES = 12 + 8 + 88 + 16
#: The 32-byte pair item the hybrid suite seals with each share (the pair secret to a larger index,
#: the wrap key to a smaller one; docs/secagg.md, "Hybrid suite").
PAIR_ITEM_BYTES = 32
#: Sealed share size under the hybrid suite.
SEALED_SHARE_BYTES_PQ = SEALED_SHARE_BYTES + PAIR_ITEM_BYTES
SIGNATURE_BYTES = 64


@message("secagg.config")
@dataclass(frozen=True)
class SecAggConfig:
    """The round's parameters, graph seed, ordered roster (device ids joined by newlines) and the
    cipher suite the coordinator runs (devices refuse any but their own)."""

    round_id: int
    params: SecAggParams
    graph_seed: bytes
    roster: bytes
    #: no default: a config from before the suite field must not decode as the classic suite
    suite: str

    @cached_property
    def roster_ids(self) -> tuple[str, ...]:
        """The roster as device ids; index i is client i of the graph."""
        return tuple(self.roster.decode("utf-8").split("\n")) if self.roster else ()


@message("secagg.advertise")
@dataclass(frozen=True)
class KeyAdvertisement:
    """A device's two X25519 public keys for the round, signed with its identity key. Under the
    hybrid suite ``kem_public`` holds its ML-KEM-768 encapsulation key for share channels (1,184
    bytes), signed with them; empty otherwise."""

    device_id: str
    round_id: int
    c_public: bytes
    s_public: bytes
    signature: bytes
    kem_public: bytes = b""


@message("secagg.neighbour_keys")
@dataclass(frozen=True)
class NeighbourKeys:
    """The advertisements of the device's neighbours that answered ADVERTISE_KEYS, packed.

    ``indices`` are roster indices (uint32); ``keys`` holds 64 bytes per neighbour
    (c_public || s_public, then its ``kem_public`` under the hybrid suite) and ``signatures`` 64
    bytes per neighbour, in the same order.
    """

    round_id: int
    indices: np.ndarray
    keys: bytes
    signatures: bytes


@message("secagg.shares")
@dataclass(frozen=True)
class EncryptedShares:
    """A device's AEAD-sealed shares, one per neighbour (roster ``recipients``, uint32), each
    :data:`SEALED_SHARE_BYTES` long (:data:`SEALED_SHARE_BYTES_PQ` under the hybrid suite) and
    concatenated; the coordinator only relays them. With them the device commits to its self-mask
    seed (32 bytes), which the coordinator checks at unmask. Under the hybrid suite
    ``kem_ciphertexts`` holds, per recipient in the same order, the 1,088-byte ML-KEM ciphertext to
    its channel key; empty otherwise."""

    device_id: str
    round_id: int
    recipients: np.ndarray
    ciphertexts: bytes
    seed_commitment: bytes
    kem_ciphertexts: bytes = b""


@message("secagg.relayed_shares")
@dataclass(frozen=True)
class RelayedShares:
    """Sealed shares addressed to one device from the neighbours (roster ``senders``) that
    answered SHARE_KEYS, concatenated in the same order; under the hybrid suite the senders' ML-KEM
    ciphertexts to this device too (see :class:`EncryptedShares`)."""

    round_id: int
    senders: np.ndarray
    ciphertexts: bytes
    kem_ciphertexts: bytes = b""


@message("secagg.masked_input")
@dataclass(frozen=True)
class MaskedInput:
    """The device's masked vector (uint32, or uint16 when bits <= 16). Under the hybrid suite
    ``pair_wraps`` holds, for each neighbour with a larger roster index whose shares the device
    held (ascending), the pair secret it chose one-time-padded with the wrap key that neighbour
    sent it (32 bytes each): the coordinator opens one only with the mask secret of a neighbour
    that dropped. Empty otherwise."""

    device_id: str
    round_id: int
    vector: np.ndarray
    pair_wraps: bytes = b""


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
    """The neighbours' signatures (64 bytes each, concatenated in the order of the roster
    indices ``signers``) over the survivor set; the device checks them before unmasking."""

    round_id: int
    signers: np.ndarray
    signatures: bytes


@message("secagg.unmask")
@dataclass(frozen=True)
class UnmaskShares:
    """Self-mask shares of surviving neighbours and key shares of dropped ones, never both.

    ``alive`` and ``dropped`` are roster indices (uint32); the share arrays are
    (len(ids), 11) uint32 field elements (see :mod:`fedge.agent.core.crypto.shamir`).
    """

    device_id: str
    round_id: int
    alive: np.ndarray
    self_mask_shares: np.ndarray
    dropped: np.ndarray
    key_shares: np.ndarray
