"""The SecAgg+ stages, named once and shared by client and server, with the legal transitions."""

from __future__ import annotations

import enum

from fedge.agent.core.errors import ProtocolError


class Stage(enum.Enum):
    """Protocol stages in order; DONE and FAILED are terminal."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


ORDER = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
    Stage.DONE,
)

_NEXT = {a: b for a, b in zip(ORDER, ORDER[1:])}


def next_stage(stage: Stage) -> Stage:
    """The stage after ``stage`` on the success path."""
    try:
        return _NEXT[stage]
    except KeyError:
        raise ProtocolError(f"no stage follows {stage.value}") from None


def check_transition(prev: Stage, nxt: Stage) -> Stage:
    """Return ``nxt`` if moving from ``prev`` to it is legal, else raise :class:`ProtocolError`.

    Legal: the next stage in order, or FAILED from any non-terminal stage.
    """
    if prev in (Stage.DONE, Stage.FAILED):
        raise ProtocolError(f"round already {prev.value}")
    if nxt is Stage.FAILED or _NEXT.get(prev) is nxt:
        return nxt
    raise ProtocolError(f"illegal stage transition {prev.value} -> {nxt.value}")
