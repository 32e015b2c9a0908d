"""One full SecAgg+ round in one process (every client and the server), against its primitive floor.

Runs one round per cipher suite (``--suite``, default every suite this machine supports: ChaCha20
masks; AES-256-CTR masks where libsodium has AES instructions; the X25519 + ML-KEM-768 hybrid where
``cryptography`` runs ML-KEM). The floor is what the cryptographic primitives alone need on one
core, measured in the same run (CPU time, best of three samples before and three after the
rounds): the suite's mask keystream (``agent.core.crypto.keystream.expand_into``) for
(k+1)*n*d*4 bytes, 2k X25519 agreements and 2k Ed25519 verifications per client; for the hybrid
suite also what ML-KEM-768 alone needs: 1 key generation from a seed, k encapsulations (each
parsing the peer's encapsulation key, as a device must) and k decapsulations per client (one
channel ciphertext per neighbour each way; the pair secrets travel inside the channels).

``ratio`` = seconds (wall) / floor; ``cpu_ratio`` = CPU seconds of the round / floor, which other
load on the machine does not skew (``cpu_share`` = CPU / wall seconds: how much of a core the
round got; ``load_avg_1m``: the machine's load when it ended). Dropouts are spread evenly over
the five stages. Inputs are random quantized vectors (what ``quantize`` returns) made just in
time per client; their generation time is excluded.

Suites run in the order given (default: ChaCha20, AES, hybrid); every suite after the classic one
(ChaCha20) also reports ``vs_classic``: its wall and CPU time over the classic round's of the same
run, and its extra upload per device. ``--params coordinator`` sizes k and t as the coordinator
does (``coordinator.rounds.secure.choose_params``: dropout cap at 2^-21, correctness 2^-21) instead
of ``derive_params(n, dropout, corrupt)``. ``--time-kem`` times every ML-KEM call of the hybrid
round in place (``kem_in_round``: calls and CPU seconds per operation, and the round's CPU without
them), to split the hybrid's cost from the code around it; use it at a small ``--dim``.

Run: ``.venv/bin/python bench/secagg.py --clients 1000 --dim 100000 --dropout 0.05``; the last
lines are one JSON object per suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.bindings as nb  # noqa: E402

from fedge.agent.core.crypto import IdentityKey, kem  # noqa: E402
from fedge.agent.core.crypto.keystream import CHACHA20, expand_into  # noqa: E402
from fedge.agent.core.secagg.client import SecAggClient  # noqa: E402
from fedge.agent.core.secagg.loopback import run_round  # noqa: E402
from fedge.agent.core.secagg.params import (  # noqa: E402
    HYBRID_SUITES,
    MASK_STREAMS,
    SUITE,
    SecAggParams,
    derive_params,
    params_bounds,
    supported_suites,
)
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


def mlkem_rates(count: int = 400) -> dict[str, float]:
    """ML-KEM-768 operations per CPU second: key generation from a 64-byte seed, encapsulation to
    a peer's 1,184-byte key (parsing it included: a device meets each peer key once) and
    decapsulation, through ``agent.core.crypto.kem`` as the round calls them."""
    keys = [kem.KemKey(os.urandom(kem.SEED_BYTES)) for _ in range(count)]
    pubs = [key.public_bytes() for key in keys]
    seeds = [os.urandom(kem.SEED_BYTES) for _ in range(count)]
    t0 = clock()
    for seed in seeds:
        kem.KemKey(seed)
    keygen = count / (clock() - t0)
    t0 = clock()
    cts = [kem.encapsulate(pub)[1] for pub in pubs]
    encap = count / (clock() - t0)
    t0 = clock()
    for key, ct in zip(keys, cts):
        key.decapsulate(ct)
    decap = count / (clock() - t0)
    return {"mlkem_keygen": keygen, "mlkem_encapsulate": encap, "mlkem_decapsulate": decap}


def primitive_rates(dim: int, stream: str, hybrid: bool, repeats: int = 3) -> dict[str, float]:
    rates = {
        "keystream": max(keystream_rate(dim, stream=stream) for _ in range(repeats)),
        "x25519": max(x25519_rate() for _ in range(repeats)),
        "ed25519_verify": max(ed25519_verify_rate() for _ in range(repeats)),
    }
    if hybrid:
        samples = [mlkem_rates() for _ in range(repeats)]
        rates |= {key: max(s[key] for s in samples) for key in samples[0]}
    return rates


class KemTimer:
    """Wraps ``kem.encapsulate``, ``KemKey.decapsulate`` and ``KemKey.__init__`` for one round and
    sums the CPU time of each (two clock reads per call); ``restore`` puts the originals back."""

    def __init__(self) -> None:
        self.calls = {"keygen": 0, "encapsulate": 0, "decapsulate": 0}
        self.seconds = dict.fromkeys(self.calls, 0.0)
        self._orig = (kem.encapsulate, kem.KemKey.decapsulate, kem.KemKey.__init__)
        encap, decap, init = self._orig

        def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any) -> Any:
                c0 = clock()
                try:
                    return fn(*a)
                finally:
                    self.seconds[name] += clock() - c0
                    self.calls[name] += 1

            return call

        kem.encapsulate = timed("encapsulate", encap)
        kem.KemKey.decapsulate = timed("decapsulate", decap)  # type: ignore[method-assign]
        kem.KemKey.__init__ = timed("keygen", init)  # type: ignore[method-assign]

    def restore(self) -> None:
        kem.encapsulate, kem.KemKey.decapsulate, kem.KemKey.__init__ = self._orig  # type: ignore[method-assign]

    def report(self, cpu: float) -> dict:
        return {
            "calls": self.calls,
            "cpu_seconds": {key: round(v, 3) for key, v in self.seconds.items()},
            "us_per_call": {key: round(v / max(self.calls[key], 1) * 1e6, 1) for key, v in self.seconds.items()},
            "round_cpu_without_kem": round(cpu - sum(self.seconds.values()), 3),
        }


def round_params(args: argparse.Namespace) -> SecAggParams:
    if args.params == "coordinator":
        from fedge.coordinator.rounds.secure import choose_params

        return choose_params(args.clients, args.dropout, args.corrupt, args.dim, args.bits, 2)
    return derive_params(args.clients, args.dropout, args.corrupt, args.dim, bits=args.bits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--corrupt", type=float, default=0.01, help="assumed corrupt fraction for k, t")
    ap.add_argument("--bits", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", action="append", choices=sorted(MASK_STREAMS), help="repeatable; default: all supported")
    ap.add_argument("--params", choices=("derive", "coordinator"), default="derive", help="how k and t are sized")
    ap.add_argument("--time-kem", action="store_true", help="time the hybrid round's ML-KEM calls in place")
    args = ap.parse_args()
    classic: dict | None = None
    for suite in args.suite or supported_suites():
        out = run(args, suite)
        if suite == SUITE:
            classic = out
        elif classic is not None:
            out["vs_classic"] = {
                "seconds": round(out["seconds"] / classic["seconds"], 3),
                "cpu_seconds": round(out["cpu_seconds"] / classic["cpu_seconds"], 3),
                "extra_upload_bytes_per_client": out["upload_bytes_per_client"] - classic["upload_bytes_per_client"],
            }
        print(json.dumps(out), flush=True)


def run(args: argparse.Namespace, suite: str) -> dict:
    stream = MASK_STREAMS[suite]
    hybrid = suite in HYBRID_SUITES
    n, d = args.clients, args.dim
    rng = np.random.default_rng(args.seed)

    params = round_params(args)
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

    rates_before = primitive_rates(d, stream, hybrid)
    server = SecAggServer(params, 1, roster, max_abs_int=max_abs, clock=time.monotonic, stage_timeout=1e9, suite=suite)
    clients = {dev: SecAggClient(dev, key, roster.get, round_id=1) for dev, key in idents.items()}
    timer = KemTimer() if args.time_kem and hybrid else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        result, uploaded = run_round(server, clients, make_input, drop)
    finally:
        if timer is not None:
            timer.restore()
    wall = time.perf_counter() - t0 - gen_time[0]
    cpu = time.process_time() - cpu0 - gen_time[1]
    rates_after = primitive_rates(d, stream, hybrid)
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
    if hybrid:
        floor_parts |= {
            "mlkem_keygen": n / rates["mlkem_keygen"],
            "mlkem_encapsulate": k * n / rates["mlkem_encapsulate"],
            "mlkem_decapsulate": k * n / rates["mlkem_decapsulate"],
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
        "params": args.params,
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
        }
        | ({key + "_per_s": round(rates[key]) for key in rates if key.startswith("mlkem")} if hybrid else {}),
        "ratio": round(wall / floor, 3),
        "cpu_ratio": round(cpu / floor, 3),
        "cpu_share": round(cpu / wall, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "upload_bytes_per_client": round(up),
        "upload_vs_fp32": round(up / (4 * d), 4),
        "bounds": params_bounds(params, args.dropout, args.corrupt).as_dict(),
    }
    if timer is not None:
        out["kem_in_round"] = timer.report(cpu)
    return out


if __name__ == "__main__":
    main()
