"""The simulated clock: how long a device takes to download, train and upload, and how long a round lasts.

A device's task time is

    relative_speed x (TASK_OVERHEAD_S + epochs x examples x EXAMPLE_SECONDS) x jitter
    + model bytes / downlink

and its upload (model bytes / uplink) is added to the stage that carries the update (report, or
SecAgg+'s masked_input).
with ``relative_speed``, ``downlink_mbps`` and ``uplink_mbps`` from its profile's ``[simulation]``
section, ``examples`` its local data size, and ``jitter`` lognormal(0, JITTER_SIGMA) drawn per task
(thermal throttling, a busy CPU: devices of one class are not identical). The constants describe
the reference device (relative_speed 1.0, a Raspberry Pi 4 class CPU running a small model).

A SecAgg+ stage after training takes STAGE_SECONDS when every device it waits for answers (plus
the upload time of the slowest at masked_input), else its deadline: the coordinator closes a stage
early only when nobody is left to answer. Simulated time never depends on the host machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedge.simulations.federation import Federation
from fedge.simulations.population import Population

#: Seconds the reference device spends per example per local epoch.
EXAMPLE_SECONDS = 0.05
#: Seconds the reference device spends per task outside the training loop (wake, load, evaluate).
TASK_OVERHEAD_S = 5.0
#: Spread of one task's time around its profile's (lognormal sigma).
JITTER_SIGMA = 0.5
#: Seconds of one SecAgg+ stage whose replies are small (keys, shares, signatures), all answering.
STAGE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceClock:
    """Task and upload times of a population's devices for a model of ``model_bytes``."""

    population: Population
    model_bytes: int
    epochs: int

    def upload_seconds(self, clients: np.ndarray) -> np.ndarray:
        """Seconds to send one model-sized update, per client."""
        up = self.population.column("uplink_mbps")[self.population.profile_of(clients)]
        return self.model_bytes * 8 / (up * 1e6)

    def task_seconds(self, clients: np.ndarray, examples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Seconds from being sent the model to having the update ready to send (upload not included)."""
        clients = np.asarray(clients, dtype=np.int64)
        prof = self.population.profile_of(clients)
        speed = self.population.column("relative_speed")[prof]
        down = self.population.column("downlink_mbps")[prof]
        jitter = rng.lognormal(0.0, JITTER_SIGMA, len(clients))
        compute = speed * (TASK_OVERHEAD_S + self.epochs * np.asarray(examples, dtype=np.float64) * EXAMPLE_SECONDS)
        return compute * jitter + self.model_bytes * 8 / (down * 1e6)


def example_counts(federation: Federation, clients: np.ndarray) -> np.ndarray:
    """Each client's number of local training examples."""
    clients = np.asarray(clients, dtype=np.int64)
    part = federation.partition
    if part is not None:
        return np.asarray(part.sizes(clients), dtype=np.int64)
    return np.array([len(federation.client(int(k))[1]) for k in clients], dtype=np.int64)
