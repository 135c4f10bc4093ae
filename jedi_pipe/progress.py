"""Where a long loop is, said once in a while: the experts, the joint phase, the shard writers."""
from __future__ import annotations

import time


class Progress:
    """Console lines of a loop of `total` steps started at step `start`: `line(done, what)` says how
    far it is, `what`, the time so far and the time left; `due()`: `every` seconds have passed since
    the last line."""

    def __init__(self, total: int, start: int = 0, every: float = 60.0, unit: str = "step"):
        self.total, self.start, self.every, self.unit = total, start, every, unit
        self.t0 = self.said = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.said > self.every

    def line(self, done: int, what: str = "") -> str:
        self.said = time.perf_counter()
        seconds = self.said - self.t0
        left = seconds / max(done - self.start, 1) * (self.total - done)
        return (f"{self.unit} {done}/{self.total}" + (f": {what}" if what else "") + f"; {seconds:.0f} s"
                + (f", about {left:.0f} s to go" if done < self.total else ""))
