"""Helpers to run whole rounds in memory: real engine, real participants, real TFLite trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

from fedge.agent.core import wire
from fedge.agent.core.errors import ProtocolError
from fedge.agent.participant import LocalResult, Participant
from fedge.agent.training.models import load_spec
from fedge.agent.training.trainer import Trainer

log = logging.getLogger(__name__)


def digits_split(
    num_clients: int, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Real digits, shuffled, split IID across clients, with a held-out test set."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype(np.int32)
    test = (x[:300], y[:300])
    parts = np.array_split(np.arange(300, len(x)), num_clients)
    return [(x[p], y[p]) for p in parts], test


def make_train_fn(trainer: Trainer, data: tuple[np.ndarray, np.ndarray], seed: int) -> Callable[[Any], LocalResult]:
    def train(task: Any) -> LocalResult:
        p = task.plan.training
        r = trainer.train(
            task.weights,
            data[0],
            data[1],
            epochs=p.epochs,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            rng=np.random.default_rng([seed, task.round_id]),
        )
        return LocalResult(r.delta, r.num_examples, r.loss)

    return train


def deliver(
    engine: Any,
    participants: dict[str, Participant],
    outbound: Iterable[Any],
    drop: Callable[[str, Any], bool] = lambda d, m: False,
) -> int:
    """Deliver messages both ways through the real wire codec until quiet; return bytes moved."""
    queue = list(outbound)
    moved = 0
    while queue:
        out = queue.pop(0)
        if drop(out.device_id, out.message):
            continue
        blob = wire.encode(out.message)
        moved += len(blob)
        for reply in participants[out.device_id].handle(wire.decode(blob)):
            if drop(out.device_id, reply):
                continue
            rblob = wire.encode(reply)
            moved += len(rblob)
            try:
                queue += engine.receive(out.device_id, wire.decode(rblob))
            except ProtocolError as e:
                log.info("refused %s from %s: %s", type(reply).__name__, out.device_id, e)
    return moved


def trainer_for(name: str = "mlp") -> Trainer:
    return Trainer(load_spec(name), num_threads=1)
