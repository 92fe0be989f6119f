"""Where a report's figures are drawn: beside the analysis, in one worker process, or here.

A figure (matplotlib's layout, ticks and text, then the PNG) is single-threaded Python: 0.2-1 s each, 4.5-7 s
for the 10 figures of `analyze` at any number of masks, while the stages that make the figures' data are mostly
single-threaded too. With a core to spare the figures are drawn by one worker process
(`concurrent.futures.ProcessPoolExecutor`), forked when the analysis starts (before the stages start any thread
pool), while the stages go on. Measured on 2 cores, warm, 3 interleaved rounds: `analyze` of 1,024 digits-MLP
masks 11.5-12.3 s drawn beside against 17.0-17.7 s drawn here (the figures 6.6-6.8 s); 16 masks 5.0 s against
6.3 s. Each figure is drawn from the same function and arguments either way (they are pickled to the worker),
so the files are the same bytes.

Drawn here instead: on one core, where `fork` is not Linux's (macOS's fork is unsafe once system frameworks are
loaded; spawn would run a user's unguarded script again), in a daemonic process (a Dask or multiprocessing
worker may not have children), and every figure whose worker died (drawn again here).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from masklab.plots import save_figure


def draw(plot: Callable, args: tuple, kwargs: dict, base: Path, formats: Sequence[str]) -> float:
    """Draw ``plot(*args, **kwargs)`` and write it as `base`.<format> for each of `formats`; the seconds it took."""
    start = time.perf_counter()
    save_figure(plot(*args, **kwargs), base, formats=formats)
    return time.perf_counter() - start


def _leave_interrupts_to_the_caller() -> None:
    """The worker ignores Ctrl-C (which reaches the whole process group): the analysis stops it, after the
    figure it is drawing, instead of it printing a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def can_draw_beside() -> bool:
    """True where figures can be drawn by a forked worker that has a core of its own (see the module)."""
    if not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return False
    return len(os.sched_getaffinity(0)) >= 2 and "fork" in multiprocessing.get_all_start_methods()


class FigureDrawer:
    """Draws figures here (`beside` False) or in one worker process, forked now (`beside` True); `finish` waits
    for them all and re-raises a figure's error. `seconds` is the time spent drawing (by the worker or here)."""

    def __init__(self, beside: bool = False):
        self.pending: list[tuple[Future, tuple]] = []
        self.seconds = 0.0
        self.executor: ProcessPoolExecutor | None = None
        if beside:
            self.executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_leave_interrupts_to_the_caller)
            self.executor.submit(int)  # forks the worker now, before the stages start threads of their own

    def draw(self, plot: Callable, args: tuple, kwargs: dict, base: Path, formats: Sequence[str]) -> None:
        job = (plot, args, kwargs, base, tuple(formats))
        if self.executor is None:
            self.seconds += draw(*job)
        else:
            self.pending.append((self.executor.submit(draw, *job), job))

    def finish(self) -> None:
        """Wait for every figure (a figure whose worker died is drawn here) and stop the worker."""
        try:
            for future, job in self.pending:
                try:
                    self.seconds += future.result()
                except BrokenProcessPool:
                    self.seconds += draw(*job)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker (figures not started are dropped; one being drawn is finished: files are written
        whole)."""
        self.pending = []
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


__all__ = ["FigureDrawer", "can_draw_beside", "draw"]
