"""One full SecAgg+ round in one process (every client and the server), against its primitive floor.

Runs one round per cipher suite (``--suite``, default every suite this machine supports: ChaCha20
masks, and AES-256-CTR masks where libsodium has AES instructions). The floor is what the
cryptographic primitives alone need on one core, measured in the same run (CPU time, best of three
samples before and three after the rounds): the suite's mask keystream
(``agent.core.crypto.keystream.expand_into``) for (k+1)*n*d*4 bytes, 2k X25519 agreements
and 2k Ed25519 verifications per client. ``ratio`` = seconds (wall) / floor;
``cpu_ratio`` = CPU seconds of the round / floor, which other load on the machine does not skew.
Dropouts are spread evenly over the five stages. Inputs are random quantized vectors (what
``quantize`` returns) made just in time per client; their generation time is excluded.

Run: ``.venv/bin/python bench/secagg.py --clients 1000 --dim 100000 --dropout 0.05``; the last
lines are one JSON object per suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.bindings as nb  # noqa: E402

from fedge.agent.core.crypto import IdentityKey  # noqa: E402
from fedge.agent.core.crypto.keystream import CHACHA20, expand_into  # noqa: E402
from fedge.agent.core.secagg.client import SecAggClient  # noqa: E402
from fedge.agent.core.secagg.loopback import run_round  # noqa: E402
from fedge.agent.core.secagg.params import MASK_STREAMS, derive_params, params_bounds, supported_suites  # noqa: E402
from fedge.agent.core.secagg.quantize import check_no_wrap  # noqa: E402
from fedge.agent.core.secagg.server import SecAggServer  # noqa: E402
from fedge.agent.core.secagg.stages import ORDER  # noqa: E402

# Primitive rates use CPU time of this (single-threaded) process, the best of several samples:
# the floor is what one core needs, not what a shared machine happened to give us.
clock = time.process_time


def keystream_rate(dim: int, seconds: float = 0.3, stream: str = CHACHA20) -> float:
    """Bytes per CPU second of raw mask keystream for dim uint32, one fresh key per vector.

    Writes the stream into one reused buffer (no accumulation), as the round's masks need it.
    """
    out = np.empty(dim, np.uint32)
    done, t0 = 0, clock()
    while clock() - t0 < seconds or done < 4:
        expand_into(os.urandom(32), out, stream)
        done += 1
    return done * out.nbytes / (clock() - t0)


def x25519_rate(count: int = 2000) -> float:
    sk = os.urandom(32)
    pubs = [nb.crypto_scalarmult_base(os.urandom(32)) for _ in range(count)]
    t0 = clock()
    for p in pubs:
        nb.crypto_scalarmult(sk, p)
    return count / (clock() - t0)


def ed25519_verify_rate(count: int = 1500) -> float:
    pk, sk = nb.crypto_sign_seed_keypair(os.urandom(32))
    signed = [nb.crypto_sign(os.urandom(64), sk) for _ in range(count)]
    t0 = clock()
    for s in signed:
        nb.crypto_sign_open(s, pk)
    return count / (clock() - t0)


def primitive_rates(dim: int, stream: str, repeats: int = 3) -> dict[str, float]:
    return {
        "keystream": max(keystream_rate(dim, stream=stream) for _ in range(repeats)),
        "x25519": max(x25519_rate() for _ in range(repeats)),
        "ed25519_verify": max(ed25519_verify_rate() for _ in range(repeats)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--corrupt", type=float, default=0.01, help="assumed corrupt fraction for k, t")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", action="append", choices=sorted(MASK_STREAMS), help="repeatable; default: all supported")
    args = ap.parse_args()
    for suite in args.suite or supported_suites():
        run(args, suite)


def run(args: argparse.Namespace, suite: str) -> None:
    stream = MASK_STREAMS[suite]
    n, d = args.clients, args.dim
    rng = np.random.default_rng(args.seed)

    params = derive_params(n, args.dropout, args.corrupt, d, bits=args.bits)
    k, t = params.neighbours, params.threshold
    max_abs = (2 ** (args.bits - 1) - 1) // n
    check_no_wrap(n, max_abs, args.bits)
    idents = {f"dev-{i:05d}": IdentityKey.generate() for i in range(n)}
    roster = {dev: key.public_bytes() for dev, key in idents.items()}
    ids = sorted(roster)
    order = rng.permutation(n)
    per_stage = int(round(args.dropout * n)) // len(ORDER[:-1])
    extra = int(round(args.dropout * n)) - per_stage * len(ORDER[:-1])
    drop, pos = {}, 0
    for s_i, stage in enumerate(ORDER[:-1]):
        m = per_stage + (1 if s_i < extra else 0)
        drop[stage] = {ids[j] for j in order[pos : pos + m]}
        pos += m

    gen_time = [0.0, 0.0]  # wall, cpu

    def make_input(dev: str) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.process_time()
        g = np.random.default_rng([args.seed, int(dev[4:])])
        v = (g.integers(-max_abs, max_abs + 1, d, dtype=np.int64) & ((1 << args.bits) - 1)).astype(np.uint32)
        gen_time[0] += time.perf_counter() - t0
        gen_time[1] += time.process_time() - c0
        return v

    rates_before = primitive_rates(d, stream)
    server = SecAggServer(params, 1, roster, max_abs_int=max_abs, clock=time.monotonic, stage_timeout=1e9, suite=suite)
    clients = {dev: SecAggClient(dev, key, roster.get, round_id=1) for dev, key in idents.items()}
    cpu0, t0 = time.process_time(), time.perf_counter()
    result, uploaded = run_round(server, clients, make_input, drop)
    wall = time.perf_counter() - t0 - gen_time[0]
    cpu = time.process_time() - cpu0 - gen_time[1]
    rates_after = primitive_rates(d, stream)
    rates = {key: max(rates_before[key], rates_after[key]) for key in rates_before}

    expect = np.zeros(d, np.uint64)
    for dev in result.survivors:
        expect += make_input(dev)
    expect &= np.uint64((1 << args.bits) - 1)
    exact = bool(np.array_equal(expect.astype(np.uint32), result.total.astype(np.uint32)))

    floor_parts = {
        "keystream": (k + 1) * n * d * 4 / rates["keystream"],
        "x25519": 2 * k * n / rates["x25519"],
        "ed25519_verify": 2 * k * n / rates["ed25519_verify"],
    }
    floor = sum(floor_parts.values())
    survivors_up = [uploaded[dev] for dev in ids if dev in set(result.survivors) and dev not in drop[ORDER[-2]]]
    up = float(np.mean(survivors_up)) if survivors_up else 0.0
    out = {
        "suite": suite,
        "clients": n,
        "dim": d,
        "dropout": args.dropout,
        "corrupt": args.corrupt,
        "bits": args.bits,
        "k": k,
        "t": t,
        "survivors": len(result.survivors),
        "exact": exact,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cores_used": 1,
        "floor_seconds": round(floor, 3),
        "floor_parts": {key: round(v, 3) for key, v in floor_parts.items()},
        "rates": {
            "keystream_gb_s": round(rates["keystream"] / 1e9, 2),
            "x25519_per_s": round(rates["x25519"]),
            "ed25519_verify_per_s": round(rates["ed25519_verify"]),
        },
        "ratio": round(wall / floor, 3),
        "cpu_ratio": round(cpu / floor, 3),
        "upload_bytes_per_client": round(up),
        "upload_vs_fp32": round(up / (4 * d), 4),
        "bounds": params_bounds(params, args.dropout, args.corrupt).as_dict(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
