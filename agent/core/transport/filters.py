"""MQTT topic names and filters: validation and matching (``+`` one level, ``#`` the rest)."""

from __future__ import annotations

from functools import lru_cache

from fedge.agent.core.errors import ProtocolError


def check_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid name to publish on (non-empty, no wildcards, no NUL)."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 65535:
        raise ProtocolError(f"invalid topic name {topic!r}")
    return topic


def check_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if wildcards occupy whole levels and ``#`` comes last."""
    if not topic_filter or "\0" in topic_filter:
        raise ProtocolError(f"invalid topic filter {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and len(level) != 1:
            raise ProtocolError(f"wildcard must be a whole level in {topic_filter!r}")
        if level == "#" and i != len(levels) - 1:
            raise ProtocolError(f"'#' must be the last level in {topic_filter!r}")
    return topic_filter


@lru_cache(maxsize=4096)
def _levels(s: str) -> tuple[str, ...]:
    return tuple(s.split("/"))


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` by MQTT rules.

    Wildcards at the first level never match topics starting with ``$`` (as brokers do for
    ``$SYS``); ``a/#`` also matches ``a`` itself.
    """
    f, t = _levels(topic_filter), _levels(topic)
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)
