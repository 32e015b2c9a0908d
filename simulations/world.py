"""What a run simulates, rebuilt identically wherever it is needed: data, federation, trainer.

The driver builds it once; each device host (worker process or Ray actor) rebuilds it from a
small recipe of plain values, so no data or model crosses a process boundary and nothing is
pickled. Every part is derived from ``(seed, stream)``, so every copy is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedge.simulations.datasets import Dataset, load_dataset, parse_dataset_spec
from fedge.simulations.federation import Federation, federate
from fedge.simulations.partition import parse_partition_spec
from fedge.simulations.trainers import LocalTrainer, make_trainer

# Independent random streams, each derived from (seed, stream[, round]).
DATA, PARTITION, POPULATION, INIT, EVAL, COHORT, BEHAVIOUR, TRAIN, AUDIT, CLOCK, ARRIVALS = range(11)


def stream(seed: int, kind: int, *more: int) -> np.random.Generator:
    """The generator of one random stream of a run."""
    return np.random.default_rng([seed, kind, *more])


@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """A run's data set, its spread over the population, and the local trainer (with a line naming it)."""

    data: Dataset
    federation: Federation
    trainer: LocalTrainer
    model_note: str


def recipe(*, population: int, dataset: str, partition: str, model: str, seed: int) -> dict[str, Any]:
    """The plain values a device host needs to rebuild the world."""
    return {"population": population, "dataset": dataset, "partition": partition, "model": model, "seed": seed}


def build_world(r: dict[str, Any]) -> World:
    """Data, federation and trainer of a recipe, from the run's seeded streams."""
    seed = r["seed"]
    data = load_dataset(parse_dataset_spec(r["dataset"]), r["population"], stream(seed, DATA))
    federation = federate(data, parse_partition_spec(r["partition"]), r["population"], stream(seed, PARTITION))
    trainer, note = make_trainer(r["model"], data, stream(seed, INIT))
    return World(data, federation, trainer, note)
