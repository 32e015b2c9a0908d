"""SignatureMemo: a simulator host's shared verifier answers exactly as verify() does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.crypto import IdentityKey, SignatureMemo, verify
from agent.core.errors import SecurityError


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
