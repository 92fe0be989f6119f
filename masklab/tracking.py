"""Experiment tracking: each mask's per-epoch history as TensorBoard event files, and as one table.

A run stores each mask's history (`Run.history`: epoch, lr, train/test loss and accuracy, recycled weights)
in its own files. This module hands it to the tools researchers already use:

- `history_table(run)`: one row per mask and epoch (a DataFrame), `export_history(run, out)` writes it as CSV
  or Parquet (`masklab export-history RUN`);
- `write_tensorboard(run)`: TensorBoard event files under ``RUN/tensorboard/mask-<id>/`` (one run per mask
  in TensorBoard), so that ``tensorboard --logdir runs/`` shows every run's masks. Needs the optional extra
  `tracking` (``pip install masklab[tracking]``: the `tensorboard` package, whose record writer frames the
  events); `generate(..., tensorboard=True)` / ``masklab generate --tensorboard`` writes them as the run
  finishes, ``masklab export-history RUN --tensorboard`` for a run made without. Not part of the config:
  tracking changes no mask and no hash.

Scalars (step = the history's epoch, 0 the first; loss in nats, accuracy in %): ``loss/train (nats)``,
``loss/test (nats)``, ``accuracy/train (%)``, ``accuracy/test (%)``, ``learning rate``, ``recycled weights``.
Event files are written whole (`masklab.store.files.atomic_write`), with wall times from the run's creation
time (one second per epoch), so writing them again gives the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path

import pandas as pd

from masklab import files as W
from masklab.errors import UserError
from masklab.store.run import Run, open_run

TRACKING_DIR = "tensorboard"
# history column -> (TensorBoard tag, factor to the tag's unit)
TAGS = {"train_loss": ("loss/train (nats)", 1.0), "test_loss": ("loss/test (nats)", 1.0),
        "train_acc": ("accuracy/train (%)", 100.0), "test_acc": ("accuracy/test (%)", 100.0),
        "lr": ("learning rate", 1.0), "recycled": ("recycled weights", 1.0)}
HISTORY_COLUMNS = ["mask_id", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "recycled"]


def history_table(run: Run | str | os.PathLike) -> pd.DataFrame:
    """Every finished mask's per-epoch history, one row per (mask_id, epoch): lr, train_loss and test_loss
    (nats), train_acc and test_acc (fractions), recycled (weights recycled that epoch), in mask order.

    Examples
    --------
    >>> history_table(run).query("epoch == epoch.max()")["test_acc"].mean()  # doctest: +SKIP
    """
    run = _as_run(run)
    if not len(run):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    table = run.history()
    first = [c for c in HISTORY_COLUMNS if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def export_history(run: Run | str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write `history_table(run)` to `out` (.csv or .parquet; default ``<run id>-history.csv`` in the current
    folder: nothing is written into the run) and return its path."""
    run = _as_run(run)
    path = Path(out) if out is not None else Path(f"{run.id}-history.csv")
    return W.write_frame(path, history_table(run), root=path.parent)


def tensorboard_available() -> bool:
    """Whether the optional extra `tracking` (the `tensorboard` package) is installed."""
    try:
        import tensorboard.summary.writer.record_writer  # noqa: F401  (here: the extra is optional)
    except ImportError:
        return False
    return True


def require_tensorboard() -> None:
    if not tensorboard_available():
        raise UserError("TensorBoard event files need the optional extra `tracking`: pip install "
                        "'masklab[tracking]' (or pip install tensorboard); `masklab export-history RUN` writes the "
                        "history as CSV without it")


def event_bytes(history: pd.DataFrame, wall_time: float) -> bytes:
    """The bytes of one TensorBoard event file holding `history` (one mask's rows: epoch and the columns of
    `TAGS`): the file-version event, then one event per epoch with its scalars, framed as TFRecords by
    TensorBoard's own RecordWriter."""
    from tensorboard.compat.proto import event_pb2, summary_pb2  # here: the extra 'tracking' is optional
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString())
    for row in history.sort_values("epoch").to_dict("records"):
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(row[column]) * factor)
                  for column, (tag, factor) in TAGS.items() if column in row and pd.notna(row[column])]
        event = event_pb2.Event(wall_time=wall_time + int(row["epoch"]), step=int(row["epoch"]),
                                summary=summary_pb2.Summary(value=values))
        writer.write(event.SerializeToString())
    return buffer.getvalue()


def write_tensorboard(run: Run | str | os.PathLike) -> Path:
    """Write one TensorBoard event file per finished mask under ``RUN/tensorboard/mask-<id>/`` (see the
    module docstring) and return the folder (``tensorboard --logdir`` it, or the runs folder). Needs the
    extra `tracking`; a UserError says how to install it."""
    require_tensorboard()
    run = _as_run(run)
    created = run.meta.get("created")
    try:
        wall_time = _dt.datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        wall_time = 0.0
    folder = W.make_dirs(run.path / TRACKING_DIR, root=run.path, in_run=True)
    table = history_table(run)
    for mask_id, history in table.groupby("mask_id", sort=True):
        target = W.make_dirs(folder / f"mask-{int(mask_id):06d}", root=run.path, in_run=True)
        name = f"events.out.tfevents.{int(wall_time)}.masklab"
        W.atomic_write(target / name, event_bytes(history, wall_time), root=run.path, in_run=True, durable=False)
    return folder


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else open_run(run)


__all__ = ["HISTORY_COLUMNS", "TAGS", "TRACKING_DIR", "event_bytes", "export_history", "history_table",
           "tensorboard_available", "write_tensorboard"]
