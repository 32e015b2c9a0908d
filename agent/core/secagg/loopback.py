"""One whole SecAgg+ round in one process, through the wire codec: for tests, benches, simulations.

Every message is encoded and decoded as it would be on MQTT (the broadcast config and survivor
set once). ``drop`` says which devices go silent at which stage (they never answer it, nor
anything after). ``inputs`` is a mapping, or a function called just before each device masks
(so a bench at large n*d need not hold every vector). Returns the server's result, or raises RoundFailed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.secagg.client import SecAggClient
from fedge.agent.core.secagg.server import SecAggResult, SecAggServer
from fedge.agent.core.secagg.stages import ORDER, Stage


def run_round(
    server: SecAggServer,
    clients: Mapping[str, SecAggClient],
    inputs: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
    drop: Mapping[Stage, set[str]] | None = None,
    *,
    encode: bool = True,
) -> tuple[SecAggResult, dict[str, int]]:
    """Drive ``server`` and ``clients`` to the end; returns (result, bytes uploaded per device)."""
    drop = drop or {}
    silent: set[str] = set()
    uploaded = {d: 0 for d in clients}
    make = None if isinstance(inputs, Mapping) else inputs
    if isinstance(inputs, Mapping):
        for d, c in clients.items():
            if d in inputs:
                c.set_input(inputs[d])
    config = server.start()
    requests: dict[str, Any] = {d: config for d in clients}
    cache: dict[int, bytes] = {}
    for stage in ORDER[:-1]:
        silent |= set(drop.get(stage, ()))
        for dev, req in requests.items():
            if dev in silent:
                continue
            if encode:
                key = id(req)
                if key not in cache:  # broadcast messages are encoded once
                    cache[key] = wire.encode(req)
                req = wire.decode(cache[key])
            if make is not None and stage is Stage.MASKED_INPUT:
                clients[dev].set_input(make(dev))  # made just in time, to bound memory
            reply = clients[dev].handle(req)
            if encode:
                blob = wire.encode(reply)
                uploaded[dev] += len(blob)
                reply = wire.decode(blob)
            server.receive(reply)
        cache.clear()
        requests = server.close_stage()
    assert server.stage is Stage.DONE
    return server.result(), uploaded
