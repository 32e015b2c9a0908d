"""The only importer of cryptographic primitives in fedge (``pynacl``, i.e. libsodium).

Small modules, each one job: :mod:`.randomness` (OS randomness), :mod:`.identity` (Ed25519
long-term identities), :mod:`.agreement` (X25519 and BLAKE2b key derivation with
domain-separation labels), :mod:`.aead` (ChaCha20-Poly1305; nonces chosen here),
:mod:`.keystream` (ChaCha20 mask expansion into numpy buffers), :mod:`.transcript` (hashes of
length-prefixed parts, for signing) and :mod:`.shamir` (t-of-n sharing of 32-byte
keys in a prime field, vectorised). Every failed security check raises an opaque
:class:`~fedge.agent.core.errors.SecurityError`. ``cryptography`` is not used here: it cost the agent
8.7 MiB of RSS (the coordinator still uses it for X.509).
"""

from fedge.agent.core.crypto.aead import AEAD_KEY_BYTES, open_sealed, seal
from fedge.agent.core.crypto.agreement import AgreementKey, AgreementMemo, agree, derive_key, exchange
from fedge.agent.core.crypto.identity import IdentityKey, SignatureMemo, verify
from fedge.agent.core.crypto.keystream import MASK_KEY_BYTES, MaskAccumulator, expand_into
from fedge.agent.core.crypto.randomness import random_bytes, random_seed
from fedge.agent.core.crypto.transcript import transcript

__all__ = [
    "AEAD_KEY_BYTES",
    "MASK_KEY_BYTES",
    "AgreementKey",
    "AgreementMemo",
    "IdentityKey",
    "MaskAccumulator",
    "SignatureMemo",
    "agree",
    "derive_key",
    "exchange",
    "expand_into",
    "open_sealed",
    "random_bytes",
    "random_seed",
    "seal",
    "transcript",
    "verify",
]
