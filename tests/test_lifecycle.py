"""The one lifecycle helper: first signal asks to stop, a second SIGINT forces, handlers restored."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fedge.agent.core.lifecycle import stop_signals


class _Forced(Exception):
    pass


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs on the main thread at the next bytecode boundary


def test_first_signal_requests_stop_second_sigint_forces_and_handlers_are_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    asked: list[int] = []
    with pytest.raises(_Forced):
        with stop_signals(asked.append, lambda: bool(asked), _Forced):
            _deliver(signal.SIGTERM)
            assert asked == [signal.SIGTERM]
            _deliver(signal.SIGTERM)  # SIGTERM again is another polite request, never a force
            assert asked == [signal.SIGTERM, signal.SIGTERM]
            _deliver(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sigint_first_is_a_request_not_a_force() -> None:
    asked: list[int] = []
    with stop_signals(asked.append, lambda: bool(asked), _Forced):
        _deliver(signal.SIGINT)
    assert asked == [signal.SIGINT]
