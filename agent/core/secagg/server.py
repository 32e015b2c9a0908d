"""The coordinator side of SecAgg+: a pure state machine with an injected clock, no I/O.

Usage::

    server = SecAggServer(params, round_id, roster, clock=time.monotonic, stage_timeout=30.0,
                          max_abs_int=q)           # refuses rounds whose sum could wrap
    broadcast = server.start()                     # SecAggConfig for every device
    server.receive(reply)                          # any device reply; raises ProtocolError /
                                                   # SecurityError for ones it refuses
    out = server.tick()                            # None while waiting; at the deadline or
                                                   # when all answered: {device_id: request}
    result = server.result()                       # after the UNMASK stage closes

Each stage proceeds with whoever answered before its deadline, as long as every secret that
will be needed still has ``threshold`` holders; otherwise :class:`RoundFailed` names the stage
and the counts. ``result()`` returns the exact sum modulo 2^bits and the survivors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from fedge.agent.core.crypto import MaskAccumulator, agree, kem, random_bytes, shamir, verify
from fedge.agent.core.crypto.agreement import AgreementKey
from fedge.agent.core.errors import ProtocolError, RoundFailed, SecurityError
from fedge.agent.core.messages.secagg import (
    PAIR_ITEM_BYTES,
    SEALED_SHARE_BYTES,
    SEALED_SHARE_BYTES_PQ,
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
from fedge.agent.core.secagg.graph import neighbour_table
from fedge.agent.core.secagg.params import HYBRID_SUITES, SUITE, SecAggParams, mask_stream
from fedge.agent.core.secagg.quantize import check_no_wrap
from fedge.agent.core.secagg.stages import Stage, check_transition

log = logging.getLogger(__name__)

_REPLY_STAGE = {
    KeyAdvertisement: Stage.ADVERTISE_KEYS,
    EncryptedShares: Stage.SHARE_KEYS,
    MaskedInput: Stage.MASKED_INPUT,
    SurvivorSignature: Stage.CONSISTENCY_CHECK,
    UnmaskShares: Stage.UNMASK,
}


@dataclass(frozen=True)
class SecAggResult:
    """The exact sum modulo 2^bits (uint32/uint16) and the devices whose inputs it holds."""

    total: np.ndarray
    survivors: tuple[str, ...]
    #: devices that sent wrong Shamir shares at unmask (corrected by decoding)
    bad_share_senders: tuple[str, ...] = ()


class SecAggServer:
    """One round of SecAgg+ on the coordinator. ``roster`` maps device id -> identity public key.

    ``max_abs_int`` is the largest |quantized value| a device may contribute in any coordinate;
    the constructor raises ConfigError if n of them could wrap the sum.
    """

    def __init__(
        self,
        params: SecAggParams,
        round_id: int,
        roster: Mapping[str, bytes],
        *,
        max_abs_int: int,
        clock: Callable[[], float],
        stage_timeout: float = 60.0,
        graph_seed: bytes | None = None,
        suite: str = SUITE,
    ) -> None:
        if len(roster) != params.num_clients:
            raise ProtocolError(f"roster has {len(roster)} devices, params say {params.num_clients}")
        if any(("\n" in d or not d) for d in roster):
            raise ProtocolError("device ids must be non-empty and free of newlines")
        check_no_wrap(params.num_clients, max_abs_int, params.bits)
        self.params, self.round_id, self._clock, self._timeout = params, round_id, clock, stage_timeout
        self._ids = tuple(sorted(roster))
        self._index = {d: i for i, d in enumerate(self._ids)}
        self._identity = [roster[d] for d in self._ids]
        seed = graph_seed if graph_seed is not None else random_bytes(32)
        self._stream = mask_stream(suite)  # the coordinator masks too: a suite it cannot run is refused
        self._hybrid = suite in HYBRID_SUITES
        self._kem_bytes = kem.PUBLIC_BYTES if self._hybrid else 0
        self._sealed_bytes = SEALED_SHARE_BYTES_PQ if self._hybrid else SEALED_SHARE_BYTES
        self.config = SecAggConfig(round_id, params, seed, "\n".join(self._ids).encode(), suite)
        self._digest = derive.config_digest(self.config)
        self._table = neighbour_table(seed, params.num_clients, params.neighbours)
        self._nbr_sets = [set(row.tolist()) for row in self._table]
        self.stage: Stage | None = None
        self._deadline = float("inf")
        self._expected: set[int] = set()
        self._replies: dict[int, Any] = {}
        #: each stage's reply check and stage close, named once (the stages of :mod:`.stages`)
        self._checks: dict[Stage, Callable[[int, Any], None]] = {
            Stage.ADVERTISE_KEYS: self._check_advertise_keys,
            Stage.SHARE_KEYS: self._check_share_keys,
            Stage.MASKED_INPUT: self._check_masked_input,
            Stage.CONSISTENCY_CHECK: self._check_consistency_check,
            Stage.UNMASK: self._check_unmask,
        }
        self._closers: dict[Stage, Callable[[], dict[str, Any]]] = {
            Stage.ADVERTISE_KEYS: self._close_advertise_keys,
            Stage.SHARE_KEYS: self._close_share_keys,
            Stage.MASKED_INPUT: self._close_masked_input,
            Stage.CONSISTENCY_CHECK: self._close_consistency_check,
            Stage.UNMASK: self._close_unmask,
        }
        self._result: SecAggResult | None = None
        #: devices whose Shamir shares at unmask were wrong and corrected (attributed by decoding)
        self.bad_share_senders: tuple[str, ...] = ()
        self._dtype = derive.word_dtype(params)

    # ------------------------------------------------------------------ driving

    def _extra(self) -> dict:
        return {"round": self.round_id, "stage": self.stage.value if self.stage else None}

    def start(self) -> SecAggConfig:
        """Open ADVERTISE_KEYS; the returned config goes to every device in the roster."""
        if self.stage is not None:
            raise ProtocolError("round already started")
        self._open(Stage.ADVERTISE_KEYS, set(range(self.params.num_clients)))
        return self.config

    def _open(self, stage: Stage, expected: set[int]) -> None:
        self.stage = stage if self.stage is None else check_transition(self.stage, stage)
        self._expected = expected
        self._replies = {}
        self._deadline = self._clock() + self._timeout

    def expected(self) -> set[str]:
        """Devices whose reply the current stage still waits for."""
        return {self._ids[i] for i in self._expected - set(self._replies)}

    def outstanding(self) -> int:
        """How many replies the current stage still waits for, in O(1) (replies only come from expected devices)."""
        return len(self._expected) - len(self._replies)

    def replied(self) -> int:
        """How many replies the current stage holds."""
        return len(self._replies)

    def ready(self) -> bool:
        """All expected replies are in."""
        return len(self._replies) == len(self._expected)

    def tick(self, now: float | None = None) -> dict[str, object] | None:
        """Close the stage if all answered or its deadline passed; else None."""
        if self.stage in (None, Stage.DONE, Stage.FAILED):
            return None
        now = self._clock() if now is None else now
        if self.ready() or now >= self._deadline:
            return self.close_stage()
        return None

    def fail(self, reason: str) -> NoReturn:
        """Move to FAILED and raise RoundFailed naming the stage and the reason."""
        stage = self.stage.value if self.stage else "none"
        self.stage = Stage.FAILED
        log.warning("secagg round failed at %s: %s", stage, reason, extra={"round": self.round_id, "stage": stage})
        raise RoundFailed(f"secagg round {self.round_id} failed at {stage}: {reason}")

    def receive(self, msg: Any) -> None:
        """Store one device reply for the current stage, after checking it."""
        stage = _REPLY_STAGE.get(type(msg))
        if stage is None:
            raise ProtocolError(f"not a secagg reply: {type(msg).__name__}")
        if stage is not self.stage:
            raise ProtocolError(f"{stage.value} reply during {self.stage.value if self.stage else 'no stage'}")
        if msg.round_id != self.round_id:
            raise ProtocolError("reply for another round")
        i = self._index.get(msg.device_id)
        if i is None or i not in self._expected:
            raise ProtocolError("reply from a device not in this stage")
        if i in self._replies:
            raise ProtocolError("duplicate reply")
        self._checks[stage](i, msg)
        # masked vectors are summed on arrival and not kept
        self._replies[i] = True if stage is Stage.MASKED_INPUT else msg

    def exclude(self, device_id: str) -> bool:
        """Treat ``device_id`` as dropped from the current stage on (a cloned device). Its reply to
        this stage is discarded too while that is still sound (ADVERTISE_KEYS, SHARE_KEYS: nothing
        derived from it has left the server). False when it cannot be left out: its masked input
        is already in the sum, or the round is past MASKED_INPUT (its shares are needed to unmask)."""
        i = self._index.get(device_id)
        if i is None or self.stage not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT):
            return False  # from the consistency check on, its shares of the others' secrets are needed
        if i not in self._expected:
            return True
        if i in self._replies:
            if self.stage is Stage.MASKED_INPUT:
                return False  # already in the sum
            del self._replies[i]
        self._expected = self._expected - {i}
        log.warning(
            "device excluded at %s",
            self.stage.value if self.stage else "none",
            extra={**self._extra(), "device": device_id},
        )
        return True

    def close_stage(self) -> dict[str, Any]:
        """Proceed with whoever answered: the requests of the next stage by device id ({} at DONE)."""
        if self.stage is None or self.stage in (Stage.DONE, Stage.FAILED):
            raise ProtocolError("no open stage")
        return self._closers[self.stage]()

    def result(self) -> SecAggResult:
        """The sum and survivors; RoundFailed unless the round completed."""
        if self._result is None:
            raise RoundFailed(
                f"secagg round {self.round_id} has no result (stage {self.stage.value if self.stage else 'none'})"
            )
        return self._result

    # ------------------------------------------------------------------ helpers

    def _need(self, what: str, count: int, minimum: int) -> None:
        if count < minimum:
            self.fail(f"{count} {what}, minimum {minimum}")

    def _prune(self, alive: set[int], holders: Callable[[int, set[int]], int]) -> set[int]:
        """Drop clients with fewer than t holders among ``alive`` until none is left to drop."""
        t = self.params.threshold
        changed = True
        while changed:
            changed = False
            for i in sorted(alive):
                if holders(i, alive) < t:
                    alive.discard(i)
                    changed = True
        return alive

    # ------------------------------------------------------------------ ADVERTISE_KEYS

    def _check_advertise_keys(self, i: int, msg: KeyAdvertisement) -> None:
        if len(msg.c_public) != 32 or len(msg.s_public) != 32:
            raise ProtocolError("public keys must be 32 bytes")
        if len(msg.kem_public) != self._kem_bytes:
            raise ProtocolError(f"KEM public keys must be {self._kem_bytes} bytes under this suite")
        payload = derive.advert_payload(self._digest, msg.device_id, msg.c_public, msg.s_public, msg.kem_public)
        verify(self._identity[i], payload, msg.signature)

    def _close_advertise_keys(self) -> dict[str, Any]:
        u1 = self._prune(set(self._replies), lambda i, a: len(self._nbr_sets[i] & a))
        self._need("devices advertised keys with enough live neighbours", len(u1), self.params.min_clients)
        self._adverts = {i: self._replies[i] for i in u1}
        self._u1 = u1
        out = {}
        adv = self._adverts
        for i in sorted(u1):
            row = [j for j in self._table[i].tolist() if j in u1]
            out[self._ids[i]] = NeighbourKeys(
                self.round_id,
                derive.indices(row),
                b"".join(adv[j].c_public + adv[j].s_public + adv[j].kem_public for j in row),
                b"".join(adv[j].signature for j in row),
            )
        self._open(Stage.SHARE_KEYS, u1)
        return out

    # ------------------------------------------------------------------ SHARE_KEYS

    def _check_share_keys(self, i: int, msg: EncryptedShares) -> None:
        got = derive.index_list(msg.recipients, self.params.num_clients)
        if not set(got) <= (self._nbr_sets[i] & self._u1) or len(got) < self.params.threshold:
            raise ProtocolError("shares addressed to non-neighbours or too few")
        derive.chunks(msg.ciphertexts, self._sealed_bytes, len(got))
        if len(msg.seed_commitment) != 32:
            raise ProtocolError("seed commitment must be 32 bytes")
        if len(msg.kem_ciphertexts) != (kem.CIPHERTEXT_BYTES * len(got) if self._hybrid else 0):
            raise ProtocolError("KEM ciphertexts have the wrong length")

    def _close_share_keys(self) -> dict[str, Any]:
        # sent_to[i][j]: where i's sealed share for j sits in i's reply (no copies of the ciphertexts)
        sent_to = {i: {j: pos for pos, j in enumerate(m.recipients.tolist())} for i, m in self._replies.items()}
        replies = self._replies
        S, C = self._sealed_bytes, kem.CIPHERTEXT_BYTES
        self._commitments = {i: m.seed_commitment for i, m in replies.items()}

        def sealed(j: int, i: int) -> bytes:
            pos = sent_to[j][i]
            return replies[j].ciphertexts[pos * S : (pos + 1) * S]

        def kem_ct(j: int, i: int) -> bytes:  # hybrid: j's encapsulation to i's channel key
            pos = sent_to[j][i]
            return replies[j].kem_ciphertexts[pos * C : (pos + 1) * C]

        # i's secrets are held by the live neighbours it sent shares to
        u2 = self._prune(set(sent_to), lambda i, a: sum(1 for j in sent_to[i] if j in a))
        self._need("devices shared keys with enough live holders", len(u2), self.params.min_clients)
        self._u2 = u2
        # senders[i]: the neighbours whose shares i holds (and whose pair masks i applies)
        senders: dict[int, list[int]] = {i: [] for i in u2}
        for j in sorted(u2):
            for i in sent_to[j]:
                if i in u2:
                    senders[i].append(j)
        self._senders = senders
        self._holders = {i: [j for j in sent_to[i] if j in u2] for i in u2}
        out = {}
        for i in sorted(u2):
            snd = self._senders[i]
            items = b"".join(kem_ct(j, i) for j in snd) if self._hybrid else b""
            out[self._ids[i]] = RelayedShares(
                self.round_id, derive.indices(snd), b"".join(sealed(j, i) for j in snd), items
            )
        self._sum = MaskAccumulator(self.params.dim, self._dtype, stream=self._stream)
        #: hybrid: each survivor's wrapped pair secrets, for its larger held neighbours in order
        self._wraps: dict[int, bytes] = {}
        self._open(Stage.MASKED_INPUT, u2)
        return out

    # ------------------------------------------------------------------ MASKED_INPUT

    def _check_masked_input(self, i: int, msg: MaskedInput) -> None:
        v = msg.vector
        if v.dtype != self._dtype or v.shape != (self.params.dim,):
            raise ProtocolError(f"masked input must be {self._dtype} of shape ({self.params.dim},)")
        want = PAIR_ITEM_BYTES * derive.wrapped_count(i, self._senders[i]) if self._hybrid else 0
        if len(msg.pair_wraps) != want:
            raise ProtocolError(f"pair_wraps must be {want} bytes: 32 per held neighbour with a larger index")
        if self._hybrid:
            self._wraps[i] = msg.pair_wraps
        self._sum.add_vector(v)  # streaming: the vector need not be kept

    def _close_masked_input(self) -> dict[str, Any]:
        u3 = set(self._replies)
        self._need("masked inputs", len(u3), self.params.min_clients)
        self._u3 = u3
        self._feasible(u3, "holders still live")
        bitmap = derive.bitmap_of(sorted(u3), self.params.num_clients)
        self._bitmap = bitmap.tobytes()
        msg = Survivors(self.round_id, bitmap)
        self._open(Stage.CONSISTENCY_CHECK, u3)
        return {self._ids[i]: msg for i in sorted(u3)}

    def _feasible(self, revealers: set[int], what: str) -> None:
        t = self.params.threshold
        worst = min((sum(1 for j in self._holders[i] if j in revealers), i) for i in self._u2)
        if worst[0] < t:
            kind = "self-mask seed" if worst[1] in self._u3 else "mask key"
            self.fail(f"the {kind} of {self._ids[worst[1]]} has {worst[0]} {what}, threshold {t}")

    # ------------------------------------------------------------------ CONSISTENCY_CHECK

    def _check_consistency_check(self, i: int, msg: SurvivorSignature) -> None:
        verify(self._identity[i], derive.survivors_payload(self._digest, self._bitmap), msg.signature)

    def _close_consistency_check(self) -> dict[str, Any]:
        u4 = set(self._replies)
        t = self.params.threshold
        self._need("survivor signatures", len(u4), self.params.min_clients)
        # a device unmasks only when at least t of its neighbours signed the same set
        revealers = {i for i in u4 if len(self._nbr_sets[i] & u4) >= t}
        self._feasible(revealers, "holders with t neighbour signatures")
        out = {}
        for i in sorted(revealers):
            row = [j for j in self._table[i].tolist() if j in u4]
            out[self._ids[i]] = UnmaskRequest(
                self.round_id, derive.indices(row), b"".join(self._replies[j].signature for j in row)
            )
        self._open(Stage.UNMASK, revealers)
        return out

    # ------------------------------------------------------------------ UNMASK

    def _check_unmask(self, i: int, msg: UnmaskShares) -> None:
        snd = self._senders[i]
        alive = [j for j in snd if j in self._u3]
        dropped = [j for j in snd if j not in self._u3]
        L = shamir.LIMBS
        n = self.params.num_clients
        if derive.index_list(msg.alive, n) != alive or derive.index_list(msg.dropped, n) != dropped:
            raise ProtocolError("unmask shares do not match the survivor set")
        for arr, ids in ((msg.self_mask_shares, alive), (msg.key_shares, dropped)):
            if arr.dtype != np.uint32 or arr.shape != (len(ids), L):
                raise ProtocolError("unmask shares have the wrong shape")

    def _close_unmask(self) -> dict[str, Any]:
        p, t, rid = self.params, self.params.threshold, self.round_id
        got: dict[int, list[tuple[int, np.ndarray]]] = {j: [] for j in self._u2}
        for i, msg in self._replies.items():
            for j, row in zip(msg.alive.tolist(), msg.self_mask_shares):
                got[j].append((i, row))
            for j, row in zip(msg.dropped.tolist(), msg.key_shares):
                got[j].append((i, row))
        worst = min((len(v), j) for j, v in got.items())
        if worst[0] < t:
            kind = "self-mask seed" if worst[1] in self._u3 else "mask key"
            self.fail(
                f"the {kind} of {self._ids[worst[1]]} got {worst[0]} shares from {len(self._replies)} unmasking devices, threshold {t}"
            )
        secrets = self._reconstruct(got)
        rebuilt = []  # secrets the first t shares gave right: every other share is checked against them
        for j in sorted(self._u2):
            if self._secret_ok(j, secrets[j]):
                rebuilt.append(j)
            else:
                secrets[j] = self._correct(j, got[j])  # a forged share slipped past the quick check
            if not self._secret_ok(j, secrets[j]):
                what = "self-mask seed" if j in self._u3 else "mask key"
                against = "its commitment" if j in self._u3 else "its advertisement"
                self.fail(f"the reconstructed {what} of {self._ids[j]} does not match {against}")
        self._attribute(got, rebuilt)
        if self.bad_share_senders:
            log.warning(
                "forged Shamir shares from %s (corrected or left out; senders recorded)",
                ", ".join(self.bad_share_senders),
                extra=self._extra(),
            )
        # every secret of _u2 passed _secret_ok (None never does), so each is known bytes from here
        known = {j: s for j, s in secrets.items() if s is not None}
        keys = [derive.self_mask_key(known[j], rid, j) for j in sorted(self._u3)]
        signs = [-1] * len(keys)
        for j in sorted(self._u2 - self._u3):
            sk = sigma = known[j]
            if self._hybrid:
                sk = derive.mask_x25519_private(sigma)
            for i in self._holders[j]:
                if i in self._u3 and j in self._senders[i]:
                    dh = agree(sk, self._adverts[i].s_public)
                    if not self._hybrid:
                        keys.append(derive.pair_mask_key(dh, rid, i, j))
                    else:
                        keys.append(derive.hybrid_pair_mask_key(dh, self._dropped_pair_secret(i, j, sigma), rid, i, j))
                    signs.append(-derive.mask_sign(i, j))
        acc = self._sum
        acc.add_masks(keys, signs)  # one pass over the sum for all the masks
        total = derive.reduce_bits(acc.value(), p.bits)
        self._result = SecAggResult(total, tuple(self._ids[i] for i in sorted(self._u3)), self.bad_share_senders)
        self.stage = check_transition(Stage.UNMASK, Stage.DONE)
        log.info("secagg round done: %d survivors of %d", len(self._u3), p.num_clients, extra=self._extra())
        return {}

    def _secret_ok(self, j: int, secret: bytes | None) -> bool:
        """A reconstructed secret is the one device j committed to (seed) or advertised (mask key)."""
        if secret is None:
            return False
        if j in self._u3:
            return derive.seed_commitment(secret, self.round_id, j) == self._commitments[j]
        if self._hybrid:  # the mask secret must give the advertised mask key
            return AgreementKey(derive.mask_x25519_private(secret)).public_bytes() == self._adverts[j].s_public
        return AgreementKey.from_private_bytes(secret).public_bytes() == self._adverts[j].s_public

    def _dropped_pair_secret(self, i: int, j: int, sigma: bytes) -> bytes:
        """The pair secret of survivor i and dropped j (hybrid suite), from j's rebuilt mask secret:
        j chose it when j < i; else i chose it and wrapped it in its masked input under the pad j
        sealed to it, which follows from j's mask secret too."""
        rid = self.round_id
        if j < i:
            return derive.pair_secret(sigma, rid, j, i)
        pos = sum(1 for h in self._senders[i] if i < h < j)  # i's wraps follow its larger held neighbours
        wrapped = self._wraps[i][pos * PAIR_ITEM_BYTES : (pos + 1) * PAIR_ITEM_BYTES]
        return derive.xor(wrapped, derive.wrap_key(sigma, rid, i, j))

    def _correct(self, j: int, shares: list[tuple[int, np.ndarray]]) -> bytes | None:
        """Decode j's secret from all its shares with error correction; record who sent bad ones."""
        xs = np.array([i + 1 for i, _ in shares], np.int64)
        ys = np.array([row for _, row in shares], np.uint64)
        try:
            secret, bad = shamir.decode(xs, ys, self.params.threshold)
        except SecurityError:
            return None
        senders = {self._ids[x - 1] for x in bad}
        self.bad_share_senders = tuple(sorted(set(self.bad_share_senders) | senders))
        return secret

    def _attribute(self, got: dict[int, list[tuple[int, np.ndarray]]], rebuilt: list[int]) -> None:
        """Record the sender of every share of a ``rebuilt`` secret that is off its polynomial.

        For these secrets the first t shares gave the committed (advertised) secret, so they fix
        the polynomial; only one more share was cross-checked, so a forger further down the list
        would otherwise go unrecorded. Batched by share count, like :meth:`_reconstruct`."""
        t = self.params.threshold
        groups: dict[int, list[int]] = {}
        for j in rebuilt:
            if len(got[j]) > t + 1:
                groups.setdefault(len(got[j]), []).append(j)
        senders: set[str] = set()
        for js in groups.values():
            xs = np.array([[i + 1 for i, _ in got[j]] for j in js], np.int64)
            ys = np.array([[row for _, row in got[j]] for j in js], np.uint32)
            off = shamir.off_polynomial(xs, ys, t)
            senders.update(self._ids[int(x) - 1] for x in xs[off])
        if senders:
            self.bad_share_senders = tuple(sorted(set(self.bad_share_senders) | senders))

    def _reconstruct(self, got: dict[int, list[tuple[int, np.ndarray]]]) -> dict[int, bytes | None]:
        """Batched Shamir: t shares per secret, plus one more to check them when available.

        A batch with an inconsistent share is decoded secret by secret; a secret whose quick check
        fails is left None, for :meth:`_correct` to decode from all its shares."""
        t = self.params.threshold
        groups: dict[int, list[int]] = {}
        for j, v in got.items():
            groups.setdefault(min(len(v), t + 1), []).append(j)
        out: dict[int, bytes | None] = {}
        for s, js in groups.items():
            xs = np.array([[i + 1 for i, _ in got[j][:s]] for j in js], np.int64)
            ys = np.array([[row for _, row in got[j][:s]] for j in js], np.uint32)
            rec: list[np.ndarray | None]
            try:
                rec = list(shamir.combine(xs, ys, t))
            except SecurityError:
                rec = []
                for row_x, row_y in zip(xs, ys):
                    try:
                        rec.append(shamir.combine(row_x[None], row_y[None], t)[0])
                    except SecurityError:
                        rec.append(None)
            for j, r in zip(js, rec):
                out[j] = None if r is None else r.tobytes()
        return out
