"""Buffered asynchronous aggregation (FedBuff) on the simulated clock, each group through the real protocol.

Up to C devices train at any time. When a slot frees, a client is drawn uniformly from those not
training (and, with ``--max-contributions``, not used up); it is available with its profile's
probability (else another is drawn: no time passes), takes the newest model version and trains for
its task time (:mod:`fedge.simulations.clock`). Finished devices enter the open group in arrival
order (:class:`fedge.coordinator.rounds.buffered.UpdateBuffer`: refused when more than S versions
stale). A full group of K is run at once by the protocol engine (build_round, the real
SecureAggregation and Participant code), each member training from the version it was sent and
scaling its clipped delta by s(tau) before masking; the group's SecAgg+ stages take simulated
time, and its version is released when they end, never before the previous group's.

Each device's dropout stage is drawn from its profile when it starts, as in synchronous rounds,
and acts in its group's SecAgg+ round. A group abandoned by SecAgg+ makes no version.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fedge.agent.core.errors import ProtocolError
from fedge.coordinator.rounds.buffered import Admission, GroupLedger, UpdateBuffer
from fedge.coordinator.rounds.staleness import parse_staleness
from fedge.simulations.clock import DeviceClock, example_counts
from fedge.simulations.config import SimConfig
from fedge.simulations.engine import RoundWork
from fedge.simulations.federation import Federation
from fedge.simulations.population import Population, RoundBehaviour, draw_round_behaviour
from fedge.simulations.report import RoundRecord
from fedge.simulations.world import ARRIVALS, TRAIN, stream

log = logging.getLogger(__name__)

#: Draws of an unavailable client before giving up on filling a training slot.
MAX_DRAWS = 10_000

_FINISH, _RELEASE = 1, 0  # at equal times a version is released before an arrival is admitted


def run_buffered(
    config: SimConfig,
    engine: Any,
    federation: Federation,
    population: Population,
    clock: DeviceClock,
    weights: np.ndarray,
    record: Callable[..., RoundRecord],
    ticks: Iterator[Any] | None = None,
) -> list[RoundRecord]:
    """Run ``config.rounds`` groups; one record per group, in release order (None-free sim_seconds, uploads)."""
    rng = stream(config.seed, ARRIVALS)
    buffer = UpdateBuffer(
        config.buffer, config.max_staleness, parse_staleness(config.staleness), config.max_contributions
    )
    if hasattr(engine, "ledger"):
        engine.ledger = GroupLedger(config.max_contributions)
    versions: dict[int, np.ndarray] = {0: weights}  # released versions a training device may still need
    latest = weights  # the newest computed model (released or pending): the next group's target
    busy: dict[int, tuple[int, int]] = {}  # client -> (base version, drop stage)
    engaged: set[int] = set()  # clients in the open group or in a group whose SecAgg+ round is running
    events: list[tuple[float, int, int, Any]] = []
    seq = 0
    last_release = 0.0
    uploads = refused_since = 0
    records: list[RoundRecord] = []

    def push(t: float, kind: int, payload: Any) -> None:
        nonlocal seq
        heapq.heappush(events, (t, kind, seq, payload))
        seq += 1

    def start(now: float) -> None:
        """Fill one training slot with an available client on the newest released version."""
        for _ in range(MAX_DRAWS):
            k = int(rng.integers(config.population))
            if k in busy or k in engaged or not buffer.may_start(_device(k)):
                continue
            b = draw_round_behaviour(population, np.array([k]), buffer.version, rng)
            if not b.available[0]:
                continue
            seconds = clock.task_seconds(b.client_ids, example_counts(federation, b.client_ids), rng)[0]
            busy[k] = (buffer.version, int(b.drop_stage[0]))
            push(now + float(seconds), _FINISH, k)
            return
        log.warning("no available client found for a training slot after %d draws", MAX_DRAWS)

    for _ in range(config.training_slots):
        start(0.0)
    members: list[tuple[int, int, Admission]] = []  # (client, drop stage, admission) of the open group
    while events and len(records) < config.rounds:
        now, kind, _, payload = heapq.heappop(events)
        if kind == _RELEASE:
            index, work, new, staleness, behaviour, started = payload
            engaged.difference_update(behaviour.client_ids.tolist())
            ok = work.status == "completed"
            buffer.applied(ok)
            if ok:
                versions[buffer.version] = new
                uploads += work.participants or 0
            for v in [v for v in versions if v < buffer.version - config.max_staleness]:
                del versions[v]  # any device trained on it will be refused
            records.append(
                record(
                    index + 1,
                    versions[buffer.version],
                    behaviour,
                    work,
                    started,
                    sim_seconds=now,
                    uploads=uploads,
                    refused=refused_since,
                    staleness_mean=float(np.mean(staleness)),
                    staleness_max=int(max(staleness)),
                )
            )
            refused_since = 0
            if ticks is not None:
                next(ticks, None)
            continue
        k = payload
        base, drop = busy.pop(k)
        try:
            members.append((k, drop, buffer.admit(_device(k), base)))
            engaged.add(k)  # not drawn again before its group's round ends
        except ProtocolError as e:
            refused_since += 1
            log.debug("update refused: %s", e, extra={"device": _device(k)})
        if buffer.groups_closed < config.rounds:
            start(now)
        if not buffer.full or buffer.groups_closed >= config.rounds:
            continue
        group = buffer.close()
        started = time.perf_counter()
        work, behaviour = _run_group(engine, group.index, latest, versions, members, federation, clock, config)
        members = []
        if work.status == "completed":
            latest = work.weights
        last_release = max(now + (work.sim_seconds or 0.0), last_release)
        push(
            last_release,
            _RELEASE,
            (group.index, work, latest, [a.staleness for a in group.members], behaviour, started),
        )
    return records


def _device(k: int) -> str:
    return f"c{k:07d}"


def _run_group(
    engine: Any,
    index: int,
    target: np.ndarray,
    versions: dict[int, np.ndarray],
    members: list[tuple[int, int, Admission]],
    federation: Federation,
    clock: DeviceClock,
    config: SimConfig,
) -> tuple[RoundWork, RoundBehaviour]:
    """One closed group through the protocol engine: each member trains from its own base version."""
    clients = np.array([k for k, _, _ in members], dtype=np.int64)
    order = np.argsort(clients)  # the engine's roster order is the clients' order, as in a sampled cohort
    clients = clients[order]
    picked = [members[i] for i in order]
    bases = sorted({a.base_version for _, _, a in picked})
    behaviour = RoundBehaviour(
        clients,
        np.ones(len(clients), dtype=bool),
        np.array([d for _, d, _ in picked], dtype=np.int8),
        seconds=np.zeros(len(clients)),
        upload_seconds=clock.upload_seconds(clients),
    )
    from fedge.simulations.protocol import GroupSpec

    spec = GroupSpec(
        tuple(versions[b] for b in bases),
        np.array([bases.index(a.base_version) for _, _, a in picked], dtype=np.int64),
        np.array([a.weight for _, _, a in picked], dtype=np.float64),
    )
    work = engine(index + 1, target, behaviour, federation, stream(config.seed, TRAIN, index + 1), group=spec)
    return work, behaviour
