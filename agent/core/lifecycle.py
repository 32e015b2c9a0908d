"""Signals for every long-running fedge process: the first asks to stop, a second SIGINT forces.

The agent daemon and the coordinator service both serve inside :func:`stop_signals`; handlers
are installed only on the main thread and the previous ones are restored on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import types
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: Signals that ask a process to stop gracefully.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals(
    request_stop: Callable[[int], None],
    is_stopping: Callable[[], bool],
    force: Callable[[], BaseException] = KeyboardInterrupt,
) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call ``request_stop(signum)``; SIGINT while already stopping
    raises ``force()`` (a second Ctrl-C). Off the main thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: types.FrameType | None) -> None:
        if signum == signal.SIGINT and is_stopping():
            raise force()
        log.info("stopping (signal %d); a second Ctrl-C forces exit", signum)
        request_stop(signum)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
