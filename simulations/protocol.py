"""The protocol round engine of the simulator: fedge's own agent and coordinator code, in memory.

Every cohort member is an :class:`agent.participant.Participant` (training, clipping, noise,
quantization, SecAgg+ client); the coordinator side is :class:`coordinator.engine.RoundEngine`
with :class:`coordinator.secure.SecureAggregation` (or plain aggregation). Every message goes
through the real wire codec, so bytes up and down are counted as they would travel on MQTT. There
is no second implementation of the protocol: only the transport (a queue) and the clock (jumped
to each stage deadline) are simulated. Client state lives only for its round: memory follows the
cohort, never the population.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.core import wire
from agent.core.crypto import IdentityKey
from agent.core.errors import ProtocolError, SecurityError
from agent.core.privacy.accounting import PrivacyAccountant, round_event_for
from agent.core.update import noise_plan, privacy_config
from agent.participant import LocalResult, Participant
from agent.secure import PeerDirectory, secagg_factory, trusted_lookup
from coordinator.engine import PlainAggregation, RoundEngine, RoundSettings, RoundStatus
from coordinator.plan import TrainingConfig, make_plan
from coordinator.secure import SecureAggregation
from simulations.engine import RoundWork
from simulations.federation import Federation
from simulations.population import NO_DROP, STAGES, RoundBehaviour

log = logging.getLogger(__name__)

#: The reply a device sends at each SecAgg+ stage; a device that drops at a stage sends none of
#: it or anything after. Without secure aggregation the plain upload stands at ``masked_input``.
_REPLY_STAGE = {
    "KeyAdvertisement": "advertise_keys",
    "EncryptedShares": "share_keys",
    "MaskedInput": "masked_input",
    "PlainUpdate": "masked_input",
    "SurvivorSignature": "consistency_check",
    "UnmaskShares": "unmask",
}
_STAGE_INDEX = {s: i for i, s in enumerate(STAGES)}


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
    """How the simulated coordinator runs rounds (the campaign's TrainingConfig plus SecAgg+ risk)."""

    training: TrainingConfig
    population: int
    #: expected dropout and assumed corrupt fraction, from which SecAgg+ derives k and t
    dropout_rate: float = 0.05
    corrupt_fraction: float = 0.02
    sampling: str = "fixed"


class ProtocolEngine:
    """A :data:`simulations.engine.RoundEngine` that runs the real protocol for each round."""

    description = "fedge protocol: agent participants + coordinator round engine (SecAgg+, DP) over the wire codec"

    def __init__(self, trainer: Any, settings: ProtocolSettings) -> None:
        self.trainer = trainer
        self.settings = settings
        self.accountant = PrivacyAccountant("rdp")
        self.last: dict[str, Any] = {}

    def __call__(
        self, round_id: int, weights: np.ndarray, behaviour: RoundBehaviour, federation: Federation,
        rng: np.random.Generator,
    ) -> RoundWork:
        s = self.settings
        cfg = s.training
        t0 = time.perf_counter()
        # unavailable devices never check in, so they are not in the round's roster
        avail = behaviour.available
        clients = behaviour.client_ids[avail]
        ids = [f"c{int(k):07d}" for k in clients]
        if len(ids) < max(2, cfg.min_cohort):
            log.warning("only %d of %d sampled devices available: round skipped", len(ids), len(avail), extra={"round": round_id})
            self.last = {"status": "abandoned", "reason": f"{len(ids)} devices available", "participants": 0,
                         "dropped": {"unavailable": int((~avail).sum())}, "bytes_up": 0, "bytes_down": 0}
            return RoundWork(weights, {}, 0, self.accountant.epsilon(cfg.delta) if self.accountant.events else None)
        client_of = dict(zip(ids, (int(k) for k in clients)))
        drop_at = {
            d: (_STAGE_INDEX[STAGES[st]] if st != NO_DROP else len(STAGES))
            for d, st in zip(ids, behaviour.drop_stage[avail].tolist())
        }
        unavailable: set[str] = set()
        plan = make_plan(cfg, f"r{round_id - 1}", len(ids), s.population)
        clock = _Clock()
        settings = RoundSettings(goal=len(ids), min_cohort=min(cfg.min_cohort, len(ids)), stage_timeout_s=cfg.stage_timeout_s)
        examples = collections.Counter()
        child = np.random.SeedSequence(int(rng.integers(2**63)))
        seeds = dict(zip(ids, child.spawn(len(ids))))

        def train_fn(device: str) -> Callable[[Any], LocalResult]:
            def train(task: Any) -> LocalResult:
                x, y = federation.client(client_of[device])
                p = task.plan
                r = self.trainer.train(task.weights, x, y, epochs=p.epochs, batch_size=p.batch_size,
                                       learning_rate=p.learning_rate, rng=np.random.default_rng(seeds[device]))
                examples[device] = r.num_examples
                return LocalResult(r.delta, r.num_examples, r.loss)
            return train

        if cfg.secagg:
            keys = {d: IdentityKey.generate() for d in ids}
            roster = {d: k.public_bytes() for d, k in keys.items()}
            lookup = trusted_lookup(roster)  # the simulator plays the enrollment authority
            aggregation: Any = SecureAggregation(
                plan, round_id, roster, weights.size + 1, clock, min_cohort=settings.min_cohort,
                dropout_rate=s.dropout_rate, corrupt_fraction=s.corrupt_fraction,
            )

            def make(d: str) -> Participant:
                return Participant(d, train_fn(d), np.random.default_rng(seeds[d].spawn(1)[0]),
                                   secagg_factory(d, keys[d], PeerDirectory(trusted=lookup)))
        else:
            aggregation = PlainAggregation(weights.size + 1, plan.quant_bits, len(ids), settings.min_cohort)

            def make(d: str) -> Participant:
                return Participant(d, train_fn(d), np.random.default_rng(seeds[d].spawn(1)[0]))

        participants = {d: make(d) for d in ids if d not in unavailable}
        engine = RoundEngine(round_id, plan, settings, weights, ids, aggregation, clock)
        stage_seconds: dict[str, float] = collections.defaultdict(float)
        traffic = {"up": 0, "down": 0}
        t_setup = time.perf_counter()
        stage_seconds["setup"] = t_setup - t0

        def run(outbound: list[Any]) -> None:
            queue = collections.deque(outbound)
            last_msg: Any = None
            last_blob = b""
            while queue:
                out = queue.popleft()
                if out.device_id not in participants:
                    continue  # unavailable: never answers
                started = time.perf_counter()
                stage = engine.stage
                if out.message is not last_msg:  # a broadcast (config, survivors) is encoded once
                    last_msg, last_blob = out.message, wire.encode(out.message)
                blob = last_blob
                traffic["down"] += len(blob)
                try:
                    replies = participants[out.device_id].handle(wire.decode(blob))
                except (ProtocolError, SecurityError) as e:
                    log.debug("device refused %s: %s", type(out.message).__name__, e, extra={"device": out.device_id, "round": round_id})
                    replies = []
                for reply in replies:
                    st = _REPLY_STAGE.get(type(reply).__name__)
                    if st is not None and _STAGE_INDEX[st] >= drop_at[out.device_id]:
                        participants.pop(out.device_id, None)  # dropped: silent from now on
                        break
                    rblob = wire.encode(reply)
                    traffic["up"] += len(rblob)
                    try:
                        queue.extend(engine.receive(out.device_id, wire.decode(rblob)))
                    except ProtocolError as e:
                        log.debug("coordinator refused %s: %s", type(reply).__name__, e, extra={"device": out.device_id, "round": round_id})
                stage_seconds[stage] += time.perf_counter() - started

        run(engine.start())
        while engine.status is RoundStatus.RUNNING:
            clock.t = engine.deadline
            stage = engine.stage
            started = time.perf_counter()
            out = engine.tick()
            stage_seconds[stage] += time.perf_counter() - started
            run(out)

        outcome = engine.outcome
        epsilon = None
        if engine.status is RoundStatus.COMPLETED and cfg.dp_mode != "off":
            pc = dataclasses.replace(privacy_config(plan), sampling=s.sampling)
            discrete = noise_plan(plan, weights.size) if cfg.dp_mode == "distributed" else None
            self.accountant.record(round_event_for(
                pc, sampling_rate=plan.sampling_rate, population=s.population, sample_size=len(ids), discrete=discrete,
            ))
        if cfg.dp_mode != "off" and len(self.accountant.events):
            epsilon = self.accountant.epsilon(cfg.delta)
        self.last = {
            "status": engine.status.value,
            "reason": engine.reason,
            "participants": outcome.participants if outcome else 0,
            "dropped": {"unavailable": int((~avail).sum()), **(dict(outcome.dropped) if outcome else {})},
            "bytes_up": traffic["up"],
            "bytes_down": traffic["down"],
            "secagg": dataclasses.asdict(aggregation.params) if cfg.secagg else None,
        }
        if engine.status is not RoundStatus.COMPLETED:
            log.warning("round abandoned: %s", engine.reason, extra={"round": round_id})
        new = outcome.new_weights if outcome and outcome.new_weights is not None else weights
        return RoundWork(new, dict(stage_seconds), int(sum(examples.values())), epsilon)


class _Clock:
    """Simulated coordinator time: jumps to each stage deadline."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
