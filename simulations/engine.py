"""The contract between the simulation driver and whatever runs a round's clients and aggregation.

The driver samples the cohort and draws its behaviour; a :data:`RoundEngine` does the rest of the
round (local training, privacy, masking, aggregation, accounting) and returns a :class:`RoundWork`.
The protocol engine of :mod:`fedge.simulations.protocol` is the default; tests and studies may pass another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.simulations.federation import Federation
from fedge.simulations.population import RoundBehaviour


@dataclass(frozen=True, eq=False)
class RoundWork:
    """What one round produced: new flat global weights, wall-clock seconds per stage, examples trained on.

    ``epsilon`` is the cumulative ε after this round at the run's δ, or None if nothing was accounted.
    ``participants`` (clients in the aggregate) and ``bytes_up``/``bytes_down`` (measured traffic)
    left None are estimated by the driver from the behaviour and the model size; so is
    ``dropped_per_stage`` (what the coordinator observed: ``unavailable`` and each stage it closed).
    ``status`` is ``completed`` or ``abandoned`` (then ``reason`` says why and the weights are unchanged).
    Canary clients of an audit are never counted in ``participants``, ``examples`` or bytes.
    """

    weights: np.ndarray
    seconds_per_stage: dict[str, float]
    examples: int
    epsilon: float | None = None
    participants: int | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    dropped_per_stage: dict[str, int] | None = None
    status: str = "completed"
    reason: str = ""
    #: the canary audit after this round (:class:`fedge.coordinator.rounds.audit.AuditResult`), None without one
    audit: Any = None
    #: how long the round lasted on the simulated clock (None: the driver estimates it from the behaviour)
    sim_seconds: float | None = None


#: (round, flat global weights, cohort behaviour, federation, rng) -> RoundWork.
RoundEngine = Callable[[int, np.ndarray, RoundBehaviour, Federation, np.random.Generator], RoundWork]
