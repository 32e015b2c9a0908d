"""The device side of SecAgg+: a pure state machine, ``reply = client.handle(request)``.

Usage::

    client = SecAggClient("dev-7", identity, peer_identity=lookup)   # lookup(device_id) -> public bytes
    client.set_input(quantized)          # uint32 vector of params.dim values (see quantize.py)
    reply = client.handle(config)        # SecAggConfig      -> KeyAdvertisement
    reply = client.handle(keys)          # NeighbourKeys     -> EncryptedShares
    reply = client.handle(relayed)       # RelayedShares     -> MaskedInput
    reply = client.handle(survivors)     # Survivors         -> SurvivorSignature
    reply = client.handle(request)       # UnmaskRequest     -> UnmaskShares  (stage DONE)

A message for any stage but the next raises :class:`ProtocolError` and changes nothing (replays
are refused). A failed signature, AEAD or consistency check raises :class:`SecurityError` and
aborts the client (stage FAILED). Too few neighbours raises :class:`RoundFailed`. The client
reveals, per neighbour, the self-mask share if the signed survivor set lists it, else its
key share: never both, and only once.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.agent.core.crypto import (
    AgreementKey,
    IdentityKey,
    MaskAccumulator,
    exchange,
    kem,
    open_sealed,
    random_bytes,
    seal,
    shamir,
    verify,
)
from fedge.agent.core.errors import ProtocolError, RoundFailed, SecurityError
from fedge.agent.core.messages.secagg import (
    PAIR_ITEM_BYTES,
    SEALED_SHARE_BYTES,
    SEALED_SHARE_BYTES_PQ,
    SIGNATURE_BYTES,
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RelayedShares,
    SecAggConfig,
    Survivors,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
)
from fedge.agent.core.secagg import derive
from fedge.agent.core.secagg.graph import neighbours_of
from fedge.agent.core.secagg.params import HYBRID_SUITES, mask_stream
from fedge.agent.core.secagg.stages import Stage, check_transition

log = logging.getLogger(__name__)

_STAGE_OF = {
    SecAggConfig: Stage.ADVERTISE_KEYS,
    NeighbourKeys: Stage.SHARE_KEYS,
    RelayedShares: Stage.MASKED_INPUT,
    Survivors: Stage.CONSISTENCY_CHECK,
    UnmaskRequest: Stage.UNMASK,
}
_SHARE_HEAD = struct.Struct(">ii")
_LIMBS = shamir.LIMBS
_SHARE_PLAIN = _SHARE_HEAD.size + 2 * _LIMBS * 4


class SecAggClient:
    """One device's SecAgg+ round. ``peer_identity(device_id)`` returns the enrolled Ed25519
    public key of a peer (or None if unknown); ``round_id`` pins the expected round."""

    def __init__(
        self,
        device_id: str,
        identity: IdentityKey,
        peer_identity: Callable[[str], bytes | None],
        *,
        round_id: int | None = None,
        verifier: Callable[[bytes, bytes, bytes], None] = verify,
        agreement: Callable[[AgreementKey, bytes], bytes] = exchange,
        require_suite: str | None = None,
    ) -> None:
        self.device_id = device_id
        self._identity = identity
        self._peer_identity = peer_identity
        self._verify = verifier  # raises SecurityError; a simulator host may share a SignatureMemo
        self._agree = agreement  # X25519 with one of this client's keys; a host may share an AgreementMemo
        self._round_id = round_id
        self._require_suite = require_suite  # the profile's [secagg] require_suite: no other is run
        self.stage: Stage | None = None
        self._input: np.ndarray | None = None
        #: each stage's handler, named once (the stages of :mod:`.stages`)
        self._handlers: dict[Stage, Callable[[Any], Any]] = {
            Stage.ADVERTISE_KEYS: self._on_advertise_keys,
            Stage.SHARE_KEYS: self._on_share_keys,
            Stage.MASKED_INPUT: self._on_masked_input,
            Stage.CONSISTENCY_CHECK: self._on_consistency_check,
            Stage.UNMASK: self._on_unmask,
        }

    @property
    def _rid(self) -> int:
        """The round id, known from the config on (ProtocolError before it)."""
        if self._round_id is None:
            raise ProtocolError("no round config yet")
        return self._round_id

    # ------------------------------------------------------------------ public

    def set_input(self, vec: np.ndarray) -> None:
        """The quantized vector to contribute (values mod 2^bits; uint32 or uint16)."""
        v = np.asarray(vec)
        if v.ndim != 1 or v.dtype.kind != "u":
            raise ProtocolError("secagg input must be a 1-D unsigned integer vector")
        self._input = v

    def handle(self, msg: Any) -> Any:
        """Consume one coordinator message and return the reply to send."""
        stage = _STAGE_OF.get(type(msg))
        if stage is None:
            raise ProtocolError(f"not a secagg request: {type(msg).__name__}")
        if self.stage in (Stage.DONE, Stage.FAILED):
            raise ProtocolError(f"round already {self.stage.value}")
        if self.stage is None:
            if stage is not Stage.ADVERTISE_KEYS:
                raise ProtocolError(f"expected the round config, got {stage.value}")
        else:
            check_transition(self.stage, stage)
        if stage is not Stage.ADVERTISE_KEYS and msg.round_id != self._round_id:
            raise ProtocolError("message for another round")
        try:
            reply = self._handlers[stage](msg)
        except SecurityError:
            self.stage = Stage.FAILED
            log.warning("secagg security check failed; aborting", extra=self._extra())
            raise
        except RoundFailed:
            self.stage = Stage.FAILED
            raise
        self.stage = Stage.DONE if stage is Stage.UNMASK else stage
        return reply

    def _extra(self) -> dict:
        return {"device": self.device_id, "round": self._round_id}

    # ------------------------------------------------------------------ stages

    def _on_advertise_keys(self, cfg: SecAggConfig) -> KeyAdvertisement:
        if self._round_id is not None and cfg.round_id != self._round_id:
            raise ProtocolError("config for another round")
        if self._require_suite is not None and cfg.suite != self._require_suite:
            raise ProtocolError(
                f"round suite {cfg.suite!r} is not the suite this device requires ({self._require_suite!r})"
            )
        self._stream = mask_stream(cfg.suite)  # ProtocolError for a suite this device does not run
        self._hybrid = cfg.suite in HYBRID_SUITES
        p = cfg.params
        roster = cfg.roster_ids
        if len(cfg.graph_seed) != 32 or len(roster) != p.num_clients or len(set(roster)) != len(roster):
            raise ProtocolError("invalid round config")
        try:
            me = roster.index(self.device_id)
        except ValueError:
            raise ProtocolError("device is not in the round roster") from None
        if self._input is not None and self._input.shape != (p.dim,):
            raise ProtocolError(f"input has {self._input.shape[0]} values, round expects {p.dim}")
        self._round_id = cfg.round_id
        self._cfg, self._params, self._roster, self._me = cfg, p, roster, me
        self._digest = derive.config_digest(cfg)
        self._neighbours = set(neighbours_of(cfg.graph_seed, p.num_clients, p.neighbours, me).tolist())
        self._c_key = AgreementKey.generate()
        kem_pub = b""
        if self._hybrid:
            # the Shamir-shared mask secret sigma yields the s-key and the pair secrets this device
            # chooses; the channel KEM key is never shared (docs/secagg.md, "Hybrid suite")
            self._sigma = random_bytes(32)
            self._s_key = AgreementKey(derive.mask_x25519_private(self._sigma))
            self._c_kem = kem.KemKey(random_bytes(kem.SEED_BYTES))
            kem_pub = self._c_kem.public_bytes()
        else:
            self._s_key = AgreementKey.generate()
        c_pub, s_pub = self._c_key.public_bytes(), self._s_key.public_bytes()
        sig = self._identity.sign(derive.advert_payload(self._digest, self.device_id, c_pub, s_pub, kem_pub))
        return KeyAdvertisement(self.device_id, cfg.round_id, c_pub, s_pub, sig, kem_pub)

    def _on_share_keys(self, msg: NeighbourKeys) -> EncryptedShares:
        p, t = self._params, self._params.threshold
        idx = derive.index_list(msg.indices, p.num_clients)
        kem_bytes = kem.PUBLIC_BYTES if self._hybrid else 0
        keys = derive.chunks(msg.keys, 64 + kem_bytes, len(idx))
        sigs = derive.chunks(msg.signatures, SIGNATURE_BYTES, len(idx))
        my_c, my_s = self._c_key.public_bytes(), self._s_key.public_bytes()
        peers: dict[int, tuple[bytes, bytes]] = {}
        peer_kems: dict[int, bytes] = {}
        for j, key, sig in zip(idx, keys, sigs):
            if j not in self._neighbours:
                raise ProtocolError("advertisement from a non-neighbour")
            pub = self._peer_identity(self._roster[j])
            if pub is None:
                raise SecurityError("unknown peer")
            c_pub, s_pub, kem_pub = key[:32], key[32:64], key[64:]
            self._verify(pub, derive.advert_payload(self._digest, self._roster[j], c_pub, s_pub, kem_pub), sig)
            if c_pub == my_c or s_pub == my_s:
                raise SecurityError("reflected key")
            peers[j] = (c_pub, s_pub)
            peer_kems[j] = kem_pub
        if len(peers) < t:
            raise RoundFailed(f"share_keys: {len(peers)} neighbour keys, threshold {t}")
        order = sorted(peers)
        self._self_seed = random_bytes(32)
        mask_secret = self._sigma if self._hybrid else self._s_key.private_bytes()
        secrets = np.frombuffer(self._self_seed + mask_secret, np.uint8).reshape(2, 32)
        shares = shamir.split(secrets, np.array(order) + 1, t).astype("<u4")  # (k', 2, L)
        c_key, rid, me, digest = self._c_key, self._rid, self._me, self._digest
        head = _SHARE_HEAD.pack
        self._share_keys: dict[int, bytes] = {}
        self._pair_secrets: dict[int, bytes] = {}
        blobs, cts = [], []
        for pos, j in enumerate(order):
            plain = head(me, j) + shares[pos].tobytes()
            dh = self._agree(c_key, peers[j][0])
            ad = derive.share_associated(digest, me, j)
            if self._hybrid:
                self._share_keys[j] = dh  # the key to open j's shares needs j's ciphertext too
                ss, ct = kem.encapsulate(peer_kems[j])
                key = derive.hybrid_share_key(dh, ss, ct, rid, me, j)
                if me < j:  # this device chooses the pair secret and seals it to j
                    plain += self._pair_secrets.setdefault(j, derive.pair_secret(self._sigma, rid, me, j))
                else:  # j chooses it; j will wrap it for the coordinator under this pad
                    plain += derive.wrap_key(self._sigma, rid, j, me)
                cts.append(ct)
            else:
                key = derive.share_key(dh, rid, me, j)
                self._share_keys[j] = key
            blobs.append(seal(key, plain, ad))
        self._peers = peers
        commitment = derive.seed_commitment(self._self_seed, rid, me)
        return EncryptedShares(self.device_id, rid, derive.indices(order), b"".join(blobs), commitment, b"".join(cts))

    def _on_masked_input(self, msg: RelayedShares) -> MaskedInput:
        p = self._params
        if self._input is None:
            raise ProtocolError("no input set before masked_input")
        if self._input.shape != (p.dim,):
            raise ProtocolError(f"input has {self._input.shape[0]} values, round expects {p.dim}")
        idx = derive.index_list(msg.senders, p.num_clients)
        hybrid = self._hybrid
        blobs = derive.chunks(msg.ciphertexts, SEALED_SHARE_BYTES_PQ if hybrid else SEALED_SHARE_BYTES, len(idx))
        cts = derive.chunks(msg.kem_ciphertexts, kem.CIPHERTEXT_BYTES, len(idx)) if hybrid else None
        rid, me, digest = self._rid, self._me, self._digest
        held: dict[int, np.ndarray] = {}
        rows = np.empty((len(idx), 2, _LIMBS), np.uint32)  # one block for all held shares
        want = _SHARE_PLAIN + (PAIR_ITEM_BYTES if hybrid else 0)
        pair_items: dict[int, bytes] = {}  # hybrid: the pair secret from j < me, the wrap key from j > me
        for pos, (j, blob) in enumerate(zip(idx, blobs)):
            key = self._share_keys.get(j)
            if key is None:
                raise ProtocolError("shares from a device this one did not share with")
            if cts is not None:
                ct = cts[pos]
                key = derive.hybrid_share_key(key, self._c_kem.decapsulate(ct), ct, rid, j, me)
            plain = open_sealed(key, blob, derive.share_associated(digest, j, me))
            if len(plain) != want or _SHARE_HEAD.unpack_from(plain) != (j, me):
                raise SecurityError("bad share")
            rows[pos] = np.frombuffer(plain, "<u4", count=2 * _LIMBS, offset=_SHARE_HEAD.size).reshape(2, _LIMBS)
            held[j] = rows[pos]
            if hybrid:
                pair_items[j] = plain[_SHARE_PLAIN:]
        if len(held) < p.threshold:
            raise RoundFailed(f"masked_input: shares from {len(held)} neighbours, threshold {p.threshold}")
        self._held = held
        acc = MaskAccumulator(p.dim, derive.word_dtype(p), initial=self._input, stream=self._stream)
        keys, signs = [derive.self_mask_key(self._self_seed, rid, me)], [1]
        s_key = self._s_key
        wraps = []
        for j in sorted(held):
            dh = self._agree(s_key, self._peers[j][1])
            if hybrid:
                if j < me:  # j chose the pair secret
                    secret = pair_items[j]
                else:  # this device chose it; wrapped under j's pad for the coordinator, in case j dropped
                    secret = self._pair_secrets[j]
                    wraps.append(derive.xor(secret, pair_items[j]))
                keys.append(derive.hybrid_pair_mask_key(dh, secret, rid, me, j))
            else:
                keys.append(derive.pair_mask_key(dh, rid, me, j))
            signs.append(derive.mask_sign(me, j))
        self._pair_secrets = {}
        acc.add_masks(keys, signs)
        vec = derive.reduce_bits(acc.value(), p.bits)
        self._input = None  # the plain vector is no longer needed
        return MaskedInput(self.device_id, rid, vec, b"".join(wraps))

    def _on_consistency_check(self, msg: Survivors) -> SurvivorSignature:
        p = self._params
        try:
            alive = derive.indices_of(msg.bitmap, p.num_clients)
        except ValueError:
            raise ProtocolError("malformed survivor set") from None
        alive_set = set(alive.tolist())
        if self._me not in alive_set:
            raise ProtocolError("survivor set omits this device")
        if len(alive_set) < p.min_clients:
            raise RoundFailed(f"consistency_check: {len(alive_set)} survivors, minimum {p.min_clients}")
        self._bitmap = np.asarray(msg.bitmap, np.uint8).tobytes()
        # only neighbours' liveness is consulted later: keep O(k), not O(n), per client
        self._alive = alive_set & self._neighbours
        sig = self._identity.sign(derive.survivors_payload(self._digest, self._bitmap))
        return SurvivorSignature(self.device_id, self._rid, sig)

    def _on_unmask(self, msg: UnmaskRequest) -> UnmaskShares:
        p = self._params
        payload = derive.survivors_payload(self._digest, self._bitmap)
        idx = derive.index_list(msg.signers, p.num_clients)
        sigs = derive.chunks(msg.signatures, SIGNATURE_BYTES, len(idx))
        for j, sig in zip(idx, sigs):
            if j not in self._neighbours or j not in self._alive:
                raise ProtocolError("signature from a non-neighbour or a non-survivor")
            pub = self._peer_identity(self._roster[j])
            if pub is None:
                raise SecurityError("unknown peer")
            self._verify(pub, payload, sig)  # a different survivor set fails here
        if len(idx) < p.threshold:
            raise RoundFailed(f"unmask: {len(idx)} neighbour signatures, threshold {p.threshold}")
        alive_ids, alive_rows, dropped_ids, dropped_rows = [], [], [], []
        for j in sorted(self._held):
            share = self._held[j]
            if j in self._alive:
                alive_ids.append(j)
                alive_rows.append(share[0])
            else:
                dropped_ids.append(j)
                dropped_rows.append(share[1])
        self._held = {}  # never reveal again
        return UnmaskShares(
            self.device_id,
            self._rid,
            derive.indices(alive_ids),
            np.array(alive_rows, np.uint32).reshape(-1, _LIMBS),
            derive.indices(dropped_ids),
            np.array(dropped_rows, np.uint32).reshape(-1, _LIMBS),
        )
