"""The one fake clock of the test suite: a settable ``Callable[[], float]`` for injected clocks."""

from __future__ import annotations


class FakeClock:
    """Returns ``t``; tests set it or :meth:`advance` it. Starts where the caller says (0 by default)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
