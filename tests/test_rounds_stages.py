"""The coordinator's round stages move forward only, to their end, and never after it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.secagg.stages import Stage
from fedge.coordinator.rounds.stages import ENDED, ORDER, RoundStage, check_round_transition


def test_a_secure_round_walks_forward_and_a_plain_one_skips_the_key_stages():
    path = [
        "checkin",
        "training",
        "advertise_keys",
        "share_keys",
        "masked_input",
        "consistency_check",
        "unmask",
        "done",
        "completed",
    ]
    at = RoundStage.CHECKIN
    for s in path[1:]:
        at = check_round_transition(at, s)
    assert at is RoundStage.COMPLETED
    assert check_round_transition(check_round_transition("training", "report"), "done") is RoundStage.DONE


@pytest.mark.parametrize(
    "a,b",
    [
        ("share_keys", "advertise_keys"),
        ("done", "report"),
        ("completed", "abandoned"),
        ("abandoned", "training"),
        ("failed", "completed"),
        ("failed", "unmask"),
    ],
)
def test_illegal_moves_are_refused(a, b):
    with pytest.raises(ProtocolError):
        check_round_transition(a, b)


@given(st.sampled_from(list(RoundStage)), st.sampled_from(list(RoundStage)))
def test_the_rule_is_forward_or_to_the_end(a, b):
    try:
        got = check_round_transition(a, b)
    except ProtocolError:
        assert a in ENDED or a is RoundStage.FAILED or (b in ORDER and a in ORDER and ORDER.index(b) < ORDER.index(a))
        return
    assert got is b and a not in ENDED or a == b


def test_the_secagg_stage_names_are_round_stages():
    assert {s.value for s in Stage} <= {s.value for s in RoundStage}
