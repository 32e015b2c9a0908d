"""The simulation driver: build data, population and model from a :class:`SimConfig`, run the rounds, report.

Each round samples a cohort uniformly without replacement, draws its behaviour (availability,
drop stage) from the device profiles, and hands the cohort to one :data:`RoundEngine` call. Today
the only engine is the stand-in of :mod:`simulations.standin` (plain FedAvg, no DP, no SecAgg);
the real engine runs the agent's and coordinator's protocol code and plugs in at the same call.
Client data is built per client when the engine asks for it, so memory follows the cohort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.core.errors import ConfigError
from simulations.config import SimConfig
from simulations.datasets import load_dataset, parse_dataset_spec
from simulations.engine import RoundEngine
from simulations.federation import Federation, federate
from simulations.partition import parse_partition_spec
from simulations.population import DEFAULT_PROFILE_DIR, Population, draw_round_behaviour, make_population
from simulations import standin
from simulations.report import RoundRecord, Summary, progress, write_report

log = logging.getLogger(__name__)

#: Clients (at most) whose accuracy is tracked per group, and samples (at most) taken from each.
EVAL_CLIENTS = 200
EVAL_SAMPLES_PER_CLIENT = 200

# Independent random streams, each derived from (seed, stream[, round]).
_DATA, _PARTITION, _POPULATION, _INIT, _EVAL, _COHORT, _BEHAVIOUR, _TRAIN = range(8)


def _rng(seed: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *more])


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


def run(config: SimConfig, *, engine: RoundEngine | None = None, profile_dir: Path = DEFAULT_PROFILE_DIR,
        show_progress: bool = True) -> Summary:
    """Run every round of ``config``; write the report to ``config.out`` if set; return the summary."""
    if config.engine == "ray":
        raise ConfigError("--engine ray: not available yet; use --engine local")
    t_start = time.perf_counter()
    spec = parse_dataset_spec(config.dataset)
    data = load_dataset(spec, config.population, _rng(config.seed, _DATA))
    federation = federate(data, parse_partition_spec(config.partition), config.population,
                          _rng(config.seed, _PARTITION))
    population = make_population(config.population, config.profiles, _rng(config.seed, _POPULATION),
                                 profile_dir=profile_dir)
    trainer, model_note = standin.make_trainer(config.model, data, _rng(config.seed, _INIT))
    weights = trainer.initial_weights()
    engine = engine or standin.StandInFedAvg(trainer, config.local_epochs, config.batch_size, config.learning_rate)
    description = getattr(engine, "description", None) or getattr(engine, "__name__", type(engine).__name__)
    if isinstance(engine, standin.StandInFedAvg) and (config.dp != "off" or config.secagg):
        log.warning("the stand-in engine ignores --dp %s and --secagg: results carry no privacy", config.dp)
    x_test, y_test = federation.test_set()
    groups = eval_groups(federation, population, _rng(config.seed, _EVAL))
    model_bytes = weights.size * 4
    log.info("simulating %s on %s; %s", config.model, data.name, federation.description)
    setup_seconds = time.perf_counter() - t_start

    records = []
    rounds = range(1, config.rounds + 1)
    for r in progress(rounds, config.rounds) if show_progress else rounds:
        t0 = time.perf_counter()
        cohort = np.sort(_rng(config.seed, _COHORT, r).choice(config.population, config.per_round, replace=False))
        behaviour = draw_round_behaviour(population, cohort, r, _rng(config.seed, _BEHAVIOUR, r))
        t1 = time.perf_counter()
        work = engine(r, weights, behaviour, federation, _rng(config.seed, _TRAIN, r))
        weights = work.weights
        t2 = time.perf_counter()
        correct, loss = standin.evaluate(trainer, weights, x_test, y_test)
        group_correct, _ = standin.evaluate(trainer, weights, groups.x, groups.y)
        t3 = time.perf_counter()
        participants = int(behaviour.submitted_input().sum()) if work.participants is None else work.participants
        seconds = {"sample": t1 - t0, **work.seconds_per_stage, "evaluate": t3 - t2}
        records.append(RoundRecord(
            round=r,
            accuracy=float(correct.mean()),
            loss=loss,
            epsilon=work.epsilon,
            delta=config.delta,
            participants=participants,
            dropped=len(cohort) - participants,
            bytes_up=participants * model_bytes if work.bytes_up is None else work.bytes_up,
            bytes_down=int(behaviour.available.sum()) * model_bytes if work.bytes_down is None else work.bytes_down,
            seconds=t3 - t0,
            dropped_per_stage=behaviour.dropped_per_stage(),
            seconds_per_stage=seconds,
            examples=work.examples,
            group_accuracy={g: float(group_correct[m].mean()) for g, m in groups.group_of.items()},
        ))
        log.debug("round done: accuracy %.4f", records[-1].accuracy, extra={"round": r})

    summary = Summary(config.resolved(), tuple(records), extra={
        "engine": description,
        "data": {"name": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                 "federation": federation.description, "test_samples": int(len(y_test))},
        "model": {"name": config.model, "params": int(weights.size), "trainer": model_note,
                  "input_shape": list(trainer.spec.input_shape)},
        "population": {"profiles": list(population.names),
                       "counts": np.bincount(population.assignment, minlength=len(population.names)).tolist()},
        "setup_seconds": setup_seconds,
    })
    if config.out:
        write_report(summary, Path(config.out))
    return summary
