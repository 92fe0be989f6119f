"""`masklab runs`, `masklab show` and `masklab verify`: the run directories, listed, shown and checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from masklab import files as W
from masklab.cli.text import bytes_text, differs, frame_text, value_text
from masklab.errors import UserError
from masklab.store.catalog import catalog_path, results
from masklab.store.files import restore_hint
from masklab.store.integrity import verify
from masklab.store.paths import resolve_run
from masklab.store.run import list_runs, open_run
from masklab.store.settings import SETTING_FIELDS
from masklab.units import setting_text, shown_accuracy, shown_settings


def cmd_runs(args: argparse.Namespace) -> int:
    table = list_runs(args.runs_dir)
    if table.empty:
        print(f"no runs under {args.runs_dir}; make one with `masklab generate`")
        return 0
    ok = table[table["error"].isna()].copy()
    ok["masks"] = [f"{m}" if m == p else f"{m}/{p}" for m, p in zip(ok["masks"], ok["planned"])]
    for column in ("sparsity", "epochs", "lr", "weight_init", "weight_seed"):
        ok[column] = [setting_text(column, v) for v in ok[column]]
    ok = ok.rename(columns={"weight_init": "weight init", "weight_seed": "weight seed"})
    cols = ["run_id", "model", "dataset", "method", "sparsity", "epochs", "lr", "weight init", "weight seed", "masks",
            "test_acc"]
    if len(ok):
        print(frame_text(shown_accuracy(ok[cols], ["test_acc"])))
    for row in table[table["error"].notna()].itertuples():
        print(f"{row.run_id}: damaged: {row.error}")
    return 0


RESULT_COLUMNS = ["run_id", "settings_id", "model", "dataset", "method", "recycle", "sparsity", "epochs", "lr",
                  "n_masks", "test_acc_mean"]
RESULT_KEYS = ["matching all", "jaccard all"]


def cmd_results(args: argparse.Namespace) -> int:
    if args.sql:
        print(frame_text(results(args.runs_dir, sql=args.sql)))
        return 0
    table = results(args.runs_dir)
    if table.empty:
        print(f"no runs under {args.runs_dir}; make one with `masklab generate`")
        return 0
    if args.out:
        out = Path(args.out)
        if out.suffix not in W.TABLE_SUFFIXES:
            raise UserError(f"--out {out}: write a .csv or a .parquet file")
        W.write_frame(out, table, root=out.parent)
        print(f"{len(table)} rows, {len(table.columns)} columns: {out}")
        return 0
    shown = table[[c for c in RESULT_COLUMNS + RESULT_KEYS if c in table.columns]].copy()
    shown["settings_id"] = shown["settings_id"].fillna("-")
    print(frame_text(shown_accuracy(shown, ["test_acc_mean"])))
    rows, runs = len(table), table["run_id"].nunique()
    print(f"{rows} row{'s' * (rows != 1)} ({runs} run{'s' * (runs != 1)}), {len(table.columns)} columns in all "
          f"(--out FILE for every one); catalog {catalog_path(args.runs_dir)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = open_run(args.run, args.runs_dir)
    if args.mask is not None:
        record = run.record(args.mask)
        history = shown_accuracy(run.history(args.mask), ["train_acc", "test_acc"])
        for key, value in record.items():
            if key not in ("files", "extras"):
                print(f"{key:>14}  {value_text(key, value)}")
        print(f"{'extras':>14}  {', '.join(record.get('extras', {})) or '-'}")
        print("\nhistory:")
        print(frame_text(history) if len(history) else
              "  (none: imported masks)" if run.imported is not None else "  (none recorded)")
        return 0
    parts = run.summary()
    sizes = {}
    for key, value in parts["run"].iloc[0].items():
        if str(key).startswith("bytes per "):
            sizes[str(key).removeprefix("bytes per ")] = value
            continue
        print(f"{key:>20}  {value_text(str(key), value)}")
    print(f"{'on disk':>20}  {bytes_text(run, sizes)}")
    print("\nsettings (* = set by the config: part of the hash; m = the method's default; else the default):")
    settings = shown_settings(parts["settings"])
    marks = {"set": "*", "method": "m"}
    width = max(len(s) for s in settings["setting"])
    for row in settings.itertuples():
        print(f"  {marks.get(row.source, ' ')} {row.setting:>{width}}  {row.value}")
    config = parts["config"]
    shown = set(SETTING_FIELDS)
    other = config[[f not in shown and differs(v, d) for f, v, d in zip(config["field"], config["value"],
                                                                          config["default"])]]
    if len(other):
        print("  also: " + ", ".join(f"{r.field} = {setting_text(r.field, r.value)}" for r in other.itertuples()))
    print("\nmasks:")
    cols = ["mask_id", "score_seed", "data_seed", "test_acc", "best_test_acc", "test_loss", "train_acc",
            "epochs", "seconds"]
    masks = shown_accuracy(parts["masks"], ["test_acc", "best_test_acc", "train_acc"])
    print(frame_text(masks[[c for c in cols if c in masks.columns]]) if len(masks) else "  (none finished yet)")
    print("\nlayers:")
    print(frame_text(parts["layers"][["layer", "shape", "n_bits", "n_keep", "keep", "word_start", "word_stop"]]))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    path = resolve_run(args.run, args.runs_dir)
    table = verify(path, repair=args.repair)
    print(f"verified {path}:")
    counts = table.groupby("kind", sort=False)["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["ok", "stale", "problem", "repaired"], fill_value=0)
    print(frame_text(counts.reset_index().rename(columns={"kind": "checked"})))
    found = table[table["status"].isin(["problem", "repaired", "stale"])]
    for row in found.itertuples():
        print(f"{row.status:>9}  {row.path}: {row.detail}" + (f" -> {row.action}" if row.action else ""))
    problems = table[table["status"] == "problem"]
    quarantined = sorted({int(i) for i in table.loc[table["action"].str.contains("quarantine"), "mask_id"].dropna()})
    if len(problems):
        first = problems.iloc[0]
        hint = "" if args.repair or "--repair" in first["detail"] else \
            f"; `masklab verify {path} --repair` fixes what it can"
        raise UserError(f"run {path}: {len(problems)} problem(s) remain, the first: {first['path']}: "
                        f"{first['detail']}{hint}")
    if quarantined:
        many = len(quarantined) > 1
        print(f"mask{'s' if many else ''} {', '.join(map(str, quarantined))} moved to {path / 'quarantine'}; "
              f"{restore_hint(path, many)}")
    print("all files verified" if not len(found) else "repaired" if args.repair else "no problems")
    return 0

