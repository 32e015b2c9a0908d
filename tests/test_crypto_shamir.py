"""Shamir sharing properties: any t shares reconstruct; fewer, or tampered sets, are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.agent.core.crypto import shamir
from fedge.agent.core.errors import SecurityError


@st.composite
def sharing(draw: st.DrawFn):
    k = draw(st.integers(1, 24))
    t = draw(st.integers(1, k))
    xs = draw(st.lists(st.integers(1, shamir.PRIME - 1), min_size=k, max_size=k, unique=True))
    m = draw(st.integers(1, 3))
    secrets = np.frombuffer(draw(st.binary(min_size=32 * m, max_size=32 * m)), np.uint8).reshape(m, 32)
    pick = draw(st.permutations(range(k)))
    return np.array(xs, np.int64), t, secrets, list(pick)


@given(sharing(), st.data())
@settings(max_examples=150, deadline=None)
def test_any_t_or_more_shares_reconstruct(case, data) -> None:
    xs, t, secrets, pick = case
    shares = shamir.split(secrets, xs, t)
    assert shares.dtype == np.uint32 and shares.shape == (len(xs), len(secrets), shamir.LIMBS)
    s = data.draw(st.integers(t, len(xs)))
    chosen = pick[:s]
    m = len(secrets)
    rx = np.tile(xs[chosen], (m, 1))
    ry = shares[chosen].transpose(1, 0, 2)
    assert np.array_equal(shamir.combine(rx, ry, t), secrets)


@given(sharing())
@settings(max_examples=100, deadline=None)
def test_fewer_than_t_shares_are_refused(case) -> None:
    xs, t, secrets, pick = case
    shares = shamir.split(secrets, xs, t)
    chosen = pick[: t - 1]
    with pytest.raises(SecurityError):
        shamir.combine(np.tile(xs[chosen], (len(secrets), 1)), shares[chosen].transpose(1, 0, 2), t)


@given(sharing(), st.data())
@settings(max_examples=100, deadline=None)
def test_a_tampered_share_is_caught_when_one_extra_share_is_given(case, data) -> None:
    xs, t, secrets, pick = case
    if len(xs) == t:
        return
    shares = shamir.split(secrets, xs, t).copy()
    chosen = pick[: t + 1]
    victim = data.draw(st.sampled_from(chosen))
    limb = data.draw(st.integers(0, shamir.LIMBS - 1))
    delta = data.draw(st.integers(1, shamir.PRIME - 1))
    shares[victim, 0, limb] = (int(shares[victim, 0, limb]) + delta) % shamir.PRIME
    with pytest.raises(SecurityError):
        shamir.combine(np.tile(xs[chosen], (len(secrets), 1)), shares[chosen].transpose(1, 0, 2), t)


def test_t_minus_one_shares_are_uniform_whatever_the_secret() -> None:
    """With t-1 shares, every secret is equally consistent: shares of two different secrets
    at the same points have the same distribution (chi-square, fixed seed set, 8 bins)."""
    xs = np.array([3, 9, 11, 20])
    t = 4  # look at the first 3 shares only
    a = np.zeros((1, 32), np.uint8)
    b = np.full((1, 32), 0xFF, np.uint8)
    sa = np.concatenate([shamir.split(a, xs, t)[:3, 0, :10].ravel() for _ in range(300)])
    sb = np.concatenate([shamir.split(b, xs, t)[:3, 0, :10].ravel() for _ in range(300)])
    for s in (sa, sb):
        counts = np.bincount((s.astype(np.uint64) * 8 // shamir.PRIME).astype(np.int64), minlength=8)
        expected = len(s) / 8
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30.0  # 7 dof; p < 1e-4 beyond this


def test_validation() -> None:
    s = np.zeros((1, 32), np.uint8)
    with pytest.raises(ValueError):
        shamir.split(s, np.array([1, 1, 2]), 2)  # repeated x
    with pytest.raises(ValueError):
        shamir.split(s, np.array([0, 1, 2]), 2)  # x = 0 would reveal the secret
    with pytest.raises(ValueError):
        shamir.split(s, np.array([1, 2]), 3)  # t > share count
    for k in (2, 3, 4, 10, 11):  # even and odd share counts alike
        for t in range(1, k + 1):
            sh = shamir.split(s, np.arange(1, k + 1), t)
            assert np.array_equal(shamir.combine(np.arange(1, k + 1)[None, :], sh.transpose(1, 0, 2), t), s)


@settings(max_examples=40)
@given(
    s=st.integers(3, 24),
    data=st.data(),
)
def test_off_polynomial_names_exactly_the_shares_off_the_first_ts_polynomial(s, data) -> None:
    """Honest rows are screened out by one random dual-code check; a row with shares shifted at any
    positions after the first t and in any limb is looked at exactly and those positions named."""
    t = data.draw(st.integers(1, s - 1))
    rows = data.draw(st.integers(1, 6))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    xs = np.stack([rng.permutation(np.arange(1, 200))[:s] for _ in range(rows)]).astype(np.int64)
    ys = np.stack([shamir.split(rng.integers(0, 256, (1, 32), dtype=np.uint8), x, t)[:, 0, :] for x in xs])
    assert not shamir.off_polynomial(xs, ys, t).any()
    want = np.zeros((rows, s), bool)
    for _ in range(data.draw(st.integers(1, 3))):
        r, i, limb = int(rng.integers(rows)), int(rng.integers(t, s)), int(rng.integers(shamir.LIMBS))
        ys[r, i, limb] = (int(ys[r, i, limb]) + int(rng.integers(1, shamir.PRIME))) % shamir.PRIME
        want[r, i] = True
    assert np.array_equal(shamir.off_polynomial(xs, ys, t), want)
