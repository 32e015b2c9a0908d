"""Shared SecAgg test helpers: a roster of real identity keys, clients, a server, inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.agent.core.crypto import IdentityKey
from fedge.agent.core.secagg.client import SecAggClient
from fedge.agent.core.secagg.params import SecAggParams
from fedge.agent.core.secagg.server import SecAggServer


@dataclass
class Round:
    """Everything one test round needs."""

    params: SecAggParams
    server: SecAggServer
    clients: dict[str, SecAggClient]
    identities: dict[str, IdentityKey]
    roster: dict[str, bytes]
    inputs: dict[str, np.ndarray]


def make_round(
    params: SecAggParams,
    *,
    round_id: int = 1,
    seed: int = 0,
    max_abs: int = 1000,
    graph_seed: bytes | None = None,
    identities: dict[str, IdentityKey] | None = None,
) -> Round:
    """A server and n clients with real keys and random quantized inputs in [-max_abs, max_abs]."""
    n = params.num_clients
    idents = identities or {f"dev-{i:04d}": IdentityKey.generate() for i in range(n)}
    roster = {d: k.public_bytes() for d, k in idents.items()}
    server = SecAggServer(params, round_id, roster, max_abs_int=max_abs, clock=lambda: 0.0, graph_seed=graph_seed)
    clients = {d: SecAggClient(d, k, roster.get, round_id=round_id) for d, k in idents.items()}
    rng = np.random.default_rng(seed)
    mask = (1 << params.bits) - 1
    inputs = {
        d: (rng.integers(-max_abs, max_abs + 1, params.dim, dtype=np.int64) & mask).astype(np.uint32) for d in idents
    }
    return Round(params, server, clients, idents, roster, inputs)


def plain_sum(inputs: dict[str, np.ndarray], devices, bits: int) -> np.ndarray:
    """The sum of the devices' quantized inputs modulo 2^bits, as uint64."""
    total = np.zeros(len(next(iter(inputs.values()))), np.uint64)
    for d in devices:
        total += inputs[d]
    return total & np.uint64((1 << bits) - 1)
