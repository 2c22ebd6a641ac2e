"""How the benchmark spends its time: rates over timing windows of fixed wall time, and a budget.

A window runs steps until its seconds have passed (at least one step), so a slow machine takes
fewer steps instead of more time, and vaelab and the plain-PyTorch reference are timed alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    steps: int
    amount: float  # the sum of what the steps returned (images)
    seconds: float

    @property
    def rate(self) -> float:
        return self.amount / self.seconds


def timed_windows(
    step: Callable[[], float],
    window: float,
    windows: int,
    warmup: float = 0.0,
    warmup_steps: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, list[Window]]:
    """(seconds of the warm-up, the timing windows) of ``step()``, which returns the images it did.

    The warm-up runs ``warmup_steps`` steps and more until ``warmup`` seconds have passed; then
    each of ``windows`` windows runs steps until ``window`` seconds have passed, at least one."""
    start = now = clock()
    done = 0
    while done < warmup_steps or now - start < warmup:
        step()
        done, now = done + 1, clock()
    warmup_seconds, timed = now - start, []
    for _ in range(windows):
        steps, amount, start = 0, 0.0, clock()
        while True:
            amount += step()
            steps, now = steps + 1, clock()
            if now - start >= window:
                break
        timed.append(Window(steps, amount, now - start))
    return warmup_seconds, timed


def best_rate(windows: list[Window]) -> float:
    """The best window's rate, as ``timeit`` takes the best: interference only ever slows a window down."""
    return max(w.rate for w in windows)


class Budget:
    """Wall-clock seconds for a whole benchmark; what cannot fit in what is left is skipped."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = seconds, clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def fits(self, seconds: float, reserved: float = 0.0) -> bool:
        """Whether ``seconds`` of work still fits, keeping ``reserved`` seconds for what must follow."""
        return seconds <= self.left() - reserved
