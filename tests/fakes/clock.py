"""A clock for tests of pacing and learning: time moves only when somebody sleeps."""

from __future__ import annotations


class FakeClock:
    """Time that only moves when somebody sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
