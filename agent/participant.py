"""One device's part in one round, as a pure state machine: coordinator messages in, replies out.

The agent daemon (over MQTT) and the simulator (in memory) drive this same object. Training is
injected (``train``), so the daemon can run the TFLite trainer under its profile's limits and the
simulator can share one interpreter across thousands of clients.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedge.agent.core.errors import BudgetExhausted, FedgeError, ProtocolError
from fedge.agent.core.messages.rounds import Decline, DeclineKind, Peers, PlainUpdate, Task
from fedge.agent.core.messages.secagg import SecAggConfig
from fedge.agent.core.update import EncodedUpdate, encode_update

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LocalResult:
    """What local training produced: the weight delta and how many examples it saw."""

    delta: np.ndarray
    num_examples: int
    loss: float = float("nan")


#: Trains on the task's global weights and returns the delta. Raises FedgeError to decline.
TrainFn = Callable[[Task], LocalResult]
#: Builds the SecAgg+ client for a task, with the encoded vector as its input.
SecAggFactory = Callable[[Task, np.ndarray], Any]


class Participant:
    """Answers one round's task, then (with secure aggregation) every SecAgg+ stage request."""

    def __init__(
        self,
        device_id: str,
        train: TrainFn,
        rng: np.random.Generator,
        secagg_factory: SecAggFactory | None = None,
        peers: Any = None,
        staleness_weight: float = 1.0,
        noise_share: bool = True,
    ) -> None:
        """``staleness_weight``: buffered aggregation's s(tau) for this device's update in this round
        (sent with the group's configuration; 1 in synchronous rounds). ``noise_share`` False: an
        audit canary's participant, which adds no distributed-DP noise share (``encode_update``)."""
        self.device_id = device_id
        self.staleness_weight = staleness_weight
        self.noise_share = noise_share
        self._train = train
        self._rng = rng
        self._secagg_factory = secagg_factory
        self._peers = peers
        self.round_id: int | None = None
        self.task: Task | None = None
        self.encoded: EncodedUpdate | None = None
        self.local: LocalResult | None = None
        self.client: Any = None
        self._input_size = 0

    def handle(self, msg: Any) -> list[Any]:
        """Replies to one coordinator message (ProtocolError when it is illegal here)."""
        if isinstance(msg, Task):
            return self._on_task(msg)
        if isinstance(msg, Peers):
            if self._peers is None or msg.round_id != self.round_id:
                raise ProtocolError("unexpected peer list")
            self._peers.add(msg)
            return []
        if self.client is None or msg.round_id != self.round_id:
            raise ProtocolError(f"unexpected {type(msg).__name__} for round {getattr(msg, 'round_id', '?')}")
        if isinstance(msg, SecAggConfig):
            self._check_config(msg)
        reply = self.client.handle(msg)
        if reply is None:
            return []
        return list(reply) if isinstance(reply, (list, tuple)) else [reply]

    def _check_config(self, cfg: SecAggConfig) -> None:
        """The SecAgg+ parameters must be the ones the task's plan promised: the same ring and
        length, and (distributed DP) a release floor no lower than the planned number of noise
        shares, or the sum could carry less noise than this device accounts for."""
        plan, p = self.task.plan, cfg.params
        if p.bits != plan.quantization.bits or p.dim != self._input_size:
            self.client = None
            raise ProtocolError("secure aggregation parameters do not match the round plan")
        if plan.privacy.mode == "distributed" and p.min_clients < plan.privacy.min_clients:
            self.client = None
            raise ProtocolError(
                f"secure aggregation would release a sum of {p.min_clients} inputs; the noise was planned for {plan.privacy.min_clients}"
            )

    def _on_task(self, task: Task) -> list[Any]:
        if task.device_id != self.device_id:
            raise ProtocolError("task is addressed to another device")
        if self.task is not None:
            if task.round_id == self.round_id:
                raise ProtocolError("duplicate task")
        if task.plan.secagg and self._secagg_factory is None:
            return [
                Decline(task.round_id, self.device_id, "secure aggregation unavailable", DeclineKind.SECAGG_UNAVAILABLE)
            ]
        self.task, self.round_id = task, task.round_id
        extra = {"device": self.device_id, "round": task.round_id}
        try:
            self.local = self._train(task)
            self.encoded = encode_update(
                self.local.delta,
                self.local.num_examples,
                task.plan,
                self._rng,
                self.staleness_weight,
                noise_share=self.noise_share,
            )
        except BudgetExhausted as e:
            log.info("declining: %s", e, extra=extra)
            return [Decline(task.round_id, self.device_id, f"budget: {e}", DeclineKind.BUDGET)]
        except FedgeError as e:
            log.warning("declining: %s", e, extra=extra)
            return [Decline(task.round_id, self.device_id, str(e))]
        if not task.plan.secagg:
            return [PlainUpdate(task.round_id, self.device_id, self.encoded.vector)]
        assert self._secagg_factory is not None
        # the SecAgg+ stage requests that follow (config first) go to this client
        self._input_size = int(self.encoded.vector.size)
        self.client = self._secagg_factory(task, self.encoded.vector)
        return []
