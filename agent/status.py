"""What ``fedge-agent status`` reports from a device's store: rounds, unsent messages, privacy spent."""

from __future__ import annotations

import math
from typing import Any

from fedge.agent import identity
from fedge.agent.core.privacy.ledger import LEDGER_RELATION, DeviceLedger
from fedge.agent.model_cache import ModelCache
from fedge.agent.outbox import Outbox
from fedge.agent.round_state import RoundStates
from fedge.agent.store import Store


def agent_status(store: Store, *, delta: float, rounds: int = 5) -> dict[str, Any]:
    """The device id, latest round states, outbox length, cached model and epsilon spent at ``delta``."""
    db = store.db
    eps = DeviceLedger(db).epsilon_spent(delta)
    return {
        "device_id": identity.stored_device_id(db),
        "rounds": [
            {"round_id": r.round_id, "stage": r.stage, "status": r.status.value} for r in RoundStates(db).latest(rounds)
        ],
        "outbox": len(Outbox(db)),
        "model_version": ModelCache(db).latest_version() or None,
        "epsilon_spent": eps if math.isfinite(eps) else "inf",
        "delta": delta,
        "relation": LEDGER_RELATION,
    }
