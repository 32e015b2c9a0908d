"""The protocol round engine of the simulator: fedge's own agent and coordinator code, in memory.

Every cohort member is an :class:`fedge.agent.participant.Participant` (training, clipping, noise,
quantization, SecAgg+ client) living on a device host (:mod:`fedge.simulations.hosts`: in this
process, on worker processes, or on Ray actors); the coordinator side, in this process, is
:class:`fedge.coordinator.rounds.engine.RoundEngine` with :class:`fedge.coordinator.rounds.secure.SecureAggregation` (or
plain aggregation). Every message crosses as real wire bytes, so bytes up and down are counted
as they would travel on MQTT. There is no second implementation of the protocol: only the
transport (batches of wire blobs) and the clock (jumped to each stage deadline) are simulated.
Client state lives only for its round and is freed as each device finishes: memory follows the
cohort, never the population.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from fedge.agent.core import wire
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.secagg.params import supported_suites
from fedge.coordinator.rounds.accounting import PrivacyAccountant
from fedge.coordinator.rounds.audit import CanaryAudit, canary_index, devices_aggregated, is_canary
from fedge.coordinator.rounds.buffered import GroupLedger, group_event
from fedge.coordinator.rounds.builder import Draw, SecureRisk, build_round
from fedge.coordinator.rounds.engine import RoundStatus
from fedge.coordinator.rounds.grouped import GroupedAggregation, GroupRefused
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.coordinator.rounds.remote import HOST as GROUP_HOST
from fedge.coordinator.rounds.secure import SecureAggregation
from fedge.coordinator.rounds.server_opt import ServerOptConfig, ServerOptimizer
from fedge.coordinator.workers import GroupWorkers
from fedge.simulations.clock import STAGE_SECONDS
from fedge.simulations.engine import RoundWork
from fedge.simulations.federation import Federation
from fedge.simulations.hosts import DeviceHost, HostPool, LocalPool, pack, unpack
from fedge.simulations.population import NO_DROP, STAGES, RoundBehaviour

log = logging.getLogger(__name__)

#: Devices per frame to a host: large enough to amortise a frame, small enough to keep both hosts busy.
BATCH = 64


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
    """How the simulated coordinator runs rounds (the campaign's TrainingConfig plus SecAgg+ risk)."""

    training: TrainingConfig
    population: int
    #: expected dropout and assumed corrupt fraction, from which SecAgg+ derives k and t
    dropout_rate: float = 0.05
    corrupt_fraction: float = 0.02
    #: canary audit: pairs of canary directions (one of each inserted), 0 = no audit
    audit_canaries: int = 0
    audit_seed: int = 0
    #: the server's update rule on each completed round's mean delta
    server_opt: ServerOptConfig = ServerOptConfig()
    #: SecAgg+ groups of at least this many devices (coordinator/rounds/grouped.py); 0 = one group
    group_size: int = 0
    #: workers running the groups' SecAgg+ servers side by side; 0 = the machine's cores
    group_workers: int = 0
    #: where they run: ``process``, ``ray`` or ``thread`` (coordinator/workers.py)
    group_engine: str = "thread"
    #: a device whose simulated task outlasts the training deadline misses the round (device profiles
    #: give devices speeds; without them every device is ideal and never late, as before the clock)
    late_devices_miss: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class GroupSpec:
    """Buffered mode: one SecAgg+ group of devices that already trained, each on its own model version.

    ``bases`` are the versions the members trained on, ``base_of`` each member's index into it and
    ``weights`` each member's staleness weight s(tau), both aligned with the behaviour's clients.
    The round's weights are the group's target version; its first stage carries no training.
    """

    bases: tuple[np.ndarray, ...]
    base_of: np.ndarray
    weights: np.ndarray


class ProtocolEngine:
    """A :data:`fedge.simulations.engine.RoundEngine` that runs the real protocol for each round.

    ``pool`` holds the device hosts (default: one host in this process over ``trainer`` and the
    round's federation). Results do not depend on the pool: each device's randomness derives from
    the round's rng and its index, and the coordinator's sums are exact.
    """

    description = "fedge protocol: agent participants + coordinator round engine (SecAgg+, DP) over the wire codec"

    def __init__(self, trainer: Any, settings: ProtocolSettings, pool: HostPool | None = None) -> None:
        self.trainer = trainer
        self.settings = settings
        self.pool = pool
        self.accountant = PrivacyAccountant("rdp")
        self.server_opt = ServerOptimizer(settings.server_opt)
        self.last: dict[str, Any] = {}
        #: adaptive clipping: the C the last completed round chose (None: the config's clip_norm)
        self.clip_norm: float | None = None
        #: the canary audit (built at the first round, when the model's dimension is known)
        self.audit: CanaryAudit | None = None
        #: buffered mode: each group accounted unamplified, capped per device (None: synchronous rounds)
        self.ledger: GroupLedger | None = None
        self._groups = GroupWorkers(settings.group_workers, settings.group_engine, GROUP_HOST)

    def close(self) -> None:
        """Stop the device hosts (worker processes, actors) and the group threads."""
        if self.pool is not None:
            self.pool.close()
        self._groups.close()

    def _epsilon(self) -> float | None:
        cfg = self.settings.training
        if self.ledger is not None:
            return self.ledger.epsilon(cfg.delta) if cfg.dp_mode != "off" else None
        return self.accountant.epsilon(cfg.delta) if cfg.dp_mode != "off" and len(self.accountant.events) else None

    def _abandoned(self, round_id: int, weights: np.ndarray, reason: str, unavailable: int) -> RoundWork:
        """A round given up before it ran: nobody took part, the model is unchanged."""
        log.warning("round abandoned: %s", reason, extra={"round": round_id})
        dropped = {"unavailable": unavailable}
        self.last = {
            "status": "abandoned",
            "reason": reason,
            "participants": 0,
            "dropped": dropped,
            "bytes_up": 0,
            "bytes_down": 0,
        }
        return RoundWork(
            weights,
            {},
            0,
            self._epsilon(),
            participants=0,
            bytes_up=0,
            bytes_down=0,
            dropped_per_stage=dropped,
            status="abandoned",
            reason=reason,
            audit=self._audit_result(),
        )

    def _audit_result(self) -> Any:
        """The audit over the rounds completed so far (None: no audit, or no round completed yet)."""
        return self.audit.result() if self.audit is not None and self.audit.rounds else None

    def __call__(
        self,
        round_id: int,
        weights: np.ndarray,
        behaviour: RoundBehaviour,
        federation: Federation,
        rng: np.random.Generator,
        group: GroupSpec | None = None,
    ) -> RoundWork:
        """Run one round (or, with ``group``, one buffered group) over the available clients of ``behaviour``."""
        s = self.settings
        cfg = s.training
        if group is not None:  # the members trained already: the first stage is as short as any other
            cfg = dataclasses.replace(cfg, train_deadline_s=cfg.stage_timeout_s)
        t0 = time.perf_counter()
        if self.pool is None:
            self.pool = LocalPool(DeviceHost(federation.client, self.trainer))
        pool = self.pool
        # unavailable devices never check in, so they are not in the round's roster
        avail = behaviour.available
        clients = behaviour.client_ids[avail]
        ids = [f"c{int(k):07d}" for k in clients]
        unavailable = int((~avail).sum())
        root = int(rng.integers(2**63))
        if len(ids) < max(2, cfg.min_clients):
            reason = (
                f"{len(ids)} of {len(avail)} sampled devices available, minimum cohort is {max(2, cfg.min_clients)}"
            )
            return self._abandoned(round_id, weights, reason, unavailable)
        drop_at = [(st if st != NO_DROP else len(STAGES)) for st in behaviour.drop_stage[avail].tolist()]
        first_reply = 0 if cfg.secagg else STAGES.index("masked_input")  # the stage of the first answer
        task_s = None if behaviour.seconds is None else behaviour.seconds[avail]
        if task_s is not None and group is None and s.late_devices_miss:
            # a device still training at the first deadline misses the round, as if it dropped there
            drop_at = [first_reply if t > cfg.train_deadline_s else st for st, t in zip(drop_at, task_s.tolist())]
        extras: list[list[Any]] = [[-1, 1.0]] * len(ids)
        if group is not None:
            extras = [[int(b), float(w)] for b, w in zip(group.base_of[avail].tolist(), group.weights[avail].tolist())]
        canaries: list[str] = []
        if s.audit_canaries:
            if self.audit is None:
                self.audit = CanaryAudit(s.audit_canaries, weights.size, s.audit_seed, cfg.delta)
            # canaries join each round with the rate real clients have; they never drop and never train
            canaries = self.audit.takes_part(round_id, len(behaviour.client_ids) / s.population)
            clients = np.concatenate([clients, [-1 - canary_index(c) for c in canaries]]).astype(np.int64)
            ids = ids + canaries
            drop_at = drop_at + [len(STAGES)] * len(canaries)
        host_of = {d: i % pool.size for i, d in enumerate(ids)}
        shards: list[list[Any]] = [[] for _ in range(pool.size)]
        extras = extras + [[-1, 1.0]] * len(canaries)
        for i, (d, k, st, ex) in enumerate(zip(ids, clients.tolist(), drop_at, extras)):
            shards[host_of[d]].append([d, k, i, st, *ex])
        bases = [] if group is None else [np.ascontiguousarray(b, dtype=np.float32).tobytes() for b in group.bases]
        begun = pool.exchange(
            [
                [
                    pack(
                        {
                            "kind": "round",
                            "round": round_id,
                            "root": root,
                            "secagg": cfg.secagg,
                            "audit_seed": s.audit_seed,
                            "devices": sh,
                            "bases": bases,
                        }
                    )
                ]
                for sh in shards
            ]
        )
        roster = {}
        for _, reply in begun:
            r = unpack(reply)
            roster.update(zip(r["ids"], r["keys"]))
        del shards

        clock = _Clock()
        if cfg.secagg:
            roster = {d: roster[d] for d in ids}
            pool.broadcast(pack({"kind": "roster", "ids": list(roster), "keys": list(roster.values())}))
        # the cohort was drawn from the whole population; availability only thins it further. A buffered
        # group is no sample the coordinator drew: its plan and event claim no amplification.
        draw = Draw.fixed(s.population, len(behaviour.client_ids)) if group is None else Draw.fixed(len(ids), len(ids))
        # The canaries are extra clients of the round, outside the drawn cohort: the goal and the release
        # floor wait for them. They add no noise share (the coordinator would know it), so in distributed
        # mode the noise is planned over the real clients' min_clients alone (build_round's ``canaries``).
        k = len(canaries)
        round_cfg = dataclasses.replace(cfg, goal=cfg.goal + k) if k else cfg
        try:
            built = build_round(
                round_id,
                round_cfg,
                f"r{round_id - 1}",
                weights,
                ids,
                draw,
                clock,
                clip_norm=self.clip_norm,
                roster=roster if cfg.secagg else None,
                risk=SecureRisk(s.dropout_rate, s.corrupt_fraction),
                suites=dict.fromkeys(ids, supported_suites()),
                group_size=s.group_size if group is None else 0,
                parallel=self._groups,
                hosts=self._groups.hosts,
                canaries=k,
            )
        except GroupRefused as e:
            pool.broadcast(pack({"kind": "end"}))
            return self._abandoned(round_id, weights, str(e), unavailable)
        plan, aggregation, engine = built.plan, built.aggregation, built.engine
        stage_seconds: dict[str, float] = collections.defaultdict(float)
        traffic = {"up": 0, "down": 0, "examples": 0}
        stage_seconds["setup"] = time.perf_counter() - t0

        def frames_for(outbound: list[Outbound]) -> list[Iterator[bytes]]:
            """Outbound messages as lazily built frames per host, consuming (emptying) ``outbound``.

            A message is released as soon as it is framed; one sent to many is encoded once per frame.
            """
            queues: list[collections.deque[Outbound]] = [collections.deque() for _ in range(pool.size)]
            for out in outbound:
                h = host_of.get(out.device_id)
                if h is not None:  # else not in this round's roster
                    queues[h].append(out)
            outbound.clear()

            def host_frames(q: collections.deque[Outbound]) -> Iterator[bytes]:
                while q:
                    encoded: dict[int, tuple[Any, bytes]] = {}  # id -> (message kept alive, blob)
                    blobs: list[bytes] = []
                    index: dict[int, int] = {}
                    items: list[Any] = []
                    while q and len(items) < BATCH:
                        out = q.popleft()
                        key = id(out.message)
                        bi = index.get(key)
                        if bi is None:
                            blob = wire.encode(out.message)
                            encoded[key] = (out.message, blob)
                            bi = index[key] = len(blobs)
                            blobs.append(blob)
                        if not is_canary(out.device_id):
                            traffic["down"] += len(blobs[bi])
                        items.append([out.device_id, bi])
                    yield pack({"kind": "batch", "blobs": blobs, "items": items})

            return [host_frames(q) for q in queues]

        def deliver(outbound: list[Outbound]) -> list[Outbound]:
            """Send one wave of messages; feed the replies to the coordinator; return what it sends next."""
            nxt: list[Outbound] = []
            for _, frame in pool.exchange(frames_for(outbound)):
                r = unpack(frame)
                traffic["examples"] += r["examples"]
                for device, blobs in r["replies"]:
                    for rb in blobs:
                        if not is_canary(device):
                            traffic["up"] += len(rb)
                        try:
                            nxt.extend(engine.receive(device, wire.decode(rb)))
                        except ProtocolError as e:
                            log.debug("coordinator refused a reply: %s", e, extra={"device": device, "round": round_id})
            return nxt

        outbound = engine.start()
        ran, timed_out = [engine.stage], set()  # stages in order, and those closed by their deadline
        while True:
            while outbound:
                stage, started = engine.stage, time.perf_counter()
                outbound = deliver(outbound)
                stage_seconds[stage] += time.perf_counter() - started
                if engine.stage != ran[-1]:
                    ran.append(engine.stage)
                    log.info("stage %s after %.1f s", engine.stage, time.perf_counter() - t0, extra={"round": round_id})
            if engine.status is not RoundStatus.RUNNING:
                break
            timed_out.add(engine.stage)
            clock.t = engine.deadline
            stage, started = engine.stage, time.perf_counter()
            outbound = engine.tick()
            stage_seconds[stage] += time.perf_counter() - started
            if engine.stage != ran[-1]:
                ran.append(engine.stage)
        pool.broadcast(pack({"kind": "end"}))

        outcome = engine.outcome
        if outcome is not None and outcome.next_clip_norm is not None:
            self.clip_norm = outcome.next_clip_norm
        if engine.status is RoundStatus.COMPLETED and self.ledger is not None:
            event = group_event(plan, weights.size)
            if event is not None:
                self.ledger.record(event)
        elif engine.status is RoundStatus.COMPLETED and built.event is not None:
            self.accountant.record(built.event)
        dropped = {"unavailable": unavailable, **(dict(outcome.dropped) if outcome else {})}
        participants, reason = (
            devices_aggregated(
                outcome.survivors, outcome.participants, engine.reason, engine.status is RoundStatus.COMPLETED
            )
            if outcome is not None
            else (0, engine.reason)
        )
        audit = None
        if self.audit is not None:
            started = time.perf_counter()
            if engine.status is RoundStatus.COMPLETED and outcome is not None and outcome.new_weights is not None:
                self.audit.observe(outcome.new_weights.astype(np.float64) - weights.astype(np.float64))
            audit = self._audit_result()
            stage_seconds["audit"] = time.perf_counter() - started
        self.last = {
            "status": engine.status.value,
            "reason": reason,
            "participants": participants,
            "dropped": dropped,
            "bytes_up": traffic["up"],
            "bytes_down": traffic["down"],
            "secagg": dataclasses.asdict(aggregation.params)
            if isinstance(aggregation, (SecureAggregation, GroupedAggregation))
            else None,
            "groups": len(aggregation.groups) if isinstance(aggregation, GroupedAggregation) else 1,
            "refused_groups": dict(aggregation.refused) if isinstance(aggregation, GroupedAggregation) else {},
            "clip_norm": plan.privacy.clip_norm,
            "next_clip_norm": outcome.next_clip_norm if outcome else None,
        }
        new = weights
        if engine.status is RoundStatus.COMPLETED and outcome is not None and outcome.aggregate is not None:
            new = self.server_opt.apply(weights, outcome.aggregate.mean_delta)
        sim = None
        if task_s is not None:
            answered = [t for t, st in zip(task_s.tolist(), drop_at) if st > first_reply]
            upload = behaviour.upload_seconds[avail] if behaviour.upload_seconds is not None else np.zeros(len(task_s))
            sim = sim_duration(
                ran,
                timed_out,
                first=plan.deadline_s,
                timeout=built.settings.stage_timeout_s,
                train=0.0 if group is not None else max(answered, default=0.0),
                upload=float(upload.max(initial=0.0)),
                carries_update=aggregation.first_stage == "report",
            )
        return RoundWork(
            new,
            dict(stage_seconds),
            traffic["examples"],
            self._epsilon(),
            participants=participants,
            bytes_up=traffic["up"],
            bytes_down=traffic["down"],
            dropped_per_stage=dropped,
            status=engine.status.value,
            reason=reason,
            audit=audit,
            sim_seconds=sim,
        )


def sim_duration(
    ran: list[str],
    timed_out: set[str],
    *,
    first: float,
    timeout: float,
    train: float,
    upload: float,
    carries_update: bool,
) -> float:
    """A round's length on the simulated clock (:mod:`fedge.simulations.clock`).

    ``ran``: the stages in order (the first includes training), then the final state; a stage in
    ``timed_out`` lasted its deadline (``first`` for the first, else ``timeout``); any other lasted
    STAGE_SECONDS, plus ``train`` (the slowest answering device) for the first, plus ``upload`` (the
    slowest uplink) for the stage that carries the update (masked_input, or a plain first stage).
    """
    total = 0.0
    for i, stage in enumerate(ran):
        if stage in ("completed", "abandoned", "done"):
            break
        if stage in timed_out:
            total += first if i == 0 else timeout
            continue
        total += STAGE_SECONDS + (train if i == 0 else 0.0)
        if stage == "masked_input" or (i == 0 and carries_update):
            total += upload
    return total


class _Clock:
    """Simulated coordinator time: jumps to each stage deadline."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
