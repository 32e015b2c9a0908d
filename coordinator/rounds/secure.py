"""SecAgg+ as the round engine's aggregation: the coordinator learns only the sum.

Wraps :class:`fedge.agent.core.secagg.server.SecAggServer` in the :class:`~fedge.coordinator.rounds.engine.Aggregation`
interface. Parameters (k, t) are derived from the cohort size, the expected dropout rate and the
assumed corrupt fraction; the server refuses to release a sum of fewer than
``max(min_clients, plan.privacy.min_clients)`` inputs, so distributed DP noise is never thinner than
planned.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.messages.common import Outbound
from fedge.agent.core.messages.rounds import Peers, RoundPlan
from fedge.agent.core.secagg.graph import neighbour_table
from fedge.agent.core.secagg.params import (
    SUITE,
    InvalidParams,
    SecAggParams,
    derive_params,
    dropout_cap,
    params_bounds,
)
from fedge.agent.core.secagg.quantize import max_abs_int
from fedge.agent.core.secagg.server import SecAggServer
from fedge.agent.core.secagg.stages import Stage
from fedge.coordinator.rounds.engine import Aggregation

log = logging.getLogger(__name__)
#: cohort sizes whose complete-graph fallback was already logged
_TOLD: set[tuple[int, int]] = set()

#: Issues the enrollment certificate of a device's identity key (None: no certified peer lists).
CertificateLookup = Callable[[str], bytes]


def choose_params(
    n: int, dropout_rate: float, corrupt_fraction: float, dim: int, bits: int, minimum: int
) -> SecAggParams:
    """SecAgg+ parameters meeting 2^-40 privacy and 2^-20 failure bounds; for cohorts too small
    for any sparse graph to meet them, the complete graph with an honest-majority threshold
    (classic SecAgg), with its weaker bounds logged.

    ``dropout_rate`` is what devices are expected to drop at, independently; the graph is sized
    for a cap that more dropouts than the cap exceed with probability 2^-21 (``dropout_cap``), the
    round refuses to finish beyond the cap (``min_clients``), and the rest of the 2^-20 goes to the
    graph's own failure bound."""
    cap = dropout_cap(n, dropout_rate)
    floor = max(minimum, n - math.ceil(cap * n - 1e-9))
    try:
        return derive_params(n, cap, corrupt_fraction, dim, bits=bits, correctness_bits=21, min_clients=floor)
    except InvalidParams:
        k = n - 1
        # the largest threshold that more dropouts than expected break with probability <= 2^-10
        # (privacy grows with t)
        loose = dropout_cap(n, dropout_rate, bits=10)
        t = max(k // 2 + 1, k - math.ceil(loose * n - 1e-9))
        p = SecAggParams(n, k, t, dim, bits, max(minimum, 1))
        b = params_bounds(p, loose, corrupt_fraction)
        if (n, p.threshold) not in _TOLD:  # an expected choice for small cohorts: once per size, at INFO
            _TOLD.add((n, p.threshold))
            log.info(
                "cohort of %d is below the size SecAgg+'s 2^-40 bounds need: complete graph, threshold %d "
                "(bounds at this size: failure <= %.2g, privacy <= %.2g)",
                n,
                p.threshold,
                b.failure,
                b.privacy,
            )
        return p


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Everything one SecAgg+ instance is built from, in plain values: what a worker process or a
    Ray actor receives to run a group (:mod:`.remote`), and what the driver builds locally from."""

    round_id: int
    params: SecAggParams
    #: device id -> enrolled identity key, the instance's roster
    roster: Mapping[str, bytes]
    #: the largest |quantized value| a device may contribute (the wrap check)
    max_abs_int: int
    suite: str = SUITE
    #: device id -> enrollment certificate, when devices get certified peer lists (``Peers``)
    certificates: Mapping[str, bytes] | None = None

    def to_plain(self) -> dict[str, Any]:
        """msgpack-ready values (no pickle crosses a process)."""
        return {
            "round_id": self.round_id,
            "params": dataclasses.asdict(self.params),
            "roster": [[d, k] for d, k in self.roster.items()],
            "max_abs_int": self.max_abs_int,
            "suite": self.suite,
            "certificates": None if self.certificates is None else [[d, c] for d, c in self.certificates.items()],
        }

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> GroupSpec:
        """The inverse of :meth:`to_plain`; ProtocolError on anything malformed."""
        try:
            certs = d["certificates"]
            return cls(
                int(d["round_id"]),
                SecAggParams(**d["params"]),
                {str(k): bytes(v) for k, v in d["roster"]},
                int(d["max_abs_int"]),
                str(d["suite"]),
                None if certs is None else {str(k): bytes(v) for k, v in certs},
            )
        except (KeyError, TypeError, ValueError, InvalidParams) as e:
            raise ProtocolError(f"malformed group spec: {e}") from None


def secure_spec(
    plan: RoundPlan,
    round_id: int,
    roster: Mapping[str, bytes],
    length: int,
    *,
    min_clients: int,
    dropout_rate: float = 0.1,
    corrupt_fraction: float = 0.05,
    certificates: CertificateLookup | None = None,
    params: SecAggParams | None = None,
    suite: str = SUITE,
) -> GroupSpec:
    """The spec of one SecAgg+ instance over ``roster`` for ``plan``: parameters sized for the
    roster, a floor of ``max(min_clients, plan.privacy.min_clients)`` in distributed DP."""
    n = len(roster)
    minimum = min(n, max(min_clients, plan.privacy.min_clients if plan.privacy.mode == "distributed" else 1, 2))
    return GroupSpec(
        round_id,
        params or choose_params(n, dropout_rate, corrupt_fraction, length, plan.quantization.bits, minimum),
        dict(roster),
        max_abs_int(plan.quantization.range, plan.quantization.scale),
        suite,
        None if certificates is None else {d: certificates(d) for d in roster},
    )


class SecureAggregation(Aggregation):
    """The SecAgg+ stages behind the engine's aggregation interface."""

    first_stage = Stage.ADVERTISE_KEYS.value

    def __init__(
        self,
        plan: RoundPlan,
        round_id: int,
        roster: Mapping[str, bytes],
        length: int,
        clock: Callable[[], float],
        **options: Any,
    ) -> None:
        """The instance over ``roster`` for ``plan``; ``options`` are :func:`secure_spec`'s."""
        self._setup(secure_spec(plan, round_id, roster, length, **options), clock)

    @classmethod
    def from_spec(cls, spec: GroupSpec, clock: Callable[[], float]) -> SecureAggregation:
        """The instance ``spec`` describes (a group's, in the driver or in a worker)."""
        self = cls.__new__(cls)
        self._setup(spec, clock)
        return self

    def _setup(self, spec: GroupSpec, clock: Callable[[], float]) -> None:
        self.params = spec.params
        self.server = SecAggServer(
            self.params, spec.round_id, spec.roster, max_abs_int=spec.max_abs_int, clock=clock, suite=spec.suite
        )
        self.round_id = spec.round_id
        self._roster = dict(spec.roster)
        self._certificates = spec.certificates
        self._dropped: dict[str, int] = {}

    @property
    def roster_ids(self) -> tuple[str, ...]:
        """The instance's devices."""
        return tuple(self._roster)

    def offer(self, msg: Any) -> bool:
        """Store one device reply (ProtocolError/SecurityError when it is refused); True once every
        reply the stage waits for is in. Closing is the caller's (groups close in lockstep)."""
        self.server.receive(msg)
        return self.server.ready()

    def ready(self) -> bool:
        """Every reply the current stage waits for is in."""
        return self.server.ready()

    def dispose(self) -> None:
        """Nothing to release: the instance lives in this process (a :class:`~.remote.RemoteGroup`
        tells its worker)."""

    # ------------------------------------------------------------------ interface

    @property
    def stage(self) -> str:
        return self.server.stage.value if self.server.stage else "none"

    @property
    def finished(self) -> bool:
        return self.server.stage is Stage.DONE

    def start(self, cohort: Sequence[str], now: float) -> list[Outbound]:
        config = self.server.start()
        out: list[Outbound] = []
        if self._certificates is not None:
            ids = config.roster_ids
            table = neighbour_table(config.graph_seed, self.params.num_clients, self.params.neighbours)
            for i, d in enumerate(ids):
                nbrs = [ids[j] for j in table[i].tolist()]
                out.append(
                    Outbound(
                        d,
                        Peers(
                            self.round_id,
                            tuple(nbrs),
                            tuple(self._roster[x] for x in nbrs),
                            tuple(self._certificates[x] for x in nbrs),
                        ),
                    )
                )
        out += [Outbound(d, config) for d in config.roster_ids]
        return out

    def receive(self, device_id: str, msg: Any, now: float) -> list[Outbound]:
        self.server.receive(msg)
        if self.server.ready():
            return self.close_stage(now)
        return []

    def answered_first_stage(self) -> int:
        if self.server.stage is not Stage.ADVERTISE_KEYS:
            return self.params.num_clients
        return self.server.replied()  # per message: no O(n) set

    def answered(self) -> set[str]:
        if self.server.stage is not Stage.ADVERTISE_KEYS:
            return set(self._roster)
        return set(self._roster) - self.server.expected()

    def close_stage(self, now: float) -> list[Outbound]:
        stage = self.stage
        missing = self.server.outstanding()
        if missing:
            self._dropped[stage] = self._dropped.get(stage, 0) + missing
        requests = self.server.close_stage()  # RoundFailed names the stage and the counts
        return [Outbound(d, m) for d, m in requests.items()]

    def result(self) -> tuple[np.ndarray, list[str]]:
        r = self.server.result()
        return r.total, list(r.survivors)

    def dropped(self) -> dict[str, int]:
        return dict(self._dropped)

    def exclude(self, device_id: str, now: float) -> bool:
        return self.server.exclude(device_id)

    def ready_to_close(self, now: float) -> list[Outbound]:
        if not self.finished and self.server.stage is not None and self.server.ready():
            return self.close_stage(now)
        return []

    def flagged(self) -> dict[str, str]:
        return {d: "forged Shamir share at unmask (corrected or left out)" for d in self.server.bad_share_senders}
