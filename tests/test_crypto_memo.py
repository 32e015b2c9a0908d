"""SignatureMemo: a simulator host's shared verifier answers exactly as verify() does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.agent.core.crypto import AgreementKey, AgreementMemo, IdentityKey, SignatureMemo, verify
from fedge.agent.core.errors import SecurityError


def test_memo_accepts_once_then_answers_from_memory():
    key = IdentityKey.generate()
    data = b"advert of dev-1"
    sig = key.sign(data)
    memo = SignatureMemo()
    for _ in range(5):
        memo(key.public_bytes(), data, sig)
    assert (memo.checked, memo.hits) == (1, 4)


def test_memo_never_remembers_a_refusal():
    key, other = IdentityKey.generate(), IdentityKey.generate()
    memo = SignatureMemo()
    forged = other.sign(b"x")
    for _ in range(3):
        with pytest.raises(SecurityError):
            memo(key.public_bytes(), b"x", forged)
    assert (memo.checked, memo.hits) == (3, 0)


def test_an_accepted_signature_does_not_vouch_for_other_data_or_keys():
    key, other = IdentityKey.generate(), IdentityKey.generate()
    sig = key.sign(b"survivors A")
    memo = SignatureMemo()
    memo(key.public_bytes(), b"survivors A", sig)
    with pytest.raises(SecurityError):
        memo(key.public_bytes(), b"survivors B", sig)
    with pytest.raises(SecurityError):
        memo(other.public_bytes(), b"survivors A", sig)
    memo.clear()
    memo(key.public_bytes(), b"survivors A", sig)
    assert memo.checked == 4 and memo.hits == 0


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=64), flip=st.integers(0, 63), tamper=st.booleans(), repeat=st.integers(1, 3))
def test_memo_agrees_with_verify(data, flip, tamper, repeat):
    key = IdentityKey.generate()
    sig = bytearray(key.sign(data))
    if tamper:
        sig[flip] ^= 1
    sig = bytes(sig)

    def outcome(check):
        try:
            check(key.public_bytes(), data, sig)
            return True
        except SecurityError:
            return False

    memo = SignatureMemo()
    expected = outcome(verify)
    assert [outcome(memo) for _ in range(repeat)] == [expected] * repeat


def test_agreement_memo_hands_each_pair_secret_to_the_other_end_once():
    a, b, c = (AgreementKey.generate() for _ in range(3))
    memo = AgreementMemo()
    ab = memo(a, b.public_bytes())
    ac = memo(a, c.public_bytes())
    assert memo(b, a.public_bytes()) == ab == a.exchange(b.public_bytes()) == b.exchange(a.public_bytes())
    assert memo(c, a.public_bytes()) == ac == c.exchange(a.public_bytes())
    assert (memo.computed, memo.hits) == (2, 2)
    assert memo(b, a.public_bytes()) == ab  # asked a third time: computed afresh, same secret
    assert (memo.computed, memo.hits) == (3, 2)


def test_agreement_memo_refuses_what_exchange_refuses_and_keeps_nothing():
    a = AgreementKey.generate()
    memo = AgreementMemo()
    low_order = bytes(32)  # the identity point: libsodium refuses the all-zero secret
    for _ in range(2):
        with pytest.raises(SecurityError):
            memo(a, low_order)
    with pytest.raises(SecurityError):
        memo(a, b"short")
    assert (memo.computed, memo.hits) == (3, 0)


@settings(max_examples=30, deadline=None)
@given(order=st.permutations(range(6)))
def test_agreement_memo_equals_exchange_in_any_order(order):
    """Three devices, every pair agreed from both ends, in any order: each equals a fresh exchange."""
    keys = [AgreementKey.generate() for _ in range(3)]
    asks = [(i, j) for i in range(3) for j in range(3) if i != j]
    memo = AgreementMemo()
    for n in order:
        i, j = asks[n]
        assert memo(keys[i], keys[j].public_bytes()) == keys[i].exchange(keys[j].public_bytes())
    assert memo.computed == 3 and memo.hits == 3
