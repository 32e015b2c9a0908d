"""A malicious coordinator: lying about who dropped, substituting keys, replaying, splitting views.

Every attack gets refusals (ProtocolError / SecurityError / RoundFailed from the devices) and
never gathers t shares of both secrets of any single device.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.agent.core.crypto import AgreementKey, IdentityKey, shamir
from fedge.agent.core.errors import ProtocolError, RoundFailed, SecurityError
from fedge.agent.core.messages.secagg import NeighbourKeys, RelayedShares, Survivors, UnmaskRequest, UnmaskShares
from fedge.agent.core.secagg import derive
from fedge.agent.core.secagg.loopback import run_round
from fedge.agent.core.secagg.params import SecAggParams
from fedge.agent.core.secagg.stages import Stage
from tests.secagg_fixtures import make_round

N = 10
PARAMS = SecAggParams(N, N - 1, 5, 4, 32, 3)  # complete graph, t = 5 > k/2
_KEYS = {f"dev-{i:04d}": IdentityKey.generate() for i in range(N)}


def honest_until(stage: Stage, round_id: int = 1):
    """Run the round honestly; return (round, requests the server would send for ``stage``)."""
    r = make_round(PARAMS, round_id=round_id, identities=_KEYS)
    for d, c in r.clients.items():
        c.set_input(r.inputs[d])
    cfg = r.server.start()
    out = {d: cfg for d in r.clients}
    while r.server.stage is not stage:
        for d, m in out.items():
            r.server.receive(r.clients[d].handle(m))
        out = r.server.close_stage()
    return r, out


def test_lying_about_who_dropped_gets_refusals_and_never_both_secrets() -> None:
    r, out = honest_until(Stage.CONSISTENCY_CHECK)
    ids = sorted(r.clients)
    target = ids[0]
    t_idx = 0
    alive = Survivors(1, derive.bitmap_of(range(N), N))
    dropped = Survivors(1, derive.bitmap_of(range(1, N), N))  # the target "dropped"
    # split the target's neighbours: one group sees it alive, the other sees it dropped
    group_alive = set(ids[1:6])
    # the rest, ids[6:], see it dropped
    sigs, seen = {}, {}
    for d in ids:
        view = alive if d in group_alive or d == target else dropped
        seen[d] = view
        sigs[d] = r.clients[d].handle(view).signature

    # 1. forwarding everyone's signatures: the mixed views are caught
    refusals = 0
    for d in ids[1:]:
        others = [j for j in range(N) if ids[j] != d]
        req = UnmaskRequest(1, derive.indices(others), b"".join(sigs[ids[j]] for j in others))
        probe = make_clone(r, d, seen[d])
        with pytest.raises((SecurityError, ProtocolError)):
            probe.handle(req)
        refusals += 1
    assert refusals == N - 1

    # 2. forwarding only signatures over the same view: collect whatever is revealed
    b_shares, sk_shares = [], []
    for d in ids[1:]:
        same = [j for j in range(N) if ids[j] != d and seen[ids[j]] is seen[d]]
        req = UnmaskRequest(1, derive.indices(same), b"".join(sigs[ids[j]] for j in same))
        try:
            reply: UnmaskShares = r.clients[d].handle(req)
        except RoundFailed:  # fewer than t neighbours signed this view: the device refuses
            continue
        i = ids.index(d)
        if t_idx in reply.alive.tolist():
            b_shares.append((i + 1, reply.self_mask_shares[reply.alive.tolist().index(t_idx)]))
        if t_idx in reply.dropped.tolist():
            sk_shares.append((i + 1, reply.key_shares[reply.dropped.tolist().index(t_idx)]))
        assert not (t_idx in reply.alive.tolist() and t_idx in reply.dropped.tolist())
    assert len(b_shares) < PARAMS.threshold or len(sk_shares) < PARAMS.threshold
    assert len(sk_shares) < PARAMS.threshold  # the dropped-view group is too small to reveal
    with pytest.raises(SecurityError):
        shamir.combine(
            np.array([[x for x, _ in sk_shares]], np.int64).reshape(1, -1),
            np.array([[s for _, s in sk_shares]], np.uint32).reshape(1, -1, shamir.LIMBS),
            PARAMS.threshold,
        )


def make_clone(r, device: str, view: Survivors):
    """A fresh honest run of the same device up to CONSISTENCY_CHECK is costly; instead probe the
    signature check alone on a copy of the client's state (the device refuses before revealing)."""
    import copy

    c = copy.copy(r.clients[device])
    c.__dict__ = dict(r.clients[device].__dict__)
    c.__dict__["_held"] = dict(c.__dict__["_held"])
    return c


def test_a_second_survivor_set_or_unmask_request_is_refused() -> None:
    r, out = honest_until(Stage.UNMASK)
    d = sorted(out)[0]
    client = r.clients[d]
    reply = client.handle(out[d])
    assert client.stage is Stage.DONE and isinstance(reply, UnmaskShares)
    with pytest.raises(ProtocolError):
        client.handle(out[d])  # the same request again
    with pytest.raises(ProtocolError):
        client.handle(Survivors(1, derive.bitmap_of(range(1, N), N)))  # "now the target dropped"


def test_a_substituted_public_key_is_refused() -> None:
    r, out = honest_until(Stage.SHARE_KEYS)
    d = sorted(out)[0]
    msg: NeighbourKeys = out[d]
    evil = AgreementKey.generate().public_bytes()
    keys = bytearray(msg.keys)
    keys[0:32] = evil  # the first neighbour's c_public, its signature kept
    with pytest.raises(SecurityError):
        r.clients[d].handle(NeighbourKeys(1, msg.indices, bytes(keys), msg.signatures))
    assert r.clients[d].stage is Stage.FAILED
    with pytest.raises(ProtocolError):
        r.clients[d].handle(msg)  # an aborted device stays aborted
    # re-signing with the coordinator's own key does not help either
    d2 = sorted(out)[1]
    m2: NeighbourKeys = out[d2]
    forged = IdentityKey.generate()
    j = int(m2.indices[0])
    sig = forged.sign(derive.advert_payload(r.clients[d2]._digest, sorted(r.clients)[j], evil, m2.keys[32:64]))
    with pytest.raises(SecurityError):
        r.clients[d2].handle(NeighbourKeys(1, m2.indices, evil + m2.keys[32:], sig + m2.signatures[64:]))


def test_replayed_earlier_stage_messages_are_refused_and_change_nothing() -> None:
    r = make_round(PARAMS, identities=_KEYS)
    for d, c in r.clients.items():
        c.set_input(r.inputs[d])
    cfg = r.server.start()
    adverts = {}
    for d in r.clients:
        adverts[d] = r.clients[d].handle(cfg)
        r.server.receive(adverts[d])
    keys = r.server.close_stage()
    d = sorted(keys)[0]
    c = r.clients[d]
    with pytest.raises(ProtocolError):
        c.handle(cfg)  # config replayed during SHARE_KEYS
    shares = {}
    for dd, m in keys.items():
        shares[dd] = r.clients[dd].handle(m)
        r.server.receive(shares[dd])
    with pytest.raises(ProtocolError):
        c.handle(keys[d])  # NeighbourKeys replayed
    with pytest.raises(ProtocolError):
        r.server.receive(adverts[d])  # a device's earlier-stage reply replayed to the coordinator
    with pytest.raises(ProtocolError):
        r.server.receive(shares[d])  # a duplicate
    relayed = r.server.close_stage()
    for dd, m in relayed.items():
        r.server.receive(r.clients[dd].handle(m))  # the round carries on unharmed
    assert r.server.stage is Stage.MASKED_INPUT and r.server.ready()


def test_messages_and_signatures_from_another_round_are_refused() -> None:
    r1, out1 = honest_until(Stage.UNMASK, round_id=1)
    r2, out2 = honest_until(Stage.UNMASK, round_id=2)
    d = sorted(out2)[0]
    with pytest.raises(ProtocolError):
        r2.clients[d].handle(out1[d])  # round 1's request
    old = out1[d]
    with pytest.raises(SecurityError):
        r2.clients[d].handle(UnmaskRequest(2, old.signers, old.signatures))  # round 1's signatures


def test_tampered_or_swapped_relayed_shares_are_refused() -> None:
    r, out = honest_until(Stage.MASKED_INPUT)
    ids = sorted(out)
    m: RelayedShares = out[ids[0]]
    size = len(m.ciphertexts) // len(m.senders)
    blob = bytearray(m.ciphertexts)
    blob[20] ^= 1
    with pytest.raises(SecurityError):
        r.clients[ids[0]].handle(RelayedShares(1, m.senders, bytes(blob)))
    m1: RelayedShares = out[ids[1]]
    swapped = m1.ciphertexts[size : 2 * size] + m1.ciphertexts[:size] + m1.ciphertexts[2 * size :]
    with pytest.raises(SecurityError):
        r.clients[ids[1]].handle(RelayedShares(1, m1.senders, swapped))


def test_an_unknown_peer_is_refused() -> None:
    r, out = honest_until(Stage.SHARE_KEYS)
    d = sorted(out)[0]
    c = r.clients[d]
    c._peer_identity = lambda dev: None
    with pytest.raises(SecurityError):
        c.handle(out[d])


def test_the_sum_reveals_no_single_input_and_the_server_only_sees_masked_vectors() -> None:
    """Masked uploads look uniform and differ from the inputs; only the total is exact."""
    r = make_round(SecAggParams(N, N - 1, 5, 2000, 32, 3), identities=_KEYS)
    seen = {}
    orig = r.server.receive

    def spy(msg):
        if hasattr(msg, "vector"):
            seen[msg.device_id] = np.array(msg.vector)
        orig(msg)

    r.server.receive = spy
    result, _ = run_round(r.server, r.clients, r.inputs, {})
    for d, v in seen.items():
        assert not np.array_equal(v, r.inputs[d])
        # uniform words: mean of the top byte near 127.5 (sd ~ 1.65 for 2000 samples)
        assert abs(float((v >> 24).mean()) - 127.5) < 10
    assert len(result.survivors) == N


def test_a_config_from_another_cipher_suite_is_refused_with_its_reason() -> None:
    """Peers of different fedge versions fail at the config with a reason, not with masks that do not cancel."""
    import dataclasses

    from fedge.agent.core import wire
    from fedge.agent.core.errors import WireError
    from fedge.agent.core.secagg.params import SUITE

    r = make_round(SecAggParams(6, 5, 3, 4))
    config = r.server.start()
    assert config.suite == SUITE
    d = sorted(r.clients)[0]
    with pytest.raises(ProtocolError, match="suite"):
        r.clients[d].handle(dataclasses.replace(config, suite="fedge-secagg+/aes-hkdf"))
    assert r.clients[d].stage is None  # refused before anything changed
    r.clients[d].handle(config)  # the right suite goes through
    # a config from before the suite field (4 fields) does not even decode
    import msgpack

    old = msgpack.unpackb(wire.encode(config), raw=False, ext_hook=lambda c, b: b)
    old[3] = old[3][:4]
    with pytest.raises(WireError, match="fields"):
        wire.decode(msgpack.packb(old, use_bin_type=True))


def test_outstanding_counts_what_expected_lists_through_a_round_with_dropouts() -> None:
    """The server's O(1) count equals the O(n) set the coordinator used to build per message."""
    r = make_round(SecAggParams(12, 8, 5, 6))
    for d, c in r.clients.items():
        c.set_input(r.inputs[d])
    cfg = r.server.start()
    out = {d: cfg for d in r.clients}
    silent = set(sorted(r.clients)[:2])  # drop two devices after the first stage
    first = True
    while r.server.stage is not Stage.DONE:
        assert r.server.outstanding() == len(r.server.expected())
        for d, m in out.items():
            if d in silent and not first:
                continue
            r.server.receive(r.clients[d].handle(m))
            assert r.server.outstanding() == len(r.server.expected())
        assert r.server.outstanding() == (0 if first else len(set(out) & silent))
        out = r.server.close_stage()
        first = False


def _to_unmask_with_five_answering(tamper: bool):
    """n = 8, complete graph, t = 4; five devices answer UNMASK, so each of them has exactly t shares."""
    import dataclasses

    from tests.secagg_fixtures import plain_sum

    r = make_round(SecAggParams(8, 7, 4, 6), seed=3)
    for d, c in r.clients.items():
        c.set_input(r.inputs[d])
    cfg = r.server.start()
    out = {d: cfg for d in r.clients}
    while r.server.stage is not Stage.UNMASK:
        for d, m in out.items():
            r.server.receive(r.clients[d].handle(m))
        out = r.server.close_stage()
    ids = sorted(r.clients)
    answering, victim, liar = ids[:5], ids[1], ids[0]
    for d in answering:
        reply = r.clients[d].handle(out[d])
        if tamper and d == liar:
            # Shamir is linear: shifting the liar's share by 1/lambda shifts the reconstructed seed by
            # exactly 1 in its first limb, still a well-formed seed that no range check can catch
            xs = [ids.index(a) + 1 for a in answering if a != victim]
            x0 = ids.index(liar) + 1
            lam = 1
            for x in xs:
                if x != x0:
                    lam = lam * x * pow(x - x0, -1, shamir.PRIME) % shamir.PRIME
            rows = np.array(reply.self_mask_shares, copy=True)
            row = reply.alive.tolist().index(ids.index(victim))
            rows[row, 0] = (int(rows[row, 0]) + pow(lam, -1, shamir.PRIME)) % shamir.PRIME
            reply = dataclasses.replace(reply, self_mask_shares=rows)
        r.server.receive(reply)
    return r, plain_sum(r.inputs, ids, 32)


def test_a_forged_self_mask_share_among_exactly_t_is_caught_by_the_seed_commitment() -> None:
    """With exactly t shares there is no spare one to cross-check: only the commitment tells."""
    r, want = _to_unmask_with_five_answering(tamper=False)
    r.server.close_stage()
    assert np.array_equal(r.server.result().total.astype(np.uint64), want)  # the setup itself is sound
    r, _ = _to_unmask_with_five_answering(tamper=True)
    with pytest.raises(RoundFailed, match="does not match its commitment"):
        r.server.close_stage()
    assert r.server.stage is Stage.FAILED
