"""Topic filters: MQTT matching rules, validation, and agreement with the broker's own topics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedge.agent.core import topics
from fedge.agent.core.errors import ProtocolError
from fedge.agent.core.transport.filters import check_filter, check_topic, matches

CASES = [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+/c", "a/b/c", True),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("#", "a/b", True),
    ("+", "a", True),
    ("+/+", "/a", True),
    ("+", "$SYS", False),
    ("#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("a/b", "a/b/", False),
    ("a/+", "a/", True),
    (topics.ALL_DEVICES_OUT, topics.device_out("dev-1"), True),
    (topics.ALL_DEVICES_OUT, topics.device_in("dev-1"), False),
    (topics.ALL_DEVICES_STATUS, topics.device_status("x"), True),
    (f"{topics.RELEASES}/#", topics.release("cohort-1"), True),
]


@pytest.mark.parametrize(("f", "t", "expected"), CASES)
def test_matches(f: str, t: str, expected: bool) -> None:
    assert matches(f, t) is expected


@pytest.mark.parametrize("bad", ["", "a/b#", "a/#/b", "a+/b", "a/\0"])
def test_bad_filters_rejected(bad: str) -> None:
    with pytest.raises(ProtocolError):
        check_filter(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "x\0"])
def test_bad_topic_names_rejected(bad: str) -> None:
    with pytest.raises(ProtocolError):
        check_topic(bad)


level = st.text(alphabet="abc", min_size=0, max_size=2)


@given(st.lists(level, min_size=1, max_size=5))
def test_topic_matches_itself_and_hash(levels: list[str]) -> None:
    t = "/".join(levels)
    assert matches(t, t)
    assert matches("#", t)
    assert matches("/".join(["+"] * len(levels)), t)
    assert not matches("/".join(["+"] * (len(levels) + 1)), t)
