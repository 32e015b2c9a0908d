"""Known-answer tests for agent.core.crypto: RFC 7748, RFC 8032, RFC 5869, AES-128 keystream."""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.crypto import (
    AgreementKey,
    IdentityKey,
    MaskAccumulator,
    agree,
    derive_key,
    expand_into,
    open_sealed,
    seal,
    transcript,
    verify,
)
from agent.core.crypto.agreement import hkdf
from agent.core.errors import SecurityError

h = bytes.fromhex


def test_x25519_rfc7748_function_vector() -> None:
    scalar = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert agree(scalar, u) == h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


def test_x25519_rfc7748_diffie_hellman() -> None:
    alice = AgreementKey.from_private_bytes(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = AgreementKey.from_private_bytes(h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_bytes() == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public_bytes() == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public_bytes()) == shared == bob.exchange(alice.public_bytes())


def test_x25519_refuses_low_order_points() -> None:
    key = AgreementKey.generate()
    with pytest.raises(SecurityError):
        key.exchange(bytes(32))  # the identity point gives an all-zero secret
    with pytest.raises(SecurityError):
        key.exchange(b"\x01" + bytes(31))
    with pytest.raises(SecurityError):
        key.exchange(bytes(31))


@pytest.mark.parametrize(
    "secret,public,message,signature",
    [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ],
)
def test_ed25519_rfc8032(secret: str, public: str, message: str, signature: str) -> None:
    key = IdentityKey.from_private_bytes(h(secret))
    assert key.public_bytes() == h(public)
    assert key.sign(h(message)) == h(signature)
    verify(h(public), h(message), h(signature))
    bad = bytearray(h(signature))
    bad[5] ^= 1
    with pytest.raises(SecurityError):
        verify(h(public), h(message), bytes(bad))
    with pytest.raises(SecurityError):
        verify(h(public), h(message) + b"x", h(signature))


def test_identity_round_trips_through_raw_bytes() -> None:
    key = IdentityKey.generate()
    again = IdentityKey.from_private_bytes(key.private_bytes())
    assert again.public_bytes() == key.public_bytes()
    verify(key.public_bytes(), b"data", again.sign(b"data"))
    with pytest.raises(SecurityError):
        IdentityKey.from_private_bytes(b"short")


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf(b"\x0b" * 22, h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_derive_key_separates_labels_and_contexts() -> None:
    s = bytes(range(32))
    keys = {
        derive_key(s, "a", 1, 2),
        derive_key(s, "a", 2, 1),
        derive_key(s, "b", 1, 2),
        derive_key(s, "a", "1", 2),
        derive_key(s, "a", b"\x01", b"\x02"),
        derive_key(s, "a", 1),
        derive_key(s, "a", 1, 2, length=16) + bytes(16),
    }
    assert len(keys) == 7
    assert derive_key(s, "a", 1, 2) == derive_key(s, "a", 1, 2)
    assert transcript("x", b"ab", b"c") != transcript("x", b"a", b"bc")


def test_aes128_ctr_keystream_known_answer() -> None:
    # AES-128 with the zero key on counter blocks 0, 1, 2 (FIPS-197 / GCM spec test case 1-2 values)
    out = expand_into(bytes(16), np.empty(12, np.uint32))
    assert out.tobytes() == h(
        "66e94bd4ef8a2c3b884cfa59ca342b2e" "58e2fccefa7e3061367f1d57a4e7455a" "0388dace60b6a392f328c2b971b2fe78"
    )


@pytest.mark.parametrize("dim", [1, 3, 4, 5, 100, 65536 + 7, 300_001])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_keystream_paths_agree(dim: int, dtype: type) -> None:
    """Chunked, tail-handled and accumulated expansions give one and the same keystream."""
    key = bytes(range(16))
    whole = expand_into(key, np.empty(dim, dtype))
    longer = expand_into(key, np.empty(dim + 9, dtype))
    assert whole.tobytes() == longer[:dim].tobytes()
    acc = MaskAccumulator(dim, dtype)
    acc.add_mask(key, 1)
    assert np.array_equal(acc.value(), whole)
    acc.add_mask(key, -1)
    assert not acc.value().any()
    keys = [bytes([i]) * 16 for i in range(5)]
    signs = [1, -1, 1, 1, -1]
    one, many = MaskAccumulator(dim, dtype), MaskAccumulator(dim, dtype)
    for k_, s_ in zip(keys, signs):
        one.add_mask(k_, s_)
    many.add_masks(keys, signs)  # chunk-major order, same wrapping sum
    assert np.array_equal(one.value(), many.value())
    assert not np.array_equal(whole, expand_into(bytes(15) + b"\x01", np.empty(dim, dtype))) or dim == 0


def test_aead_round_trip_and_refusals() -> None:
    key = bytes(range(32))
    blob = seal(key, b"share", b"ad")
    assert open_sealed(key, blob, b"ad") == b"share"
    assert seal(key, b"share", b"ad") != blob  # fresh nonce each time
    for bad_key, bad_blob, ad in [
        (bytes(32), blob, b"ad"),
        (key, blob, b"other"),
        (key, blob[:-1] + bytes([blob[-1] ^ 1]), b"ad"),
        (key, blob[:10], b"ad"),
    ]:
        with pytest.raises(SecurityError):
            open_sealed(bad_key, bad_blob, ad)
