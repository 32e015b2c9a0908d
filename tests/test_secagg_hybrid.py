"""The hybrid post-quantum SecAgg+ suite (X25519 + ML-KEM-768): FIPS 203 known answers, the
combiner, exact rounds with dropouts at every stage, a device that requires it refuses a classic
round, the server's view, and ML-KEM loaded only when a round runs the suite."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.agent.core import wire
from fedge.agent.core.crypto import IdentityKey, derive_key, kem
from fedge.agent.core.errors import ProtocolError, SecurityError, WireError
from fedge.agent.core.messages.secagg import MaskedInput, RelayedShares, UnmaskShares
from fedge.agent.core.secagg import derive
from fedge.agent.core.secagg.client import SecAggClient
from fedge.agent.core.secagg.graph import neighbour_table
from fedge.agent.core.secagg.loopback import run_round
from fedge.agent.core.secagg.params import SUITE, SUITE_AES, SUITE_PQ, SecAggParams, choose_suite, supported_suites
from fedge.agent.core.secagg.server import SecAggServer
from fedge.agent.core.secagg.stages import ORDER, Stage
from tests.secagg_fixtures import plain_sum

pytestmark = pytest.mark.skipif(
    not kem.available() or not kem.runs(), reason="no ML-KEM-768 here (pip install fedge[pq])"
)
ROOT = Path(__file__).resolve().parent.parent
N = 24
_KEYS = {f"dev-{i:04d}": IdentityKey.generate() for i in range(N)}
PARAMS = SecAggParams(N, 12, 7, 3000, 32, 3)

# NIST ACVP ML-KEM-keyGen-FIPS203, ML-KEM-768 group, tcId 26 (d and z).
ACVP_D = bytes.fromhex("E26918D071A8F820D6B7DC106E7A3F72585F4EBC080722007CFBB21DBA6A7ABE")
ACVP_Z = bytes.fromhex("4E14174ABF8BCC9B86FC7471C054F6F0062A16A053B041F9B3D75B3E447F1D4B")


# ---------------------------------------------------------------------------- FIPS 203


def test_ml_kem_768_key_is_built_from_its_fips_203_seed() -> None:
    """K-PKE.KeyGen (FIPS 203 Alg. 13): (rho, sigma) = G(d || k) with k = 3 for ML-KEM-768, and
    ek = ByteEncode12(t) || rho, so the last 32 bytes of ek are SHA3-512(d || 0x03)[:32]."""
    key = kem.KemKey(ACVP_D + ACVP_Z)
    ek = key.public_bytes()
    assert len(ek) == kem.PUBLIC_BYTES == 384 * 3 + 32
    assert ek[-32:] == hashlib.sha3_512(ACVP_D + b"\x03").digest()[:32]
    # the draft standard's G(d) (no k) gives another rho: the implementation is the final FIPS 203
    assert ek[-32:] != hashlib.sha3_512(ACVP_D).digest()[:32]
    # every 12-bit coefficient of t is reduced mod q = 3329 (the encapsulation key check, Alg. 20)
    t = np.frombuffer(ek[:-32], np.uint8).astype(np.uint32).reshape(-1, 3)
    coeffs = np.concatenate([t[:, 0] | ((t[:, 1] & 0xF) << 8), (t[:, 1] >> 4) | (t[:, 2] << 4)])
    assert coeffs.max() < 3329
    assert kem.KemKey(ACVP_D + ACVP_Z).public_bytes() == ek  # deterministic in the seed


def test_ml_kem_768_implicit_rejection_is_shake256_of_z_and_the_ciphertext() -> None:
    """ML-KEM.Decaps (FIPS 203 Alg. 18): a ciphertext that does not re-encrypt gives
    K = J(z || c) = SHAKE256(z || c, 32). A fixed invalid ciphertext, checked against hashlib."""
    key = kem.KemKey(ACVP_D + ACVP_Z)
    bad = bytes(range(256)) * 4 + bytes(64)
    assert len(bad) == kem.CIPHERTEXT_BYTES
    assert key.decapsulate(bad) == hashlib.shake_256(ACVP_Z + bad).digest(32)


def test_ml_kem_768_round_trips_and_refuses_malformed_input() -> None:
    key = kem.KemKey(hashlib.sha3_512(b"fedge test key").digest())
    ss, ct = kem.encapsulate(key.public_bytes())
    assert len(ss) == 32 and len(ct) == kem.CIPHERTEXT_BYTES
    assert key.decapsulate(ct) == ss
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    assert key.decapsulate(tampered) != ss  # implicit rejection: a different, pseudorandom secret
    with pytest.raises(SecurityError):
        key.decapsulate(ct[:-1])
    with pytest.raises(SecurityError):
        kem.encapsulate(key.public_bytes()[:-1])
    with pytest.raises(SecurityError):
        kem.encapsulate(b"\xff" * kem.PUBLIC_BYTES)  # coefficients >= q fail the modulus check
    with pytest.raises(SecurityError):
        kem.KemKey(bytes(32))


# ---------------------------------------------------------------------------- combiner


def _derive_key_stdlib(secret: bytes, label: str, parts: list, length: int) -> bytes:
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    info = lp(b"fedge/v1/" + label.encode())
    for p in parts:
        info += (8).to_bytes(4, "big") + p.to_bytes(8, "big", signed=True) if isinstance(p, int) else lp(p)
    prk = hashlib.blake2b(secret, digest_size=32, person=b"fedge/v1/extract").digest()
    return hashlib.blake2b(info, key=prk, digest_size=length, person=b"fedge/v1/expand").digest()


def test_the_combiner_is_blake2b_over_both_secrets_concatenated_with_the_ciphertext_bound() -> None:
    dh, ss, ct = bytes(range(32)), bytes(range(32, 64)), bytes(range(200)) * 5 + bytes(88)
    key = derive.hybrid_share_key(dh, ss, ct, 7, 3, 9)
    assert key == _derive_key_stdlib(dh + ss, "secagg/pq/share-key", [7, 3, 9, ct], 32)
    # each input matters: either secret, the direction, the ciphertext
    assert key != derive.hybrid_share_key(bytes(32), ss, ct, 7, 3, 9)
    assert key != derive.hybrid_share_key(dh, bytes(32), ct, 7, 3, 9)
    assert key != derive.hybrid_share_key(dh, ss, ct, 7, 9, 3)
    assert key != derive.hybrid_share_key(dh, ss, ct[:-1] + b"\x01", 7, 3, 9)
    mask = derive.hybrid_pair_mask_key(dh, ss, 7, 9, 3)
    assert mask == derive.hybrid_pair_mask_key(dh, ss, 7, 3, 9)  # one key per pair, either end
    assert mask == _derive_key_stdlib(dh + ss, "secagg/pq/pair-mask", [7, 3, 9], 32)
    # what the mask secret sigma yields: the s-key, the pair secret i < j seals to j, the pad j > i seals to i
    assert derive.mask_x25519_private(dh) == derive_key(dh, "secagg/pq/s-x25519", length=32)
    assert derive.pair_secret(dh, 7, 3, 9) == _derive_key_stdlib(dh, "secagg/pq/pair-secret", [7, 3, 9], 32)
    assert derive.wrap_key(dh, 7, 3, 9) == _derive_key_stdlib(dh, "secagg/pq/pair-wrap", [7, 3, 9], 32)
    assert derive.wrap_key(dh, 7, 3, 9) != derive.pair_secret(dh, 7, 3, 9)


# ---------------------------------------------------------------------------- rounds


def _round(params: SecAggParams, seed: int, suite: str = SUITE_PQ, require: str | None = None):
    roster = {d: k.public_bytes() for d, k in _KEYS.items()}
    server = SecAggServer(
        params, 1, roster, max_abs_int=1000, clock=lambda: 0.0, graph_seed=bytes(range(32)), suite=suite
    )
    clients = {d: SecAggClient(d, k, roster.get, round_id=1, require_suite=require) for d, k in _KEYS.items()}
    rng = np.random.default_rng(seed)
    mask = (1 << params.bits) - 1
    inputs = {d: (rng.integers(-1000, 1001, params.dim, dtype=np.int64) & mask).astype(np.uint32) for d in _KEYS}
    return server, clients, inputs


@pytest.mark.parametrize("stage", [None, *ORDER[:-1], "all"])
def test_hybrid_rounds_are_exact_with_dropouts_at_every_stage(stage) -> None:
    server, clients, inputs = _round(PARAMS, seed=11)
    ids = sorted(_KEYS)
    if stage is None:
        drop: dict[Stage, set[str]] = {}
    elif stage == "all":
        drop = {s: {ids[3 * i + 1]} for i, s in enumerate(ORDER[:-1])}
    else:  # a low and a high roster index: each end of a pair (KEM sender and receiver) drops
        drop = {stage: {ids[2], ids[21]}}
    result, _ = run_round(server, clients, inputs, drop)
    early = set().union(*(drop.get(s, set()) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT)))
    survivors = [d for d in ids if d not in early]
    assert list(result.survivors) == survivors
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, survivors, PARAMS.bits))
    assert server.config.suite == SUITE_PQ


def test_a_hybrid_round_with_many_dropouts_after_share_keys_recovers_every_pair_mask() -> None:
    """Masks of dropped devices that chose the pair secret (smaller index) and that received it
    (larger index) are both removed: the server rebuilds them from the Shamir-shared mask secret."""
    params = SecAggParams(N, 16, 9, 500, 32, 3)
    server, clients, inputs = _round(params, seed=3)
    ids = sorted(_KEYS)
    drop = {Stage.MASKED_INPUT: {ids[0], ids[5], ids[12], ids[23]}}
    result, _ = run_round(server, clients, inputs, drop)
    survivors = [d for d in ids if d not in drop[Stage.MASKED_INPUT]]
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, survivors, params.bits))


def _pairs(params: SecAggParams) -> list[tuple[int, int]]:
    """Neighbour pairs (i < j) of the test graph (graph seed bytes(range(32)), as in _round)."""
    table = neighbour_table(bytes(range(32)), params.num_clients, params.neighbours)
    return sorted({(min(i, j), max(i, j)) for i in range(params.num_clients) for j in table[i].tolist()})


def test_a_larger_index_dropping_after_its_shares_is_unmasked_through_the_smaller_survivors_wrap() -> None:
    """j > i drops at MASKED_INPUT after sending shares; i survives, chose the pair secret, and
    wrapped it in its masked input under the pad j sealed to it. The coordinator opens the wrap with
    the pad rebuilt from j's mask secret, even when i itself goes silent after its masked input (at
    CONSISTENCY_CHECK or UNMASK): nothing from i is needed after MASKED_INPUT."""
    server, clients, inputs = _round(PARAMS, seed=21)
    ids = sorted(_KEYS)
    pairs = _pairs(PARAMS)
    j = max(b for _, b in pairs)  # the largest index: every one of its neighbours is smaller
    smaller = sorted(a for a, b in pairs if b == j)
    assert len(smaller) >= 2
    drop = {Stage.MASKED_INPUT: {ids[j]}, Stage.CONSISTENCY_CHECK: {ids[smaller[0]]}, Stage.UNMASK: {ids[smaller[1]]}}
    opened = []
    orig = server._dropped_pair_secret

    def spy(i: int, jj: int, sigma: bytes) -> bytes:
        opened.append((i, jj))
        return orig(i, jj, sigma)

    server._dropped_pair_secret = spy  # type: ignore[method-assign]
    result, _ = run_round(server, clients, inputs, drop)
    survivors = [d for d in ids if d != ids[j]]
    assert list(result.survivors) == survivors
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, survivors, PARAMS.bits))
    assert {(i, j) for i in smaller} <= set(opened)  # every pair went through the wrap, the silent ones too


def test_the_wrap_is_what_removes_a_dropped_larger_neighbours_pair_mask() -> None:
    """A survivor's wrap flipped in one bit leaves that pair's mask in the sum: the coordinator cannot
    tell (a survivor can spoil the sum as it can with its masked input in every suite), but the sum is
    wrong, never the neighbour's secrets revealed."""
    server, clients, inputs = _round(PARAMS, seed=22)
    ids = sorted(_KEYS)
    pairs = _pairs(PARAMS)
    j = max(b for _, b in pairs)
    i = min(a for a, b in pairs if b == j)
    orig = server.receive

    def tamper(msg):
        if isinstance(msg, MaskedInput) and msg.device_id == ids[i]:
            wraps = bytearray(msg.pair_wraps)
            wraps[-1] ^= 1  # j is i's largest neighbour: its wrap is the last
            msg = MaskedInput(msg.device_id, msg.round_id, msg.vector, bytes(wraps))
        orig(msg)

    server.receive = tamper  # type: ignore[method-assign]
    result, _ = run_round(server, clients, inputs, {Stage.MASKED_INPUT: {ids[j]}})
    survivors = [d for d in ids if d != ids[j]]
    assert list(result.survivors) == survivors
    assert not np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, survivors, PARAMS.bits))


def _to_masked_input(seed: int):
    server, clients, inputs = _round(PARAMS, seed=seed)
    for d, c in clients.items():
        c.set_input(inputs[d])
    cfg = server.start()
    for c in clients.values():
        server.receive(c.handle(cfg))
    for d, req in server.close_stage().items():
        server.receive(clients[d].handle(req))
    return server, clients, server.close_stage()


def test_a_malformed_pair_wraps_field_is_refused_with_a_clear_error() -> None:
    server, clients, relayed = _to_masked_input(seed=23)
    ids = sorted(_KEYS)
    d = ids[0]  # index 0: every neighbour is larger, so it wraps one pair secret per held neighbour
    reply = clients[d].handle(relayed[d])
    assert len(reply.pair_wraps) == 32 * len(relayed[d].senders) > 0
    for bad in (reply.pair_wraps[:-1], reply.pair_wraps + bytes(32), b""):
        with pytest.raises(ProtocolError, match="pair_wraps must be"):
            server.receive(MaskedInput(d, reply.round_id, reply.vector, bad))
    with pytest.raises(WireError, match="pair_wraps: expected bytes"):
        wire.decode(wire.encode(MaskedInput(d, reply.round_id, reply.vector, "x" * 32)))  # type: ignore[arg-type]
    server.receive(reply)  # the well-formed one is still taken
    # the largest index wraps nothing
    last = ids[-1]
    assert clients[last].handle(relayed[last]).pair_wraps == b""


def test_pair_secrets_open_only_for_neighbours_the_signed_survivor_set_lists_dropped() -> None:
    """A client reveals a neighbour's mask-secret share (which opens its wraps and the pair secrets it
    chose) only when the signed survivor set lists it dropped, and the self-mask share otherwise: for a
    neighbour listed alive the coordinator gets no share that opens a pair secret."""
    server, clients, inputs = _round(PARAMS, seed=24)
    ids = sorted(_KEYS)
    dropped = {ids[5], ids[17]}
    unmasks: list[UnmaskShares] = []
    orig = server.receive

    def spy(msg):
        if isinstance(msg, UnmaskShares):
            unmasks.append(msg)
        orig(msg)

    opened: list[int] = []
    pair_secret = server._dropped_pair_secret

    def spy_open(i: int, j: int, sigma: bytes) -> bytes:
        opened.append(j)
        return pair_secret(i, j, sigma)

    server.receive = spy  # type: ignore[method-assign]
    server._dropped_pair_secret = spy_open  # type: ignore[method-assign]
    result, _ = run_round(server, clients, inputs, {Stage.MASKED_INPUT: dropped})
    assert set(result.survivors) == set(ids) - dropped
    assert np.array_equal(result.total.astype(np.uint64), plain_sum(inputs, sorted(result.survivors), PARAMS.bits))
    revealed = {ids[j] for m in unmasks for j in m.dropped.tolist()}
    assert revealed == dropped
    for m in unmasks:
        assert not set(m.alive.tolist()) & set(m.dropped.tolist())
        assert len(m.key_shares) == len(m.dropped) and len(m.self_mask_shares) == len(m.alive)
    # the coordinator opened the pair secrets (chosen or wrapped) of the dropped devices' pairs, no others
    assert opened and {ids[j] for j in opened} == dropped


def test_a_device_requiring_the_hybrid_refuses_a_classic_round_before_anything_changes() -> None:
    roster = {d: k.public_bytes() for d, k in _KEYS.items()}
    for classic in (SUITE, SUITE_AES):
        server = SecAggServer(PARAMS, 1, roster, max_abs_int=1000, clock=lambda: 0.0, suite=SUITE)
        cfg = server.start()
        if classic != SUITE:
            cfg = type(cfg)(cfg.round_id, cfg.params, cfg.graph_seed, cfg.roster, classic)
        d = sorted(_KEYS)[0]
        client = SecAggClient(d, _KEYS[d], roster.get, round_id=1, require_suite=SUITE_PQ)
        with pytest.raises(ProtocolError, match="requires"):
            client.handle(cfg)
        assert client.stage is None
    # it takes part in a hybrid round as any device
    server, clients, inputs = _round(PARAMS, seed=2, require=SUITE_PQ)
    result, _ = run_round(server, clients, inputs, {})
    assert len(result.survivors) == N


def test_a_device_requiring_the_hybrid_reports_it_alone_and_the_coordinator_picks_it() -> None:
    assert supported_suites(SUITE_PQ) == (SUITE_PQ,)
    assert SUITE_PQ in supported_suites()
    everyone = supported_suites()
    assert choose_suite([everyone] * 5) != SUITE_PQ  # nobody requires it: the classic pick
    assert choose_suite([everyone] * 5, prefer_hybrid=True) == SUITE_PQ
    assert choose_suite([everyone] * 4 + [(SUITE_PQ,)]) == SUITE_PQ
    assert choose_suite([(SUITE,)] * 4 + [(SUITE_PQ,)]) == SUITE  # one cannot run it: it will refuse


def test_a_tampered_relayed_kem_ciphertext_is_refused() -> None:
    server, clients, inputs = _round(PARAMS, seed=6)
    for d, c in clients.items():
        c.set_input(inputs[d])
    cfg = server.start()
    for c in clients.values():
        server.receive(c.handle(cfg))
    for d, req in server.close_stage().items():
        server.receive(clients[d].handle(req))
    relayed = server.close_stage()
    d, msg = next(iter(relayed.items()))
    for at in (5, kem.CIPHERTEXT_BYTES + 5, len(msg.kem_ciphertexts) - 1):
        if at >= len(msg.kem_ciphertexts):
            continue
        bad = bytearray(msg.kem_ciphertexts)
        bad[at] ^= 1
        fresh = _clone_at_masked_input(clients[d])
        with pytest.raises(SecurityError):
            fresh.handle(RelayedShares(msg.round_id, msg.senders, msg.ciphertexts, bytes(bad)))


def _clone_at_masked_input(client: SecAggClient) -> SecAggClient:
    import copy

    return copy.copy(client)


def test_the_servers_view_does_not_depend_on_the_inputs() -> None:
    """Everything the server receives has the same sizes whatever the inputs, and every masked
    vector looks uniform both for all-zero inputs and for inputs at the clipping bound."""
    sizes, vectors = [], []
    for fill in (0, 1000):
        server, clients, inputs = _round(SecAggParams(N, 12, 7, 4000, 32, 3), seed=1)
        inputs = {d: np.full(4000, fill, np.uint32) for d in inputs}
        seen: list[tuple[str, int]] = []
        vecs = {}
        orig = server.receive

        def spy(msg, seen=seen, vecs=vecs, orig=orig):
            fields = {k: v for k, v in vars(msg).items() if k not in ("device_id", "round_id")}
            seen.append(
                (
                    type(msg).__name__,
                    sum(len(v) if isinstance(v, bytes) else np.asarray(v).nbytes for v in fields.values()),
                )
            )
            if hasattr(msg, "vector"):
                vecs[msg.device_id] = np.array(msg.vector)
            orig(msg)

        server.receive = spy  # type: ignore[method-assign]
        run_round(server, clients, inputs, {})
        sizes.append(sorted(seen))
        vectors.append(vecs)
    assert sizes[0] == sizes[1]
    for vecs in vectors:
        assert len(vecs) == N
        for v in vecs.values():
            for lane in range(4):
                assert abs(float(((v >> (8 * lane)) & 0xFF).mean()) - 127.5) < 8


def test_ml_kem_is_loaded_only_when_a_round_runs_the_hybrid_suite() -> None:
    code = (
        "import sys; from fedge.agent.core.secagg import client, server, params; "
        "from fedge.agent.core import profiles; "
        "params.supported_suites(); params.mask_stream(params.SUITE); a = 'cryptography' in sys.modules; "
        "params.mask_stream(params.SUITE_PQ); print(a, 'cryptography' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, cwd=ROOT, env=env
    )
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_the_round_builder_picks_the_hybrid_only_when_asked_or_required() -> None:
    import numpy as np

    from fedge.coordinator.rounds.builder import Draw, build_round
    from fedge.coordinator.rounds.plan import TrainingConfig

    ids = [f"d{i}" for i in range(4)]
    roster = {d: IdentityKey.generate().public_bytes() for d in ids}
    cfg = TrainingConfig(goal=4, min_clients=2)
    everyone = supported_suites()

    def suite(reports: dict[str, tuple[str, ...]], prefer: bool) -> str | None:
        built = build_round(
            1, cfg, "v0", np.zeros(3, np.float32), ids, Draw.fixed(4, 4), lambda: 0.0,
            roster=roster, suites=reports, prefer_hybrid=prefer,
        )  # fmt: skip
        return built.suite

    assert suite(dict.fromkeys(ids, everyone), prefer=True) == SUITE_PQ
    assert suite(dict.fromkeys(ids, everyone), prefer=False) != SUITE_PQ
    classic_one = {**dict.fromkeys(ids, everyone), "d0": (SUITE,)}
    assert suite(classic_one, prefer=True) == SUITE  # one device without the hybrid: nobody gets it
