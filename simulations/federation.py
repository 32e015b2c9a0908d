"""A data set spread over a population: client k's local data on demand, never all at once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from fedge.simulations.datasets import ArrayDataset, Dataset, SyntheticDataset
from fedge.simulations.partition import Partition, PartitionSpec, SplitPartition, make_partition

log = logging.getLogger(__name__)

#: Synthetic devices pooled before a non-natural partition re-shares their samples.
SYNTHETIC_POOL_DEVICES = 200


@dataclass(frozen=True, eq=False)
class Federation:
    """Which samples each of ``num_clients`` clients holds. ``partition`` None: natural Synthetic devices."""

    data: Dataset
    num_clients: int
    partition: Partition | None
    description: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def client(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client k's local training data ``(x, y)``, built on demand."""
        if self.partition is None:
            assert isinstance(self.data, SyntheticDataset)
            return self.data.device(k)
        assert isinstance(self.data, ArrayDataset)
        idx = self.partition.indices(k)
        return self.data.x_train[idx], self.data.y_train[idx]

    def client_eval(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Data to measure client k's accuracy on: its held-out split for Synthetic, else its local data."""
        if self.partition is None:
            assert isinstance(self.data, SyntheticDataset)
            return self.data.device_test(k)
        return self.client(k)

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The global held-out test set."""
        return self.data.test_set()


def federate(data: Dataset, spec: PartitionSpec, num_clients: int, rng: np.random.Generator) -> Federation:
    """Spread ``data`` over ``num_clients`` clients as ``spec`` says.

    Synthetic with ``natural`` makes client k device k (lazily generated); Synthetic with any other
    partition pools the training splits of :data:`SYNTHETIC_POOL_DEVICES` devices and re-shares them.
    """
    if isinstance(data, SyntheticDataset):
        if spec.kind == "natural":
            return Federation(data, num_clients, None, "natural: one Synthetic device per client")
        data = data.pooled(SYNTHETIC_POOL_DEVICES)
    part = make_partition(spec, data.y_train, num_clients, rng, writers=data.writers)
    layout = "disjoint split" if isinstance(part, SplitPartition) else "per-client draws from the pool"
    return Federation(data, num_clients, part, f"{spec}: {layout} of {len(data.y_train)} samples")
