"""Forged Shamir shares at unmask: with more shares than the threshold, the coordinator decodes
with error correction (Berlekamp–Welch in GF(2^31 - 1)), corrects up to (s - t) // 2 bad shares,
records who sent them, and the round completes with the exact sum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.agent.core.crypto import shamir
from fedge.agent.core.errors import RoundFailed, SecurityError
from fedge.agent.core.secagg.params import SecAggParams
from fedge.agent.core.secagg.stages import Stage
from tests.secagg_fixtures import make_round, plain_sum


def _round_with_forged_shares(liars: int, *, first: int = 0):
    """n = 8, complete graph, t = 4, all eight unmask: 7 shares per secret, so one bad share is correctable.

    The liars are devices ``first`` .. ``first + liars - 1`` in the order the server receives
    the replies (which is the order of each secret's shares). Each shifts its share of one
    victim's self-mask seed by a field element that keeps every limb in range (Shamir is linear:
    only a cross-check or the commitment can tell)."""
    r = make_round(SecAggParams(8, 7, 4, 6), seed=5)
    for d, c in r.clients.items():
        c.set_input(r.inputs[d])
    cfg = r.server.start()
    out = {d: cfg for d in r.clients}
    while r.server.stage is not Stage.UNMASK:
        for d, m in out.items():
            r.server.receive(r.clients[d].handle(m))
        out = r.server.close_stage()
    ids = sorted(r.clients)
    victim, forgers = ids[7], ids[first : first + liars]
    for d in ids:
        reply = r.clients[d].handle(out[d])
        if d in forgers:
            rows = np.array(reply.self_mask_shares, copy=True)
            row = reply.alive.tolist().index(ids.index(victim))
            rows[row, 0] = (int(rows[row, 0]) + 12345) % shamir.PRIME
            reply = dataclasses.replace(reply, self_mask_shares=rows)
        r.server.receive(reply)
    return r, plain_sum(r.inputs, ids, 32), tuple(forgers)


def test_a_forged_share_at_unmask_is_corrected_and_its_sender_recorded() -> None:
    r, want, forgers = _round_with_forged_shares(liars=1)
    r.server.close_stage()
    result = r.server.result()
    assert np.array_equal(result.total.astype(np.uint64), want)
    assert result.bad_share_senders == forgers == ("dev-0000",)
    assert len(result.survivors) == 8


@pytest.mark.parametrize("first, liars", [(5, 1), (6, 1), (5, 2)], ids=["6th-share", "7th-share", "6th-and-7th"])
def test_a_forged_share_outside_the_first_t_plus_1_is_recorded_too(first: int, liars: int) -> None:
    # the victim's 7 shares arrive in reply order; the first t + 1 = 5 rebuild and cross-check its
    # seed, so these forgers' shares are never in the quick reconstruction, and 2 of them are more
    # than decoding could correct: each is checked against the polynomial the first t fixed
    r, want, forgers = _round_with_forged_shares(liars=liars, first=first)
    r.server.close_stage()
    result = r.server.result()
    assert np.array_equal(result.total.astype(np.uint64), want)
    assert result.bad_share_senders == forgers and len(forgers) == liars
    assert len(result.survivors) == 8


def test_off_polynomial_names_every_share_off_the_polynomial_of_the_first_t() -> None:
    rng = np.random.default_rng(3)
    t, s = 3, 10
    secrets = rng.integers(0, 256, (4, 32), dtype=np.uint8)
    xs = np.arange(1, s + 1)
    shares = np.transpose(shamir.split(secrets, xs, t), (1, 0, 2)).astype(np.uint64)  # (R, s, 11)
    bad = {(0, 9), (2, 3), (2, 4), (2, 5), (2, 6), (2, 7), (3, 8)}  # row 2: 5 of 7 spare shares, past decoding
    for row, col in bad:
        limb = int(rng.integers(0, shamir.LIMBS))
        shares[row, col, limb] = (shares[row, col, limb] + 1) % shamir.PRIME
    off = shamir.off_polynomial(np.tile(xs, (4, 1)), shares, t)
    assert {(int(a), int(b)) for a, b in zip(*np.nonzero(off))} == bad


def test_more_forged_shares_than_correctable_fail_the_round_not_the_sum() -> None:
    r, _, _ = _round_with_forged_shares(liars=2)  # 7 shares, t = 4: (7 - 4) // 2 = 1 correctable
    with pytest.raises(RoundFailed, match="does not match its commitment"):
        r.server.close_stage()
    assert r.server.stage is Stage.FAILED


@pytest.mark.parametrize("seed", range(5))
def test_decode_corrects_up_to_half_the_spare_shares_and_names_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t, s = int(rng.integers(1, 8)), int(rng.integers(8, 20))
    secret = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    xs = rng.choice(np.arange(1, 1000), s, replace=False)
    shares = shamir.split(secret, xs, t)[:, 0, :].astype(np.uint64)
    e = (s - t) // 2
    bad = rng.choice(s, e, replace=False)
    for b in bad:
        limb = int(rng.integers(0, shamir.LIMBS))
        shares[b, limb] = (shares[b, limb] + int(rng.integers(1, shamir.PRIME))) % shamir.PRIME
    got, wrong = shamir.decode(xs, shares, t)
    assert got == secret[0].tobytes()
    assert wrong == tuple(sorted(int(xs[b]) for b in bad))
    if e + 1 <= s - t:  # one more bad share than correctable is refused or decoded wrong, never silently right
        b = next(i for i in range(s) if i not in bad)
        shares[b] = (shares[b] + 1) % shamir.PRIME
        try:
            again, _ = shamir.decode(xs, shares, t)
        except SecurityError:
            return
        assert again != secret[0].tobytes() or e == 0
