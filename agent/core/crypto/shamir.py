"""Shamir t-of-n secret sharing of 32-byte keys over GF(p), p = 2^31 - 1, vectorised in numpy.

A 32-byte secret is cut into 11 limbs of 24 bits (the last holds 16), each shared with its
own random polynomial of degree t-1. Share x-coordinates are 1..p-1 chosen by the caller
(SecAgg uses roster index + 1). Reconstruction checks that every limb fits in 24 bits and,
given more than t shares, that all of them lie on one polynomial: a wrong share is caught
with overwhelming probability and raises :class:`SecurityError`. Fewer than t shares raise
too: they carry no information about the secret.
"""

from __future__ import annotations

import numpy as np

from fedge.agent.core.crypto.randomness import random_bytes
from fedge.agent.core.errors import SecurityError

PRIME = 2**31 - 1
SECRET_BYTES = 32
LIMB_BITS = 24
LIMBS = 11  # ceil(256 / 24)
_P = np.uint64(PRIME)


def _field_random(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform field elements from OS randomness (rejection of the single value p)."""
    count = int(np.prod(shape))
    out = np.frombuffer(random_bytes(4 * count), dtype="<u4").astype(np.uint64) & np.uint64(0x7FFFFFFF)
    bad = out == _P
    while bad.any():
        out[bad] = np.frombuffer(random_bytes(4 * int(bad.sum())), dtype="<u4") & 0x7FFFFFFF
        bad = out == _P
    return out.reshape(shape)


def to_limbs(secrets: np.ndarray) -> np.ndarray:
    """(m, 32) uint8 secrets -> (m, 11) uint64 limbs of 24 bits, little-endian."""
    s = np.asarray(secrets, dtype=np.uint8)
    if s.ndim != 2 or s.shape[1] != SECRET_BYTES:
        raise ValueError("secrets must be an (m, 32) uint8 array")
    padded = np.zeros((s.shape[0], LIMBS * 3), np.uint8)
    padded[:, :SECRET_BYTES] = s
    b = padded.reshape(s.shape[0], LIMBS, 3).astype(np.uint64)
    return b[..., 0] | (b[..., 1] << np.uint64(8)) | (b[..., 2] << np.uint64(16))


def from_limbs(limbs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_limbs`; raises :class:`SecurityError` if a limb is out of range."""
    v = np.asarray(limbs, dtype=np.uint64)
    if (v >> np.uint64(LIMB_BITS)).any() or (v[:, -1] >> np.uint64(16)).any():
        raise SecurityError("inconsistent shares")
    out = np.empty((v.shape[0], LIMBS, 3), np.uint8)
    for i in range(3):
        out[..., i] = (v >> np.uint64(8 * i)) & np.uint64(0xFF)
    return out.reshape(v.shape[0], LIMBS * 3)[:, :SECRET_BYTES]


def _check_xs(xs: np.ndarray) -> np.ndarray:
    x = np.asarray(xs, dtype=np.int64).reshape(-1)
    if (x <= 0).any() or (x >= PRIME).any():
        raise ValueError("share x-coordinates must be in 1..p-1")
    if len(np.unique(x)) != len(x):
        raise ValueError("share x-coordinates must be distinct")
    return x.astype(np.uint64)


def _mulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * b) mod p for a, b < p (products < 2^62 fit in uint64)."""
    return (a * b) % _P


def _matmul_mod(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(v @ c) mod p without overflow: split c into 16-bit halves (t < 2^16 terms)."""
    lo = c & np.uint64(0xFFFF)
    hi = c >> np.uint64(16)
    return ((v @ lo) % _P + (((v @ hi) % _P) << np.uint64(16))) % _P


def split(secrets: np.ndarray, xs: np.ndarray, t: int) -> np.ndarray:
    """Share each of m secrets ((m, 32) uint8) t-of-len(xs): returns (len(xs), m, 11) uint32."""
    x = _check_xs(xs)
    if not 1 <= t <= len(x):
        raise ValueError(f"threshold {t} must be between 1 and the share count {len(x)}")
    limbs = to_limbs(secrets)  # (m, L)
    m = limbs.shape[0]
    coeffs = np.empty((t, m * LIMBS), np.uint64)
    coeffs[0] = limbs.reshape(-1)
    if t > 1:
        coeffs[1:] = _field_random((t - 1, m * LIMBS))
    vander = np.empty((len(x), t), np.uint64)
    vander[:, 0] = 1
    for j in range(1, t):
        vander[:, j] = _mulmod(vander[:, j - 1], x)
    return _matmul_mod(vander, coeffs).astype(np.uint32).reshape(len(x), m, LIMBS)


def _inv(a: np.ndarray) -> np.ndarray:
    """Elementwise inverse mod p by Fermat (square and multiply over p - 2)."""
    result = np.ones_like(a)
    base = a % _P
    e = PRIME - 2
    while e:
        if e & 1:
            result = _mulmod(result, base)
        base = _mulmod(base, base)
        e >>= 1
    return result


def lagrange_at_zero(xs: np.ndarray) -> np.ndarray:
    """Lagrange weights at 0 for point sets ``xs`` of shape (R, t) -> (R, t) uint64."""
    x = np.asarray(xs, dtype=np.uint64)
    r, t = x.shape
    num = np.ones((r, t), np.uint64)
    den = np.ones((r, t), np.uint64)
    for j in range(t):
        xj = x[:, j : j + 1]
        diff = (xj + _P - x) % _P  # x_j - x_i
        mask = np.arange(t) != j
        num = np.where(mask, _mulmod(num, np.broadcast_to(xj, (r, t))), num)
        den = np.where(mask, _mulmod(den, diff), den)
    return _mulmod(num, _inv(den))


def combine(xs: np.ndarray, shares: np.ndarray, t: int) -> np.ndarray:
    """Reconstruct R secrets from shares.

    ``xs`` is (R, s) x-coordinates and ``shares`` (R, s, 11) with s >= t shares per secret;
    returns (R, 32) uint8. Raises :class:`SecurityError` on too few or inconsistent shares.
    """
    x = np.asarray(xs, dtype=np.int64)
    y = np.asarray(shares, dtype=np.uint64)
    if x.ndim != 2 or y.shape != (*x.shape, LIMBS):
        raise ValueError("xs must be (R, s) and shares (R, s, 11)")
    if x.shape[1] < t or t < 1:
        raise SecurityError("too few shares")
    if (x <= 0).any() or (x >= PRIME).any() or (y >= _P).any():
        raise SecurityError("inconsistent shares")
    xs_sorted = np.sort(x, axis=1)
    if (xs_sorted[:, 1:] == xs_sorted[:, :-1]).any():
        raise SecurityError("inconsistent shares")
    xu = x.astype(np.uint64)
    w = lagrange_at_zero(xu[:, :t])  # (R, t)
    secret = np.zeros((x.shape[0], LIMBS), np.uint64)
    for i in range(t):
        secret = (secret + _mulmod(w[:, i : i + 1], y[:, i, :])) % _P
    if x.shape[1] > t and off_polynomial(xu, y, t).any():  # every extra share must lie on it too
        raise SecurityError("inconsistent shares")
    return from_limbs(secret)


#: elements of one chunk's Lagrange weights in :func:`off_polynomial` (8 MB as uint64)
_CHUNK_ELEMENTS = 1 << 20


def off_polynomial(xs: np.ndarray, shares: np.ndarray, t: int) -> np.ndarray:
    """Which shares do not lie on the polynomial through the first ``t`` shares of their row.

    ``xs`` is (R, s) distinct x-coordinates in 1..p-1 and ``shares`` (R, s, 11), s >= t; returns
    (R, s) bool, False for the first t. Once the first t are known good (their secret matched a
    commitment), this names every wrong share among the rest, however many there are, where
    :func:`decode` corrects at most (s - t) // 2.
    """
    x = np.asarray(xs, dtype=np.uint64)
    y = np.asarray(shares, dtype=np.uint64)
    if x.ndim != 2 or y.shape != (*x.shape, LIMBS) or not 1 <= t <= x.shape[1]:
        raise ValueError("xs must be (R, s) and shares (R, s, 11), with s >= t >= 1")
    r, s = x.shape
    off = np.zeros((r, s), bool)
    if s == t:
        return off
    suspect = np.flatnonzero(~_on_one_polynomial(x, y, t))  # usually none: the exact check is for those
    x, y = x[suspect], y[suspect]
    r = len(suspect)
    e = s - t
    exact = np.zeros((r, s), bool)
    # rows in chunks: the Lagrange weights are (rows, e, t) uint64 and their temporaries several
    # times that, about 150 MB at once for 1,000 secrets of 120 shares; a chunk keeps it near 8 MB
    step = max(1, _CHUNK_ELEMENTS // (e * t))
    for a in range(0, r, step):
        xc, yc = x[a : a + step], y[a : a + step]
        n = len(xc)
        w = _weights_at(np.repeat(xc[:, :t], e, axis=0), xc[:, t:].reshape(-1, 1)).reshape(n, e, t)
        val = np.zeros((n, e, LIMBS), np.uint64)
        for i in range(t):
            val = (val + _mulmod(w[:, :, i : i + 1], yc[:, None, i, :])) % _P
        exact[a : a + step, t:] = (val != yc[:, t:, :]).any(axis=2)
    off[suspect] = exact
    return off


def _on_one_polynomial(x: np.ndarray, y: np.ndarray, t: int) -> np.ndarray:
    """(R,) bool: whether each row's shares (every limb) lie on one polynomial of degree < t.

    The shares form a Reed-Solomon codeword iff they are orthogonal to its dual code, whose
    words are c_i = v_i f(x_i) with v_i = 1 / prod_{j != i} (x_i - x_j) and deg f < s - t. One
    dual word with a random f (from OS randomness, drawn here, unknown to whoever sent the shares)
    tells a non-codeword with probability 1 - 1/p per limb: O(s^2) work per row instead of the
    exact check's O((s - t) t^2). False only means "look closer"; True is wrong with prob <= 1/p."""
    r, s = x.shape
    diff = np.ones((r, s), np.uint64)
    for j in range(s):
        d = (x + _P - x[:, j : j + 1]) % _P
        d[:, j] = 1
        diff = _mulmod(diff, d)
    v = _inv(diff)
    coeffs = _field_random((r, s - t))
    f = np.zeros((r, s), np.uint64)
    for k in range(s - t):  # Horner: f(x) for each row's points
        f = (_mulmod(f, x) + coeffs[:, k : k + 1]) % _P
    c = _mulmod(v, f)
    total = _mulmod(c[:, :, None], y).sum(axis=1) % _P  # s terms < p each: no uint64 overflow
    return ~(total != 0).any(axis=1)


def _weights_at(x: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Lagrange weights of points x (R, t) evaluated at ``at`` (R, 1)."""
    r, t = x.shape
    num = np.ones((r, t), np.uint64)
    den = np.ones((r, t), np.uint64)
    for j in range(t):
        xj = x[:, j : j + 1]
        mask = np.arange(t) != j
        num = np.where(mask, _mulmod(num, np.broadcast_to((at + _P - xj) % _P, (r, t))), num)
        den = np.where(mask, _mulmod(den, (x + _P - xj) % _P), den)
    return _mulmod(num, _inv(den))


def decode(xs: np.ndarray, shares: np.ndarray, t: int) -> tuple[bytes, tuple[int, ...]]:
    """Reconstruct one secret from s >= t shares, correcting up to ``(s - t) // 2`` wrong ones.

    Berlekamp–Welch per limb in GF(p): ``xs`` is (s,) and ``shares`` (s, 11). Returns the
    32-byte secret and the x-coordinates of the shares found wrong (in any limb). Raises
    :class:`SecurityError` when more shares are wrong than can be corrected.
    """
    x = [int(v) for v in np.asarray(xs, dtype=np.int64).reshape(-1)]
    y = np.asarray(shares, dtype=np.uint64)
    s = len(x)
    if y.shape != (s, LIMBS) or s < t or t < 1:
        raise SecurityError("too few shares")
    if min(x) <= 0 or max(x) >= PRIME or len(set(x)) != s or (y >= _P).any():
        raise SecurityError("inconsistent shares")
    e = (s - t) // 2
    limbs: list[int] = []
    bad: set[int] = set()
    for limb in range(LIMBS):
        poly = _welch(x, [int(v) for v in y[:, limb]], t, e)
        limbs.append(poly[0])
        bad.update(xi for xi, yi in zip(x, y[:, limb]) if _eval(poly, xi) != int(yi))
    if len(bad) > e:
        raise SecurityError("inconsistent shares")
    secret = from_limbs(np.array([limbs], np.uint64))[0].tobytes()
    return secret, tuple(sorted(bad))


def _eval(poly: list[int], x: int) -> int:
    acc = 0
    for c in reversed(poly):
        acc = (acc * x + c) % PRIME
    return acc


def _welch(x: list[int], y: list[int], t: int, e: int) -> list[int]:
    """The polynomial of degree < t through all but at most e of the points (x, y), or SecurityError.

    Solve Q(x_i) = y_i E(x_i) for Q of degree < t + e and monic E of degree e; then P = Q / E.
    """
    p, nq = PRIME, t + e
    rows = []
    for xi, yi in zip(x, y):
        pw = [1]
        for _ in range(nq + e):
            pw.append(pw[-1] * xi % p)
        rows.append(pw[:nq] + [(-yi * pw[j]) % p for j in range(e)] + [yi * pw[e] % p])
    sol = _solve(rows, nq + e)
    q, err = sol[:nq], sol[nq:] + [1]
    quotient, remainder = _divide(q, err)
    if any(remainder) or any(quotient[t:]):
        raise SecurityError("inconsistent shares")
    return (quotient + [0] * t)[:t]


def _solve(rows: list[list[int]], n: int) -> list[int]:
    """One solution of the linear system (augmented rows) mod p, free variables 0; SecurityError if none."""
    p = PRIME
    m = [r[:] for r in rows]
    pivots, r = [], 0
    for c in range(n):
        piv = next((i for i in range(r, len(m)) if m[i][c]), None)
        if piv is None:
            continue
        m[r], m[piv] = m[piv], m[r]
        inv = pow(m[r][c], p - 2, p)
        m[r] = [v * inv % p for v in m[r]]
        for i in range(len(m)):
            if i != r and m[i][c]:
                f = m[i][c]
                m[i] = [(a - f * b) % p for a, b in zip(m[i], m[r])]
        pivots.append(c)
        r += 1
    if any(row[n] for row in m[r:]):
        raise SecurityError("inconsistent shares")
    out = [0] * n
    for i, c in enumerate(pivots):
        out[c] = m[i][n]
    return out


def _divide(num: list[int], den: list[int]) -> tuple[list[int], list[int]]:
    """Polynomial division mod p (coefficients lowest first; ``den`` monic)."""
    p = PRIME
    rem = num[:]
    dq = len(den) - 1
    quo = [0] * max(1, len(num) - dq)
    for k in range(len(num) - 1, dq - 1, -1):
        c = rem[k]
        if c:
            quo[k - dq] = c
            for j in range(dq + 1):
                rem[k - dq + j] = (rem[k - dq + j] - c * den[j]) % p
    return quo, rem[:dq]
