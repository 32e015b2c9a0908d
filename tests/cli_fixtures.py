"""Fixtures for tests that run a CLI in-process: keep its once-per-process logging setup contained.

It applies to every test: a CLI run in one test used to leave the root logger at INFO with a handler
bound to a closed stderr, so later tests saw records (and "Logging error" noise) they never asked for,
and what a test captured depended on the order the suite ran in."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from fedge.agent.core import logs


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Undo what ``logs.configure`` did, so the handler it installs (bound to a captured stderr)
    does not outlive the test and later tests can configure logging again."""
    root = logging.getLogger()
    handlers, level, configured = root.handlers[:], root.level, logs._configured
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._configured = configured
