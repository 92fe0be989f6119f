"""`masklab.generate`: train the masks of a run and store them, resumably (config -> train -> store).

(The module is `generation`, not `generate`, so that `masklab.generate` stays the function.)

Everything the user gave is checked first (config values, the dataset, the model fits the data, the
device), and only then is the run directory created, so bad input leaves nothing behind. Masks are
trained in index order, K at a time with `--stack K` (one pass over shared weights, see
`masklab.train.stacked`); each stack's masks are stored whole before the next stack starts, so a killed
run loses at most the stack in progress, and `resume=True` trains exactly the missing ones.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from masklab.config import RunConfig, method_label
from masklab.config_file import load_toml
from masklab.data import load_config_dataset, synthetic_shape
from masklab.errors import UserError
from masklab.limits import check_fits
from masklab.nn.layers import masked_layers
from masklab.nn.models import build_model
from masklab.progress import TrainProgress
from masklab.store.bits import make_layout
from masklab.store.catalog import update_run
from masklab.store.lock import RunLock
from masklab.store.paths import resolve_run
from masklab.store.run import Run
from masklab.store.shards import parse_shard
from masklab.store.writer import RunWriter
from masklab.tracking import require_tensorboard, write_tensorboard
from masklab.train.device import resolve_device
from masklab.train.precision import check_precision, check_same_compute, device_record
from masklab.train.stacked import auto_stack
from masklab.train.trainer import Checkpoint, train_masks
from masklab.units import ranges


def as_config(config: RunConfig | dict | str | os.PathLike | None = None, **overrides: Any) -> RunConfig:
    """A RunConfig from a RunConfig, a dict of fields, a TOML path or None (the defaults), with overrides."""
    if config is None:
        values: dict = {}
    elif isinstance(config, RunConfig):
        values = config.to_dict()
    elif isinstance(config, dict):
        values = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        values = load_toml(os.fspath(config))
    else:
        raise UserError(f"config must be a RunConfig, a dict or a TOML path, not {type(config).__name__}")
    return RunConfig.from_dict({**values, **overrides})


def prepare(config: RunConfig, data=None):
    """Validate everything a run needs before anything is written: returns (dataset, layers, dataset_info).
    `data`: the loaded dataset, if the caller has it already."""
    if config.imported is not None or config.keep_rule != "masklab":
        raise UserError("this config is an imported run's (masklab import): its masks were trained elsewhere and "
                        "masklab cannot train more of them; generate a new run without the import fields")
    config.validate()
    check_precision(config.precision, resolve_device(config.device))  # a bad --device fails here, before any data
    if data is None and config.dataset == "synthetic":  # its shape is the config's: check before making the data
        check_fits(config, synthetic_shape(config), 10)
    dataset = data if data is not None else load_config_dataset(config)
    if dataset.name != config.dataset:
        raise UserError(f"the data given is {dataset.name!r} but the config's dataset is {config.dataset!r}")
    check_fits(config, dataset.input_shape, dataset.n_classes)  # before a model too large is allocated
    model = build_model(config.model, dataset.input_shape, dataset.n_classes, config.width, config.method,
                        config.sparsity)
    layers = masked_layers(model)
    if not layers:
        raise UserError(f"model {config.model} has no prunable layers")
    layout = make_layout([n for n, _ in layers], [tuple(m.weight.shape) for _, m in layers],
                         [m.n_keep for _, m in layers])
    info = {"name": config.dataset, "input_shape": list(dataset.input_shape), "n_classes": int(dataset.n_classes),
            "n_train": int(dataset.n_train), "n_test": int(dataset.n_test)}
    return dataset, layout, info


def generate(config: RunConfig | dict | str | os.PathLike | None = None, *, runs_dir: str | os.PathLike = "runs",
             resume: bool | str | os.PathLike = False, quiet: bool = True, data=None,
             log: Callable[[str], None] | None = None, shard: tuple[int, int] | str | None = None,
             allow_device_change: bool = False, on_epoch: Callable[[dict], None] | None = None,
             tensorboard: bool = False, **overrides: Any) -> Run:
    """Train the masks of the run `config` (a RunConfig, a dict, a TOML path or None for the default, plus
    keyword overrides such as `masks=4`) into `runs_dir/<run_id>` and return the Run.

    `resume=True`: continue an incomplete run (training only the missing masks); without it an incomplete
    existing run is refused and a complete one is returned as it is. A named run (`name=NAME`) that does
    not exist yet is refused under `resume=True` when runs of that name with other configs exist (they
    are listed with the fields that differ).
    `resume=RUN` (a run directory or a run id under `runs_dir`): continue that run with its own config;
    `config` and `overrides` may only repeat it, or raise `masks` to extend it (see `resume_config`).
    `quiet=False` shows a progress bar on stderr. `data`: the loaded dataset (default: load the config's).
    `log` receives one-line status messages.
    `shard=(I, N)` (or "I/N"): train only shard I of N, the masks i with i % N == I, into the same run
    directory, beside the other shards' processes (see masklab.store.shards); every mask is the same as a
    one-process run would make it.
    `allow_device_change=True`: let a run whose stored masks were trained on another kind of device (or
    GPU model, or `precision`) get masks trained here; refused otherwise (see masklab.train.precision).
    `on_epoch` receives each mask's row of each epoch (with its `index` and the run's `epochs`), e.g. for a
    shard job's progress report.
    `tensorboard=True`: when the run is done, write its masks' histories as TensorBoard event files under
    RUN/tensorboard/ (`masklab.tracking`; needs the extra `tracking`, checked before training). Not part of
    the config: it changes no mask and no hash.
    """
    if tensorboard:
        require_tensorboard()
    if shard is not None:
        shard = parse_shard(shard)
    if resume is not True and resume is not False:
        changes = {} if config is None else as_config(config).to_dict(non_default=True)
        config, runs_dir = resume_config(resume, runs_dir, {**changes, **overrides})
        resume = True
    else:
        config = as_config(config, **overrides)
    dataset, layout, info = prepare(config, data)
    say = log or (lambda message: None)
    with RunWriter.open(runs_dir, config, layout, info, resume=resume, shard=shard) as writer:
        todo = writer.missing
        part = "" if shard is None else f"shard {shard[0]}/{shard[1]} of "
        if not todo:
            say(f"{part}run {writer.path} is complete ({len(writer.done)} masks): nothing to train")
        else:
            if writer.done:
                say(f"resuming: {len(writer.done)} masks stored, training {len(todo)} more")
            try:
                _train_all(config, dataset, writer, todo, quiet, say, allow_device_change, on_epoch)
            except UserError:
                # bad input found only by training (an lr that diverges): leave no run behind that this
                # call created and that holds nothing
                if writer.created and not writer.done:
                    writer.discard()
                raise
    run = Run(writer.path, check="structure")
    run.masks  # noqa: B018 -- checks every mask file and builds the consolidated bit matrix for the analyses
    if shard is None:  # (shard jobs may run on other machines: `results()` indexes what they wrote)
        update_run(run.path, runs_dir)
    if tensorboard:
        say(f"TensorBoard event files: {write_tensorboard(run)}")
    return run


def create_run(config: RunConfig, runs_dir: str | os.PathLike, data=None) -> Path:
    """Check everything a run needs and create its directory if it does not exist yet (or check an existing
    one: same config, not locked); train nothing. Returns the run directory. Shard jobs then write into it."""
    config = as_config(config)
    _, layout, info = prepare(config, data)
    with RunWriter.open(runs_dir, config, layout, info, resume=True) as writer:
        return writer.path


def discard_empty_run(path: str | os.PathLike) -> None:
    """Remove a run directory that holds no mask (one `create_run` made for jobs that could not be
    submitted): under its lock, moved aside first so that no reader sees it half removed. A run that holds a
    mask, or that another process writes, is left as it is."""
    path = Path(path)
    try:
        with RunLock(path / "lock"):
            if any(name.endswith((".json", ".mask")) for name in os.listdir(path / "masks")):
                return
            gone = path.with_name(f".tmp-{path.name}-{os.getpid()}-discarded")
            os.rename(path, gone)
    except (OSError, UserError):
        return
    shutil.rmtree(gone, ignore_errors=True)


def resume_config(run: str | os.PathLike, runs_dir: str | os.PathLike | None, changes: dict[str, Any]
                  ) -> tuple[RunConfig, Path]:
    """The config and the runs directory to continue run `run` (a run directory or a run id under
    `runs_dir`): the run's own config.toml with `changes` applied. A change that would make another run
    (a hashed field, or `name`) is refused naming the fields; `masks` may only be raised (extending
    the run); fields that do not change the masks (device, stack, data_root) are taken as given."""
    path = resolve_run(run, runs_dir)
    stored = Run(path, check="structure").config  # (the writer checks the run in full when it opens it)
    if stored.imported is not None:
        raise UserError(f"--resume {path}: that run was imported (masklab import), not trained by masklab: there is "
                        "nothing to resume; import more files as a new run")
    config = RunConfig.from_dict({**stored.to_dict(), **changes}, source="command line")
    flag = {dest: f"--{dest.replace('_', '-')}" for dest in config.to_dict()}
    if config.hash != stored.hash:
        mine, theirs = config.hashed_fields(), stored.hashed_fields()
        fields = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
        fields = [k for k in fields if k in changes] or fields
        given = ", ".join(f"{flag[k]} {getattr(config, k)!r} (the run has {getattr(stored, k)!r})" for k in fields)
        raise UserError(f"--resume {path}: {given or 'the options given'} would make another run; drop them to "
                        f"continue {path.name} with its own config, or leave out --resume {run} to start a new run")
    if config.run_id != path.name:
        raise UserError(f"--resume {path}: the directory is not named by its run id ({config.run_id}"
                        + (f", or --name {config.name!r} is not its name" if "name" in changes else "")
                        + "); rename it to its run id, or drop --name")
    if config.masks < stored.masks:
        raise UserError(f"--resume {path}: --masks {config.masks} is fewer than the {stored.masks} masks the run "
                        "plans; --masks can only raise it (to extend the run)")
    return config, path.parent


def _train_all(config: RunConfig, dataset, writer: RunWriter, todo: list[int], quiet: bool,
               say: Callable[[str], None] = lambda line: None, allow_device_change: bool = False,
               on_epoch: Callable[[dict], None] | None = None) -> None:
    """Train the masks `todo` in stacks and store each; at each epoch's end every mask's training state is
    checkpointed in the run, so that a killed or interrupted run continues from its masks' last finished
    epochs, with the bits of an uninterrupted run. `on_epoch` gets each epoch's row too (a shard job's
    progress report)."""
    device = resolve_device(config.device)
    mine = device_record(device, config.precision)
    check_same_compute(writer.stored_records(writer.done), mine, str(writer.path), allow_device_change)
    checked = set(writer.done)
    saved = {}
    for i, arrays in writer.read_checkpoints().items():
        try:
            checkpoint = Checkpoint.from_arrays(arrays)
        except (KeyError, ValueError):  # not a checkpoint this masklab can read: train the mask from its start
            continue
        if checkpoint.index == i and checkpoint.epoch + 1 < config.epochs:
            saved[i] = checkpoint
    if saved:
        epochs = sorted({c.epoch + 1 for c in saved.values()})
        say(f"continuing mask{'s' if len(saved) > 1 else ''} {ranges(sorted(saved))} from their checkpoints "
            f"(epoch{'s' if len(epochs) > 1 else ''} {', '.join(map(str, epochs))} of {config.epochs} done)")
    steps = -(-int(dataset.n_train) // config.batch_size)
    done = float(sum(c.epoch + 1 for c in saved.values()))

    def keep(checkpoints) -> None:
        for checkpoint in checkpoints:
            writer.write_checkpoint(checkpoint.index, checkpoint.to_arrays())

    with TrainProgress(len(todo), config.epochs, quiet, steps_per_epoch=steps, done=done) as progress:
        def report(row: dict) -> None:
            progress.on_epoch(row)
            if on_epoch is not None:
                on_epoch(row)

        for chunk, measured in _stacks(config, dataset, device, todo, saved):
            if writer.shard is not None:  # an overlapping shard (another N) may have stored some meanwhile
                elsewhere = writer.stored_elsewhere()
                check_same_compute(writer.stored_records(elsewhere - checked), mine, str(writer.path),
                                   allow_device_change)  # (shards started at once, on other devices)
                checked |= elsewhere
                chunk = [i for i in chunk if i not in elsewhere]
                if not chunk:
                    continue
            resume = [saved[i] for i in chunk] if chunk[0] in saved else None
            for trained in train_masks(config, chunk, dataset=dataset, device=device, on_epoch=report,
                                       on_steps=progress.on_steps, on_checkpoint=keep, resume=resume,
                                       stacks=measured):
                writer.write_mask(trained, device=str(device))
                progress.mask_done(trained)


def _stacks(config: RunConfig, dataset, device, todo: list[int], saved: dict | None = None
            ) -> list[tuple[list[int], tuple[int, ...] | None]]:
    """The masks still to train, in chunks of the stack size (auto: `auto_stack`; dense: one at a time),
    each with the sub-stack sizes the trainer measures (`--stack auto`: the chunk's and 1, see
    masklab.train.plan; None: the chunk's alone). Masks with a checkpoint come first, in chunks of one
    epoch each. Mask i's result depends on its own seeds only, so any chunking gives the same masks."""
    saved = saved or {}
    if config.method == "dense":
        size = 1
    else:
        size = auto_stack(config, dataset, device, len(todo)) if config.stack == 0 else config.stack
    groups: dict[int, list[int]] = {}
    for i in todo:
        groups.setdefault(saved[i].epoch if i in saved else -1, []).append(i)
    chunks = []
    for epoch in sorted(groups, reverse=True):  # the furthest first; fresh masks (-1) last
        masks = groups[epoch]
        chunks += [masks[i:i + size] for i in range(0, len(masks), size)]
    return [(chunk, (len(chunk), 1) if config.stack == 0 and len(chunk) > 1 else None) for chunk in chunks]


def banner(config: RunConfig, runs_dir: str | os.PathLike) -> list[str]:
    """The lines `masklab generate` prints before training: the run id, the non-default config, the path."""
    changed = config.to_dict(non_default=True)
    text = ", ".join(f"{k}={v}" for k, v in changed.items()) if changed else "the embedded default"
    return [f"run {config.run_id}: {config.masks} masks, {config.dataset} {config.model} "
            f"{method_label(config.method, config.recycle)} sparsity {config.sparsity:g}",
            f"config: {text}", f"into {Path(runs_dir) / config.run_id}"]
