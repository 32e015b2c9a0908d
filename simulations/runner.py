"""The simulation driver: build data, population and model from a :class:`SimConfig`, run the rounds, report.

Each round samples a cohort uniformly without replacement, draws its behaviour (availability,
drop stage) from the device profiles, and hands the cohort to one :data:`RoundEngine` call: by
default :class:`fedge.simulations.protocol.ProtocolEngine`, the agent's and coordinator's own protocol
code (training, clipping and noise, quantization, SecAgg+, ε accounting) on device hosts in this
process, on worker processes or on Ray actors. Client data is built per client when a device
trains, so memory follows the cohort.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.agent.core.privacy.config import DpMode
from fedge.coordinator.rounds.plan import TrainingConfig
from fedge.simulations.clock import DeviceClock, example_counts
from fedge.simulations.config import SimConfig
from fedge.simulations.engine import RoundEngine, RoundWork
from fedge.simulations.federation import Federation
from fedge.simulations.population import (
    DEFAULT_PROFILE_DIR,
    STAGES,
    Population,
    RoundBehaviour,
    draw_round_behaviour,
    make_population,
)
from fedge.simulations.report import RoundRecord, Summary, progress, write_report
from fedge.simulations.trainers import evaluate
from fedge.simulations.world import (
    AUDIT,
    BEHAVIOUR,
    CLOCK,
    COHORT,
    EVAL,
    POPULATION,
    TRAIN,
    build_world,
    recipe,
    stream,
)

log = logging.getLogger(__name__)

#: Clients (at most) whose accuracy is tracked per group, and samples (at most) taken from each.
EVAL_CLIENTS = 200
EVAL_SAMPLES_PER_CLIENT = 200

#: Of the expected survivors, the share a round needs (its minimum cohort, and the clients each
#: distributed-DP noise share is sized for): rounds losing more are abandoned.
MIN_COHORT_SHARE = 0.75


@dataclass(frozen=True, eq=False)
class EvalGroups:
    """A fixed sample of clients' evaluation data, each sample tagged with its groups (profile, size quartile)."""

    x: np.ndarray
    y: np.ndarray
    group_of: dict[str, np.ndarray]  # group name -> boolean mask over the samples


def eval_groups(federation: Federation, population: Population, rng: np.random.Generator) -> EvalGroups:
    """Pick up to :data:`EVAL_CLIENTS` clients and tag their evaluation samples by profile and data-size quartile."""
    ids = np.sort(rng.choice(federation.num_clients, min(EVAL_CLIENTS, federation.num_clients), replace=False))
    xs, ys, owner, sizes = [], [], [], []
    for i, k in enumerate(ids):
        sizes.append(len(federation.client(int(k))[1]))
        x, y = federation.client_eval(int(k))
        x, y = x[:EVAL_SAMPLES_PER_CLIENT], y[:EVAL_SAMPLES_PER_CLIENT]
        xs.append(x)
        ys.append(y)
        owner.append(np.full(len(y), i))
    owner_arr = np.concatenate(owner)
    groups: dict[str, np.ndarray] = {}
    prof = population.profile_of(ids)
    for p, name in enumerate(population.names):
        groups[f"profile:{name}"] = (prof == p)[owner_arr]
    edges = np.quantile(np.array(sizes), [0.25, 0.5, 0.75])
    quart = np.searchsorted(edges, np.array(sizes), side="left")  # ties fall to the lower quartile
    for q in range(4):
        groups[f"size:q{q + 1}"] = (quart == q)[owner_arr]
    return EvalGroups(np.concatenate(xs), np.concatenate(ys), {g: m for g, m in groups.items() if m.any()})


def expected_survivors(config: SimConfig, population: Population) -> tuple[float, float]:
    """Expected clients per round whose update is sent, and the dropout rate of an available client.

    From the profiles' availability and per-stage dropout, weighted by their share of the population.
    """
    share = np.bincount(population.assignment, minlength=len(population.names)) / population.size
    avail = population.column("availability")
    table = population.dropout_table()
    sent = STAGES.index("masked_input")
    keeps_input = np.prod(1 - table[:, : sent + 1], axis=1)
    drops = 1 - np.prod(1 - table, axis=1)
    available = float((share * avail).sum())
    dropout = float((share * avail * drops).sum() / available) if available > 0 else 0.0
    return config.per_round * float((share * avail * keeps_input).sum()), dropout


def training_config(config: SimConfig, population: Population) -> tuple[TrainingConfig, float]:
    """The campaign the simulated coordinator runs, and the dropout rate SecAgg+ is sized for."""
    expected, dropout = expected_survivors(config, population)
    reports = max(1, round(expected))
    min_clients = min(config.per_round, max(2, math.floor(MIN_COHORT_SHARE * expected)))
    cfg = TrainingConfig(
        model_name=config.model,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        dp_mode=DpMode(config.dp),
        clip_norm=config.clip,
        noise_multiplier=config.noise_multiplier if config.dp != "off" else 0.0,
        delta=config.delta,
        secagg=config.secagg,
        goal=config.per_round,
        over_selection=1.0,  # the runner already samples
        min_clients=min_clients,
        expected_reports=reports,
        target_quantile=config.target_quantile,
        clip_count_stddev=config.clip_count_stddev,
        prox_mu=config.prox_mu,
    )
    return cfg, min(0.5, max(0.01, dropout))


def group_config(config: SimConfig, population: Population) -> tuple[TrainingConfig, float]:
    """Buffered mode: the campaign of each SecAgg+ group of ``--buffer`` devices that finished training.

    They are all there (availability was drawn when they started), so the group's goal is K, its
    minimum cohort :data:`MIN_COHORT_SHARE` of K and DP-FedAvg's fixed denominator K.
    """
    cfg, dropout = training_config(config, population)
    k = config.buffer
    return dataclasses.replace(
        cfg, goal=k, min_clients=max(2, math.floor(MIN_COHORT_SHARE * k)), expected_reports=k
    ), dropout


def protocol_engine(config: SimConfig, population: Population, trainer: object) -> RoundEngine:
    """The protocol engine of ``config`` with its device hosts (in process, worker processes or Ray actors)."""
    from fedge.simulations.protocol import ProtocolEngine, ProtocolSettings

    cfg, dropout = (group_config if config.mode == "buffered" else training_config)(config, population)
    settings = ProtocolSettings(
        cfg,
        config.population,
        dropout_rate=dropout,
        audit_canaries=config.audit_canaries,
        server_opt=config.server_opt,
        group_size=config.group_size,
        group_engine=config.groups_on,
        audit_seed=int(stream(config.seed, AUDIT).integers(2**63)),
        late_devices_miss=bool(config.profiles),
    )
    hosts = config.host_count()
    r = recipe(
        population=config.population,
        dataset=config.dataset,
        partition=config.partition,
        model=config.model,
        seed=config.seed,
    )
    pool = None
    if config.engine == "ray":
        from fedge.simulations.rayhosts import RayPool

        pool = RayPool(r, max(1, hosts))
    elif hosts > 0:
        from fedge.simulations.hosts import ProcessPool

        pool = ProcessPool(r, hosts)
    return ProtocolEngine(trainer, settings, pool)


def run(
    config: SimConfig,
    *,
    engine: RoundEngine | None = None,
    profile_dir: Path = DEFAULT_PROFILE_DIR,
    show_progress: bool = True,
) -> Summary:
    """Run every round of ``config``; write the report to ``config.out`` if set; return the summary.

    ``engine`` replaces the protocol engine (studies, tests); the summary names the engine used.
    """
    t_start = time.perf_counter()
    world = build_world(
        recipe(
            population=config.population,
            dataset=config.dataset,
            partition=config.partition,
            model=config.model,
            seed=config.seed,
        )
    )
    population = make_population(
        config.population, config.profiles, stream(config.seed, POPULATION), profile_dir=profile_dir
    )
    owned = engine is None
    engine = engine or protocol_engine(config, population, world.trainer)
    try:
        return _run(config, engine, world, population, t_start, show_progress)
    finally:
        if owned:
            engine.close()  # type: ignore[attr-defined]


def _run(
    config: SimConfig, engine: RoundEngine, world: object, population: Population, t_start: float, show_progress: bool
) -> Summary:
    data, federation, trainer, model_note = world.data, world.federation, world.trainer, world.model_note  # type: ignore[attr-defined]
    weights = trainer.initial_weights()
    description = getattr(engine, "description", None) or getattr(engine, "__name__", type(engine).__name__)
    x_test, y_test = federation.test_set()
    groups = eval_groups(federation, population, stream(config.seed, EVAL))
    model_bytes = weights.size * 4
    log.info("simulating %s on %s; %s", config.model, data.name, federation.description)
    setup_seconds = time.perf_counter() - t_start

    clock = DeviceClock(population, model_bytes, config.local_epochs)

    def record(
        r: int, weights: np.ndarray, behaviour: RoundBehaviour, work: RoundWork, started: float, **extra: object
    ) -> RoundRecord:
        """Evaluate ``weights`` and make round (or version) ``r``'s record."""
        t2 = time.perf_counter()
        correct, loss = evaluate(trainer, weights, x_test, y_test)
        group_correct, _ = evaluate(trainer, weights, groups.x, groups.y)
        t3 = time.perf_counter()
        participants = int(behaviour.submitted_input().sum()) if work.participants is None else work.participants
        seconds = {**work.seconds_per_stage, "evaluate": t3 - t2}
        rec = RoundRecord(
            round=r,
            accuracy=float(correct.mean()),
            loss=loss,
            epsilon=work.epsilon,
            delta=config.delta,
            participants=participants,
            dropped=len(behaviour.client_ids) - participants,
            bytes_up=participants * model_bytes if work.bytes_up is None else work.bytes_up,
            bytes_down=int(behaviour.available.sum()) * model_bytes if work.bytes_down is None else work.bytes_down,
            seconds=t3 - started,
            dropped_per_stage=behaviour.dropped_per_stage()
            if work.dropped_per_stage is None
            else work.dropped_per_stage,
            seconds_per_stage=seconds,
            examples=work.examples,
            group_accuracy={g: float(group_correct[m].mean()) for g, m in groups.group_of.items()},
            status=work.status,
            reason=work.reason,
            epsilon_empirical=None if work.audit is None else work.audit.all_rounds.epsilon_empirical,
            epsilon_lower_bound=None if work.audit is None else work.audit.all_rounds.epsilon_lower_bound,
            audit=None if work.audit is None else work.audit.to_dict(),
            **extra,  # type: ignore[arg-type]
        )
        log.debug("model version done: accuracy %.4f", rec.accuracy, extra={"round": r})
        if show_progress and (config.dp != "off" or work.status != "completed"):
            print(_round_line(rec, config.rounds, _relation(engine)), file=sys.stderr, flush=True)
        return rec

    if config.mode == "buffered":
        from fedge.simulations.buffered import run_buffered

        ticks = progress(range(config.rounds), config.rounds, desc="groups") if show_progress else None
        records = run_buffered(config, engine, federation, population, clock, weights, record, ticks)
    else:
        records = _run_sync(config, engine, federation, population, clock, weights, record, show_progress)

    summary = Summary(
        config.resolved(),
        tuple(records),
        extra={
            "engine": description,
            "hosts": getattr(getattr(engine, "pool", None), "size", None),
            "data": {
                "name": data.name,
                "input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "federation": federation.description,
                "test_samples": int(len(y_test)),
            },
            "model": {
                "name": config.model,
                "params": int(weights.size),
                "trainer": model_note,
                "input_shape": list(trainer.spec.input_shape),
            },
            "population": {
                "profiles": list(population.names),
                "counts": np.bincount(population.assignment, minlength=len(population.names)).tolist(),
            },
            "setup_seconds": setup_seconds,
            # the neighbouring relation every epsilon of this run is accounted under
            "relation": _relation(engine),
        },
    )
    if config.out:
        write_report(summary, Path(config.out))
    return summary


def _run_sync(
    config: SimConfig,
    engine: RoundEngine,
    federation: Federation,
    population: Population,
    clock: DeviceClock,
    weights: np.ndarray,
    record: object,
    show_progress: bool,
) -> list[RoundRecord]:
    """Synchronous rounds: each lasts as long as its slowest answering device, or its deadline."""
    records: list[RoundRecord] = []
    sim_now, uploads = 0.0, 0
    rounds = range(1, config.rounds + 1)
    for r in progress(rounds, config.rounds) if show_progress else rounds:
        t0 = time.perf_counter()
        cohort = np.sort(stream(config.seed, COHORT, r).choice(config.population, config.per_round, replace=False))
        behaviour = draw_round_behaviour(population, cohort, r, stream(config.seed, BEHAVIOUR, r))
        behaviour = dataclasses.replace(
            behaviour,
            seconds=clock.task_seconds(cohort, example_counts(federation, cohort), stream(config.seed, CLOCK, r)),
            upload_seconds=clock.upload_seconds(cohort),
        )
        t1 = time.perf_counter()
        work = engine(r, weights, behaviour, federation, stream(config.seed, TRAIN, r))
        weights = work.weights
        work = dataclasses.replace(work, seconds_per_stage={"sample": t1 - t0, **work.seconds_per_stage})
        sim_now += work.sim_seconds if work.sim_seconds is not None else _estimated_seconds(behaviour)
        participants = int(behaviour.submitted_input().sum()) if work.participants is None else work.participants
        uploads += participants if work.status == "completed" else 0
        records.append(record(r, weights, behaviour, work, t0, sim_seconds=sim_now, uploads=uploads))  # type: ignore[operator]
    return records


def _estimated_seconds(behaviour: RoundBehaviour) -> float:
    """A custom engine's round on the simulated clock: its slowest device that sent an update."""
    sent = behaviour.submitted_input()
    if behaviour.seconds is None or not sent.any():
        return 0.0
    up = behaviour.upload_seconds[sent] if behaviour.upload_seconds is not None else 0.0
    return float(np.max(behaviour.seconds[sent] + up))


def _relation(engine: object) -> str | None:
    """The neighbouring relation of the engine's accountant (None when nothing is accounted); a
    buffered run accounts in its group ledger, not in the round accountant."""
    ledger = getattr(engine, "ledger", None)
    accountant = ledger.accountant if ledger is not None else getattr(engine, "accountant", None)
    return accountant.relation if accountant is not None and accountant.events else None


def _round_line(rec: RoundRecord, total: int, relation: str | None = None) -> str:
    """One progress line: accuracy, ε (with its δ and relation) when accounted, and why a round was abandoned."""
    eps = "ε n/a" if rec.epsilon is None else f"ε {rec.epsilon:.4g} (δ={rec.delta:g}, {relation or 'relation n/a'})"
    line = f"round {rec.round}/{total}: accuracy {rec.accuracy:.4f}, {eps}, {rec.participants} participants"
    return line if rec.status == "completed" else f"{line}; abandoned: {rec.reason}"
