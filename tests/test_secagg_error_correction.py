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


def _round_with_forged_shares(liars: int):
    """n = 8, complete graph, t = 4, all eight unmask: 7 shares per secret, so one bad share is correctable.

    Each liar shifts its share of one victim's self-mask seed by a field element that keeps every
    limb in range (Shamir is linear: only a cross-check or the commitment can tell)."""
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
    victim, forgers = ids[7], ids[:liars]
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
