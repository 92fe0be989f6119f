"""How a CPU stack's steps run, chosen by measuring them: the thread count and the stack size of each block
of training steps.

A mask's bits depend on neither (see `masklab.nn.exact`: MKL runs on one thread, every reduction in a fixed
order, every product one per mask), so both are chosen for speed alone, while training, from the measured
time per mask-step. Profiled on 2 cores with other processes busy (lenet-300-100, K = 8, `perf`): with two
threads most of the step is spent in libgomp waiting for the OpenMP worker that the scheduler has taken
off its core, at every barrier of every operation; one thread has no barrier to wait at. On an idle
machine two threads are faster. The load changes while a run trains, so the choice is measured again
and again, not fixed at the start.

Side by side: with `side`, one more candidate per thread count t > 1 splits the stack into t sub-stacks of
about K / t masks that train at the same time, one per thread, each on one thread. The stack then runs
on t cores throughout (forward, backward, optimiser and the Python between them), not only in its matrix
products (`per_mask_bmm`): measured on 2 cores, lenet-300-100, K = 8, 58 steps, best of 8 interleaved
rounds, 0.95 s side by side (2 x 4) against 1.18 s as one stack on 2 threads. Each mask's numbers are
those of one thread either way (masklab.nn.exact).

`StepPlan(K, threads, stacks, side)` hands out one `Choice` (sub-stack size k, threads) per block of steps
and takes back the block's seconds per mask-step: the first block is a warm-up (numba loads, page faults)
and not counted; then each candidate runs one block; from then on the fastest by its latest measurement,
with one other candidate measured every `PROBE_EVERY` blocks (round robin), so that a machine that becomes
busy (or idle) mid-run changes the choice within a few seconds. Blocks are sized to last about
`BLOCK_SECONDS`.

Examples
--------
>>> plan = StepPlan(8, threads=(1, 2), stacks=(8, 1))
>>> [plan.next() for _ in range(1)]  # warm-up
[Choice(stack=8, threads=1)]
>>> plan.record(plan.last, 0.01)
>>> for seconds in (0.004, 0.002, 0.006, 0.005):
...     choice = plan.next(); plan.record(choice, seconds)
>>> plan.next()
Choice(stack=8, threads=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product


@dataclass(frozen=True)
class Choice:
    """How one block of steps runs: the masks in sub-stacks of `stack`, torch on `threads` threads; with
    `side`, the sub-stacks train side by side, one per thread, each on one thread (`map_one_thread`)."""

    stack: int
    threads: int
    side: bool = False

    def __repr__(self) -> str:
        return f"Choice(stack={self.stack}, threads={self.threads}{', side=True' if self.side else ''})"


class StepPlan:
    """Measured choice of (sub-stack size, thread count) per block of training steps (module docstring)."""

    PROBE_EVERY = 12
    BLOCK_SECONDS = 0.5
    MAX_BLOCK_STEPS = 64

    def __init__(self, K: int, threads: tuple[int, ...] = (1,), stacks: tuple[int, ...] | None = None,
                 side: bool = False):
        self.K = max(1, int(K))
        sizes = sorted({min(self.K, max(1, int(s))) for s in (stacks or (self.K,))}, reverse=True)
        counts = sorted({max(1, int(t)) for t in threads})
        self.candidates = [Choice(k, t) for k, t in product(sizes, counts)]
        if side and self.K > 1:  # the stack as one sub-stack per thread, side by side (at most K threads busy)
            self.candidates += [Choice(-(-self.K // t), t, True) for t in counts if t > 1]
        self.seconds: dict[Choice, float] = {}  # latest seconds per mask-step
        self.blocks = 0
        self.last = self.candidates[0]
        self.used: set[Choice] = set()
        self._probe = 0
        self._step_seconds = 0.0  # latest seconds per step of the whole stack

    def next(self) -> Choice:
        """The choice for the next block."""
        self.blocks += 1
        if len(self.candidates) == 1 or self.blocks == 1:
            choice = self.candidates[0]
        elif len(self.seconds) < len(self.candidates):  # measure each candidate once
            choice = next(c for c in self.candidates if c not in self.seconds)
        elif self.blocks % self.PROBE_EVERY == 0:
            others = [c for c in self.candidates if c != self.best()]
            choice = others[self._probe % len(others)]
            self._probe += 1
        else:
            choice = self.best()
        self.last = choice
        self.used.add(choice)
        return choice

    def best(self) -> Choice:
        """The fastest candidate by its latest measurement (the first candidate before any)."""
        if not self.seconds:
            return self.candidates[0]
        return min(self.seconds, key=lambda c: (self.seconds[c], self.candidates.index(c)))

    def record(self, choice: Choice, seconds_per_mask_step: float) -> None:
        """The measured seconds per mask-step of a block run with `choice` (the warm-up block is not counted)."""
        self._step_seconds = seconds_per_mask_step * self.K
        if self.blocks > 1 or len(self.candidates) == 1:
            self.seconds[choice] = float(seconds_per_mask_step)

    def block_steps(self, left: int) -> int:
        """Steps in the next block: about BLOCK_SECONDS of the stack's latest step time, at most `left`."""
        if self._step_seconds <= 0:
            steps = 2
        else:
            steps = int(self.BLOCK_SECONDS / self._step_seconds)
        return max(1, min(left, self.MAX_BLOCK_STEPS, steps))


__all__ = ["Choice", "StepPlan"]
