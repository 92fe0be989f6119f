"""Progress of `masklab generate` that tells the truth: mask-epochs done, masks finished, a sane ETA.

`TrainProgress(total_masks, epochs, quiet)` is driven by the trainer's two callbacks:

- ``on_epoch(row)``: one row per mask per epoch (``row["index"]``, ``row["epoch"]``, ``row["test_acc"]``;
  what `train_mask` and `train_masks` pass to `on_epoch`). A stack of K masks delivers its K rows of an
  epoch together, so the bar advances K mask-epochs at a time; the total is ``total_masks * epochs``.
- ``on_steps(mask_steps)`` (with ``steps_per_epoch`` given, as `generate` does): a block of training steps
  is done; the bar then moves within epochs (mask-epochs to one decimal), and ``on_epoch`` only updates
  the accuracies. The clock starts at the first block (after data loading and numba's first compile) and
  the ETA is known from the second block on, about a second into training.
- ``mask_done(result)``: a mask is finished (stored); `result` is the `TrainedMask` (its
  ``metrics["test_acc"]`` feeds the running mean), a metrics dict, an accuracy, or None.

The label says masks finished / total (``masks 3/16``), the postfix which masks are training now and their
accuracy, and the mean final accuracy of the finished ones.

ETA: the clock starts when the first epoch of the first batch of masks has been reported (all K rows of a
stack), not when the bar was made: data loading, model building and numba's first compile come before any
epoch and say nothing about the speed of training (counting them made the first ETA of a 28 s job read an
hour). Until a second epoch has been reported the ETA shows "?"; from then on it is the remaining
mask-epochs over the average rate since the clock started (gaps between stacks, such as writing masks,
included), smoothed by nothing else.

As `masklab.generation._train_all` (which owns the loop) uses it::

    progress = TrainProgress(len(todo), config.epochs, quiet)
    try:
        for chunk in stacks:
            results = train_masks(config, chunk, ..., on_epoch=progress.on_epoch)   # or train_mask(...)
            for trained in results:
                writer.write_mask(trained, ...)
                progress.mask_done(trained)
    finally:
        progress.close()
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping

from tqdm import tqdm

from masklab.units import percent, ranges

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} mask-epochs [{elapsed}<{eta}{postfix}]"


class _Bar(tqdm):
    """tqdm whose ETA comes from the owner (`TrainProgress.eta_text`), not from tqdm's own rate."""

    eta_source: Callable[[], str] | None = None

    @property
    def format_dict(self):
        d = super().format_dict
        d["eta"] = self.eta_source() if self.eta_source is not None else "?"
        if isinstance(d["n"], float):  # within epochs: mask-epochs to one decimal, the total as it is
            d["n_fmt"] = f"{d['n']:.1f}"
            d["total_fmt"] = f"{d['total']:g}"
        return d


class TrainProgress:
    """Progress of training `total_masks` masks of `epochs` epochs each, counted in mask-epochs.

    Parameters
    ----------
    total_masks, epochs : int
        Masks to train in this call (e.g. those a resumed run still misses) and epochs per mask.
    quiet : bool
        No bar at all (the counts and the ETA are still kept, for tests and callers).
    file : stream, optional
        Where the bar goes (default stderr).
    clock : callable, optional
        Seconds, monotonic (default `time.perf_counter`); tests pass a fake one.
    mininterval : float
        Least seconds between two redraws of the bar.
    """

    def __init__(self, total_masks: int, epochs: int, quiet: bool = False, *, file=None,
                 clock: Callable[[], float] | None = None, mininterval: float = 0.2, desc: str = "masks",
                 steps_per_epoch: int | None = None, done: float = 0.0):
        if total_masks < 0 or epochs < 1:
            raise ValueError(f"total_masks {total_masks} and epochs {epochs}: need total_masks >= 0, epochs >= 1")
        self.total_masks = int(total_masks)
        self.epochs = int(epochs)
        self.total = self.total_masks * self.epochs
        self.steps_per_epoch = steps_per_epoch  # given: the bar moves with each block of steps (`on_steps`)
        self.position = float(done)   # mask-epochs done, fractions of epochs included (`done`: resumed ones)
        self.done_epochs = 0          # mask-epochs reported
        self.done_masks = 0           # masks finished
        self.accuracies: list[float] = []
        self.training: dict[int, float] = {}   # mask index -> its latest test accuracy, while it trains
        self.desc = desc
        self._clock = clock or time.perf_counter
        self._start_time: float | None = None  # when the first epoch was reported
        self._start_count = 0.0                # mask-epochs done by then
        self._first_batch: set[int] = set()      # masks reporting their first epoch before the clock starts
        self._last_time: float | None = None
        self.bar = _Bar(total=self.total, disable=quiet, file=file if file is not None else sys.stderr,
                        dynamic_ncols=True, leave=True, mininterval=mininterval, bar_format=BAR_FORMAT,
                        desc=self.label())
        self.bar.eta_source = self.eta_text
        if done:
            self.bar.update(float(done) if steps_per_epoch else int(done))

    # ---- callbacks --------------------------------------------------------------------------------------
    def on_steps(self, mask_steps: int) -> None:
        """`mask_steps` training steps were done (a block of steps of a stack of K masks: K per step). The
        clock starts at the first report: what came before (data, model, numba's first compile) says
        nothing about the speed of training."""
        if not self.steps_per_epoch:
            return
        now = self._clock()
        advance = mask_steps / self.steps_per_epoch
        self.position += advance
        if self._start_time is None:  # the first block counts as done before the clock started
            self._start_time, self._start_count = now, self.position
        self._last_time = now
        self._refresh(advance)

    def on_epoch(self, row: Mapping) -> None:
        """One mask finished one epoch (a stack reports one row per mask)."""
        if self.steps_per_epoch:  # the bar moved with the steps already: accuracy only
            self.done_epochs += 1
            if row.get("test_acc") is not None:
                self.training[int(row.get("index", -1))] = float(row["test_acc"])
            self._refresh(0)
            return
        now = self._clock()
        index = int(row.get("index", -1))
        if self._start_time is None:
            if self._last_time is not None and (index in self._first_batch or self.done_masks or index < 0):
                # the first epoch's rows are all in (a mask reports again, or the next stack begins): the clock
                # starts at the last of them, which count as done before it started
                self._start_time = self._last_time
                self._start_count = self.position
            else:
                self._first_batch.add(index)
        self._last_time = now
        self.done_epochs += 1
        self.position += 1
        if "test_acc" in row and row["test_acc"] is not None:
            self.training[index] = float(row["test_acc"])
        self._refresh(1)

    def mask_done(self, result=None) -> None:
        """One mask is finished and stored."""
        acc = _accuracy(result)
        if acc is not None:
            self.accuracies.append(acc)
        index = getattr(result, "index", None)
        if index is not None:
            self.training.pop(int(index), None)
        elif self.training:  # unknown index: drop the oldest still training
            self.training.pop(next(iter(self.training)))
        self.done_masks += 1
        self._refresh(0)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> TrainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- what is shown ----------------------------------------------------------------------------------
    def label(self) -> str:
        """``masks <finished>/<total>``."""
        return f"{self.desc} {self.done_masks}/{self.total_masks}"

    def rate(self) -> float | None:
        """Mask-epochs per second since the clock started; None until a second epoch was reported."""
        if self._start_time is None or self._last_time is None:
            return None
        counted = self.position - self._start_count
        elapsed = self._last_time - self._start_time
        if counted <= 0 or elapsed <= 0:
            return None
        return counted / elapsed

    def eta_seconds(self) -> float | None:
        """Seconds left, from the rate and the time since the last report; None while unknown."""
        rate = self.rate()
        if rate is None or self._last_time is None:  # (a rate implies a last report)
            return None
        remaining = (self.total - self.position) / rate
        since_last = self._clock() - self._last_time
        return max(0.0, remaining - since_last)

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        return "?" if eta is None else tqdm.format_interval(math.ceil(eta))

    def postfix(self) -> str:
        parts = []
        if self.training:
            ids = sorted(self.training)
            shown = ranges(ids)
            accs = list(self.training.values())
            parts.append(f"training {shown}: acc {percent(sum(accs) / len(accs), 1)}")
        if self.accuracies:
            parts.append(f"finished mean acc {percent(sum(self.accuracies) / len(self.accuracies), 1)}")
        return ", ".join(parts)

    def _refresh(self, advance: float) -> None:
        self.bar.set_description_str(self.label(), refresh=False)
        text = self.postfix()
        self.bar.set_postfix_str(text, refresh=False)
        if advance:
            self.bar.update(advance)
        else:
            self.bar.refresh()


def _accuracy(result) -> float | None:
    if result is None:
        return None
    if isinstance(result, (int, float)):
        return float(result)
    metrics = result if isinstance(result, Mapping) else getattr(result, "metrics", None)
    if isinstance(metrics, Mapping) and metrics.get("test_acc") is not None:
        return float(metrics["test_acc"])
    return None




__all__ = ["TrainProgress"]
