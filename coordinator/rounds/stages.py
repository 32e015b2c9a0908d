"""The coordinator's round stages, named once, and the one rule they move by: forward only.

A round opens at check-in, trains, passes through its aggregation's stages (``report`` for plain
uploads, the SecAgg+ stages otherwise; the same names as :mod:`fedge.agent.core.secagg.stages`)
and ends ``completed`` or ``abandoned``. A stage may be skipped (a plain round has no key
stages), never revisited, and a round that ended never moves again.
"""

from __future__ import annotations

from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.names import ValueEnum


class RoundStage(ValueEnum):
    """Where a round is, as the rounds table and the dashboard show it."""

    CHECKIN = "checkin"
    TRAINING = "training"
    REPORT = "report"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


#: The forward order of the working stages.
ORDER: tuple[RoundStage, ...] = (
    RoundStage.CHECKIN,
    RoundStage.TRAINING,
    RoundStage.REPORT,
    RoundStage.ADVERTISE_KEYS,
    RoundStage.SHARE_KEYS,
    RoundStage.MASKED_INPUT,
    RoundStage.CONSISTENCY_CHECK,
    RoundStage.UNMASK,
    RoundStage.DONE,
)
#: Where a round can end up from any working stage; nothing leaves them but the end of the round.
FAILED_OR_ENDED = frozenset({RoundStage.FAILED, RoundStage.COMPLETED, RoundStage.ABANDONED})
ENDED = frozenset({RoundStage.COMPLETED, RoundStage.ABANDONED})


def check_round_transition(current: RoundStage | str, new: RoundStage | str) -> RoundStage:
    """``new`` if a round at ``current`` may move there (forward, or to its end), else ProtocolError."""
    a, b = RoundStage(current), RoundStage(new)
    if a == b:
        return b
    if a in ENDED:
        raise ProtocolError(f"round stage {a.value} is final, cannot move to {b.value}")
    if b in FAILED_OR_ENDED:
        if a is RoundStage.FAILED and b is not RoundStage.ABANDONED:
            raise ProtocolError(f"a failed round can only be abandoned, not {b.value}")
        return b
    if a is RoundStage.FAILED or ORDER.index(b) < ORDER.index(a):
        raise ProtocolError(f"round stage cannot move back from {a.value} to {b.value}")
    return b
