"""The `masklab` command line, declared: every command with its options (docs/cli.md is generated from this
parser). What a command does is `cmd_<command>(args)` in its family's module (see masklab/cli/__init__.py).
This module imports only the config (its fields make the run options), so building the parser is quick."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields

from masklab.config import RunConfig, default_text, field_type, parse_bool
from masklab.errors import UserError, closest, did_you_mean

DEFAULT_RUNS_DIR = "runs"


def RUNS_DIR() -> argparse.ArgumentParser:  # noqa: N802 (a parent parser, named like the option it adds)
    """The parent parser of every command that finds runs: --runs-dir."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help="where runs live (default ./runs)")
    return p


def QUIET() -> argparse.ArgumentParser:  # noqa: N802
    """The parent parser of every command that shows progress: --quiet."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", action="store_true", help="no progress and no summary: print only the last line "
                   "(the path of what the command made)")
    return p


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line on stderr and exit code 2, like all bad input;
    a mistyped option, command or choice gets the closest valid one (`did_you_mean`)."""

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        parser = self.command_parser()
        hint = suggestion(message, parser.option_strings() + self.option_strings())
        raise UserError(f"{message}{hint} (see `{parser.prog} --help`)")

    def option_strings(self) -> list[str]:
        return [o for action in self._actions for o in action.option_strings]

    def command_parser(self) -> Parser:
        """The parser of the command named in the arguments (unknown options reach the top parser's error),
        else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = next((a for a in self._argv if a in action.choices), None)
                if chosen is not None and isinstance(action.choices[chosen], Parser):
                    return action.choices[chosen]
        return self


def suggestion(message: str, options: list[str]) -> str:
    """' (did you mean --sparsity?)' for argparse's `message` about a mistyped option (`unrecognized arguments:
    --sparsty 0.9`) or choice (`invalid choice: 'genrate' (choose from ...)`): the closest of `options` or of
    the choices (`masklab.errors.did_you_mean`); '' when none is close. (argparse's own `suggest_on_error`
    needs Python 3.14.)

    Examples
    --------
    >>> suggestion("unrecognized arguments: --sparsty 0.9", ["--sparsity", "--seed"])
    ' (did you mean --sparsity?)'
    """
    choice = re.search(r"invalid choice: (.+?) \(choose from (.*)\)", message)
    if choice:
        return did_you_mean(choice.group(1).strip("'\""), [c.strip().strip("'\"") for c in choice.group(2).split(",")])
    if message.startswith("unrecognized arguments:"):
        words = [w.split("=", 1)[0] for w in message.split(":", 1)[1].split() if w.startswith("-")]
        close = [found for found in dict.fromkeys(closest(w, options) for w in words) if found]
        return f" (did you mean {', '.join(close)}?)" if close else ""
    return ""


def add_formats_option(p) -> None:
    p.add_argument("--formats", default="png", metavar="LIST",
                   help="figure formats, comma-separated: png, svg, pdf (default png; each extra format costs "
                   "about as much time again)")


def run_options() -> list[tuple[str, str, type | None, str | None, str]]:
    """(flag, RunConfig field, parse type (None: a switch), metavar, help) of every run option, made from
    the fields of RunConfig (their help and metavar live beside the field, `masklab.config.option`)."""
    out = []
    for f in fields(RunConfig):
        if f.name.startswith("_") or not f.metadata.get("flag", True):  # (the import fields have no flag)
            continue
        kind = f.metadata.get("cli_type") or field_type(f.name)
        default = default_text(f.name)
        text = f.metadata["help"] + (f" (default {default})" if default else "")
        switch = kind is bool and f.default is False
        out.append((f"--{f.name.replace('_', '-')}", f.name, None if switch else kind, f.metadata.get("metavar"),
                    text))
    return out


def add_run_options(p, skip: tuple[str, ...] = ()) -> None:
    """The RunConfig options (all default None, so that the --config file shows through)."""
    for flag, dest, kind, metavar, text in run_options():
        if dest in skip:
            continue
        if kind is None:
            p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text)
        else:
            p.add_argument(flag, dest=dest, type=parse_bool if kind is bool else kind, metavar=metavar, default=None,
                           help=text)


def add_scale_options(p) -> None:
    """--shard, --jobs, --executor and the job array's --slurm-* options (also a [slurm] table in --config)."""
    g = p.add_argument_group("beyond one machine (see README: Beyond one machine)")
    if p.prog.endswith("generate"):
        g.add_argument("--shard", metavar="I/N", help="train only shard I of N (the masks i with i %% N == I) into "
                       "the same run directory; N shards can run at once, and the run is the same, bit for bit")
    g.add_argument("--jobs", type=int, metavar="N", help="run N shard jobs through submitit and wait for them "
                   "(rerunning the same command resumes)")
    g.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="with --jobs: local (N processes here, threads split between them) or slurm (one job "
                   "array; requeued on preemption). Default local")
    g.add_argument("--no-wait", action="store_true", help="with --jobs: submit, print the job ids and return")
    g.add_argument("--slurm-partition", metavar="P", help="SLURM partition")
    g.add_argument("--slurm-time", type=int, metavar="MIN", help="minutes per task, at least 2 (default 60; a task "
                   "that runs out is requeued, and stops if it stored no mask in that time)")
    g.add_argument("--slurm-gpus-per-task", type=int, metavar="G", help="GPUs per task (default 0)")
    g.add_argument("--slurm-cpus-per-task", type=int, metavar="C", help="CPUs per task")
    g.add_argument("--slurm-mem", metavar="M", help="memory per task, e.g. 16GB")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="K", help="tasks running at once (default 256)")
    g.add_argument("--slurm-setup", action="append", metavar="CMD", help="a shell line run before each task, e.g. "
                   "'module load cuda' (repeatable). It does not choose the tasks' Python: they run this one")
    g.add_argument("--slurm-account", metavar="A", help="SLURM account to charge")
    g.add_argument("--slurm-qos", metavar="Q", help="SLURM quality of service")
    g.add_argument("--slurm-constraint", metavar="C", help="SLURM node features required, e.g. a100")
    g.add_argument("--slurm-gres", metavar="G", help="SLURM generic resources per node, e.g. gpu:a100:1")
    g.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="any other sbatch option, e.g. "
                   "mail-type=END or exclusive (repeatable)")


# ---- training: generate, jobs (cli/train.py), sweep (cli/sweep.py) --------------------------------------
def add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="the shard jobs of a run (generate/sweep --jobs N): state, masks, logs; "
                       "--cancel cancels them",
                       description="One line per shard task that `generate --jobs N` (or `sweep --jobs N`) "
                       "submitted for RUN: its job id, state (PENDING with its reason, RUNNING, requeued, DONE, "
                       "or how it ended), masks stored of those its shards plan, threads, host and log file.",
                       parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--cancel", action="store_true", help="cancel the tasks that still run (scancel, or end the "
                   "local processes); rerunning the generate command later resumes")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="train many masks over the same random weights into a run directory",
                       description="Train N masks that differ only in score seed (and, with --vary-data-seed, "
                       "data seed) and store them in RUNS_DIR/<run_id>. Every option can also be set in a TOML "
                       "file (--config, keys = option names with '_'); flags override the file. The last "
                       "line printed is the run directory.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("--config", metavar="F", help="TOML file of run options (e.g. a run's config.toml)")
    add_run_options(p)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue an incomplete run (the same command again does so too; --resume is needed to "
                   "raise --masks): masks in flight continue from their last finished epoch. With RUN (a run "
                   "directory or id): continue that run with its own config.toml (options may only repeat it, "
                   "or raise --masks to extend it)")
    add_allow_device_change(p)
    p.add_argument("--tensorboard", action="store_true", help="when the run is done, write each mask's per-epoch "
                   "history as TensorBoard event files under RUN/tensorboard/ (`tensorboard --logdir runs/`); needs "
                   "the extra 'tracking' (pip install 'masklab[tracking]'); changes no mask and no hash")
    add_scale_options(p)


SWEEP_VARIES = ("method", "recycle", "sparsity", "masks", "name")  # set per cell by the sweep itself


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="a grid of runs over models, widths, methods, sparsities, epochs: accuracy "
                       "and the landscape across settings",
                       description="Train (or reuse: each cell is a run, cached by its config hash) a grid of runs "
                       "over --models x --widths x --epochs-list x --methods x --weight-seeds x --sparsities with "
                       "--seeds masks each, on the dataset the generate options give; print accuracy per cell and "
                       "draw accuracy vs sparsity (published CIFAR-10 numbers beside conv-N, the dense network and "
                       "chance as lines). With --landscape (the default when cells have at least 2 masks) also "
                       "measure every cell (overlap and consensus vs chance, cluster structure, barriers, "
                       "prediction disagreement, ensembles, linear CKA; see docs/landscape.md) into ONE table, "
                       "FIGURES/<sweep id>/landscape.parquet (and .csv), with one figure per metric family. "
                       "Outputs are named by the sweep's own id, <name>-<hash of the grid and base config> "
                       "(default name sweep-<dataset>-<model(s)>), so another sweep never overwrites them. The "
                       "last line is the accuracy figure's path.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("--config", metavar="F", help="TOML file of run options shared by every cell")
    add_run_options(p, skip=SWEEP_VARIES)
    g = p.add_argument_group("the grid (each a comma-separated list)")
    g.add_argument("--models", metavar="LIST", help="models, e.g. conv2,conv4,conv6 or mlp,lenet-300-100 (default: "
                   "--model's)")
    g.add_argument("--widths", metavar="LIST", help="width multipliers, e.g. 0.25,0.5,1 (default: --width's)")
    g.add_argument("--methods", default="edge-popup,biprop,dense", metavar="LIST",
                   help="edge-popup, biprop, dense, with +iwr or +iterand, each optionally with settings of its "
                   "own as :key=value (e.g. biprop+iwr:recycle_every=2) (default edge-popup,biprop,dense: dense is "
                   "the trained network the figure draws as a reference)")
    g.add_argument("--sparsities", default="0.5,0.9", metavar="LIST", help="comma-separated (default 0.5,0.9)")
    g.add_argument("--epochs-list", metavar="LIST", help="epochs, e.g. 10,30 (default: --epochs's)")
    g.add_argument("--weight-seeds", default="0", metavar="LIST", help="comma-separated weight seeds (default 0)")
    g.add_argument("--seeds", type=int, default=3, metavar="N", help="masks (score seeds) per cell (default 3)")
    p.add_argument("--name", metavar="NAME", help="the sweep's name: its outputs are NAME-<hash> (default "
                   "sweep-<dataset>-<model(s)>)")
    p.add_argument("--figures", default="figures", metavar="DIR", help="where the figures go (default figures/)")
    land = p.add_argument_group("the landscape across settings (docs/landscape.md)")
    land.add_argument("--landscape", dest="landscape", action="store_const", const=True, default=None,
                      help="measure every cell (default: when cells have at least 2 masks)")
    land.add_argument("--no-landscape", dest="landscape", action="store_const", const=False,
                      help="accuracy only")
    land.add_argument("--pairs", default="10", metavar="M", help="mask pairs per cell whose barriers are measured, "
                      "drawn at random (seed 0); 'all' for every pair, 0 for none (default 10)")
    land.add_argument("--cka-samples", type=int, default=500, metavar="N", help="test samples (drawn at random, "
                      "seed 0) on which representations are compared by linear CKA (default 500)")
    land.add_argument("--pages", action="store_true", help="also write every cell's `masklab analyze` page under "
                      "FIGURES/<sweep id>/cells/ (with the same barrier pairs)")
    add_formats_option(p)
    add_allow_device_change(p)
    add_scale_options(p)


def add_allow_device_change(p) -> None:
    p.add_argument("--allow-device-change", action="store_true",
                   help="let a run whose masks were trained on another kind of device (cpu, or cuda with another "
                   "GPU model) or at another --precision get masks trained here (refused otherwise: their bits "
                   "come from different arithmetic; each mask records its own)")


# ---- run directories: runs, show, verify (cli/runs.py) -----------------------------------------------------
def add_runs(sub) -> None:
    sub.add_parser("runs", help="list the runs (id, model, dataset, method, sparsity, masks, accuracy)",
                   description="List every run under --runs-dir, one line each: its id, model, dataset, "
                   "method, sparsity, epochs, masks finished (of those planned when the run is incomplete) "
                   "and the mean final test accuracy (%). Damaged runs are named with what is wrong.",
                   parents=[RUNS_DIR()])


def add_results(sub) -> None:
    p = sub.add_parser("results", help="every run and analysis with its resolved settings and key numbers",
                       description="The results catalog: one row per run and analysis settings with every resolved "
                       "hyperparameter, the accuracy summary and the key numbers of each analysis, from the "
                       "SQLite database RUNS_DIR/catalog.sqlite (brought up to date from the run directories "
                       "first; rebuilt when missing). Prints the main columns; --out writes every column, --sql "
                       "runs a query on the tables runs, analyses and key_numbers (docs/catalog.md).",
                       parents=[RUNS_DIR()])
    p.add_argument("--out", metavar="FILE", help="write the whole table to FILE (.csv or .parquet)")
    p.add_argument("--sql", metavar="QUERY", help="print the result of this SQL query on the catalog instead, e.g. "
                   "\"SELECT run_id, lr, test_acc_mean FROM runs WHERE sparsity >= 0.8\"")


def add_show(sub) -> None:
    p = sub.add_parser("show", help="a run's config, per-mask table and layer layout", parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--mask", type=int, metavar="I", help="show mask I's record and per-epoch history instead")


def add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every file of a run in full; --repair fixes what it can",
                       description="Check run.json, config.toml, every record, mask file and extra (size and "
                       "checksum), masks.bits (every row) and that nothing the run writes is a link. With "
                       "--repair: masks with failing files move to RUN/quarantine/ (then `masklab generate "
                       "--resume RUN` retrains them), an edited config.toml is restored from run.json and "
                       "masks.bits is rebuilt. Exit 0 when clean or repaired, 2 when problems remain.",
                       parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--repair", action="store_true", help="quarantine failing masks, restore config.toml, rebuild "
                   "masks.bits")


# ---- analyses: analyze, compare (cli/analyze.py), interpolate (cli/interpolate.py), distances (cli/distances.py)
def add_analyze(sub) -> None:
    p = sub.add_parser("analyze",
                       help="distances, baselines, consensus, clustering, embedding, barriers: tables + figures",
                       description="Run every analysis that fits RUN. Each set of analysis settings is kept apart: "
                       "tables under RUN/analysis/<settings id>/ (Parquet, CSV up to 100,000 rows, the all-pair "
                       "distances as N x N matrices in pairs/), figures and the page under FIGURES/<run id>/<settings "
                       "id>/ (PNG; --formats png,svg for more); the settings id is 'default' for the defaults. "
                       "Stages that cannot take every mask at scale use stated samples (--cluster-masks, "
                       "--embedding-masks, --structure-masks, --functional-masks, --functional-pairs; --full lifts "
                       "them). The last line printed is the path "
                       "of the index page.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    p.add_argument("--pairs", type=int, default=3, metavar="M", help="mask pairs to interpolate, stratified by "
                   "distance (default 3; 0: none)")
    p.add_argument("--points", type=int, default=30, metavar="P", help="points per interpolation path (default 30)")
    p.add_argument("--no-embedding", action="store_true",
                   help="skip the embedding (MDS below 50 masks, UMAP from 50)")
    p.add_argument("--no-functional", action="store_true",
                   help="skip functional similarity (prediction disagreement, ensembles, linear CKA)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every sample and random draw (default 0)")
    g = p.add_argument_group("samples (each stated on the page and in the tables)")
    g.add_argument("--cluster-masks", type=sample_size, default=2000, metavar="N",
                   help="masks clustered and drawn in the heatmap, a seeded uniform sample (default 2000; all: every "
                   "mask)")
    g.add_argument("--embedding-masks", type=sample_size, default=2000, metavar="N",
                   help="masks embedded (default 2000; all: every mask)")
    g.add_argument("--structure-masks", type=sample_size, default=200, metavar="N",
                   help="masks of the cluster-structure test and of each of its random sets (default 200; all)")
    g.add_argument("--random-sets", type=int, default=99, metavar="R",
                   help="random mask sets of the structure test (default 99: p down to 0.01)")
    g.add_argument("--null-masks", type=int, default=400, metavar="N",
                   help="random masks whose pairs draw the null in the distance histogram (default 400)")
    g.add_argument("--functional-masks", type=sample_size, default=2000, metavar="N",
                   help="masks whose test predictions are compared pair by pair (default 2000; all)")
    g.add_argument("--functional-pairs", type=sample_size, default=20000, metavar="N",
                   help="pairs in the disagreement table, its correlation with Hamming distance and its figure, a "
                   "seeded uniform sample (default 20000; all)")
    g.add_argument("--full", action="store_true", help="every mask and pair in every stage (lifts the sample "
                   "sizes)")
    g = p.add_argument_group("barrier pairs beyond this process (same numbers; pairs already stored are kept)")
    g.add_argument("--scheduler", metavar="S", help="local (a Dask LocalCluster), or the address of a Dask scheduler")
    g.add_argument("--workers", type=int, metavar="N", help="--scheduler local: worker processes (default: one per "
                   "core)")
    g.add_argument("--jobs", type=int, metavar="N", help="N submitit jobs")
    g.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="with --jobs: local processes or one SLURM job array (default local)")
    add_formats_option(p)


def sample_size(text: str) -> int | None:
    """A sample size: a positive integer, or "all" (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of masks (an integer, or all)") from None


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="distances between the masks of two runs of the same network; joint embedding",
                       description="Compare the masks of RUN_A and RUN_B, two runs of the same network (e.g. "
                       "Edge-Popup vs Biprop masks of the same weights): per layer, the mean percent matching and "
                       "Jaccard index within A (pairs of A's masks), within B, and across (one mask of each), "
                       "each beside its own chance (runs of other sparsities keep other counts: within A, within B and "
                       "across each have theirs); and a joint embedding (MDS below 50 masks, UMAP from 50) that says "
                       "when the runs' densities differ. Tables, figures "
                       "and an index page go to FIGURES/compare-A-vs-B/; the last line printed is the page.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run_a", metavar="RUN_A", help="the first run (A): a run directory or a run id under --runs-dir")
    p.add_argument("run_b", metavar="RUN_B", help="the second run (B), of the same network (model, width and "
                   "dataset) as RUN_A, e.g. Biprop masks of A's weights")
    p.add_argument("--figures", metavar="DIR", help="figures folder (default: figures/ beside the runs folder)")
    add_formats_option(p)


def add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="loss and accuracy along a path between two masks; barriers",
                       description="Evaluate loss and accuracy along a path from mask A to mask B of RUN and print "
                       "the curve and its barriers; with --pairs M instead, the barriers of M sampled pairs and "
                       "their correlation with Hamming distance. With --out FILE the table also goes to FILE and "
                       "its path is the last line; --quiet then prints only that path (and nothing without "
                       "--out).", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("a", type=int, nargs="?", metavar="A", help="mask id of one end")
    p.add_argument("b", type=int, nargs="?", metavar="B", help="mask id of the other end")
    p.add_argument("--path", default="soft", choices=["soft", "hamming", "score"],
                   help="soft: W*((1-t)a + t b); hamming: swap bits keeping every layer's count; score: "
                   "top-k of interpolated scores (needs --keep-scores runs). Default soft")
    p.add_argument("--points", type=int, default=30, metavar="P", help="points including both ends (default 30)")
    p.add_argument("--orders", type=int, default=1, metavar="K", help="hamming path: K random bit orders")
    p.add_argument("--order", default="random", choices=["random", "score"], help="hamming path: bit order")
    p.add_argument("--pairs", type=int, metavar="M", help="barrier matrix over M sampled pairs instead of A B")
    p.add_argument("--seed", type=int, default=0, help="seed of bit orders and pair sampling (default 0)")
    p.add_argument("--full-test", action="store_true", help="evaluate every point on the whole test split "
                   "(default: a fixed subset of 2,000 test images when the split is larger; the header says which)")
    p.add_argument("--out", metavar="FILE", help="also write the curve (or, with --pairs, the barriers) to FILE "
                   "(.csv or .parquet); its path is then the last line printed")


def add_export_history(sub) -> None:
    p = sub.add_parser("export-history", help="every mask's per-epoch history as one CSV/Parquet table; "
                       "TensorBoard event files",
                       description="Write the per-epoch history of every finished mask of RUN (mask_id, epoch, lr, "
                       "train and test loss in nats, train and test accuracy as fractions, weights recycled) as one "
                       "table to --out, and with --tensorboard also as TensorBoard event files under "
                       "RUN/tensorboard/ (for a run made without `generate --tensorboard`). The last line is the "
                       "table's path. Python: masklab.history_table(run) returns the same table.",
                       parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--out", metavar="FILE", help="output file, .csv or .parquet (default <run id>-history.csv "
                   "in the current folder)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files under "
                   "RUN/tensorboard/ (needs the extra 'tracking')")


def add_distances(sub) -> None:
    p = sub.add_parser("distances", help="all-pairs distances of a run's masks into a file, in process or on Dask",
                       description="Compute the distance between every pair of RUN's masks (whole mask, and per "
                       "layer with --per-layer) and write them to --out: .parquet/.csv as the long table "
                       "(mask_a, mask_b, layer, metric, value) or .npy as the square matrix (layers first with "
                       "--per-layer). With --scheduler the pairs are computed as tiles on a Dask cluster: "
                       "'local' starts one on this machine, an address (tcp://host:8786) uses a running "
                       "scheduler (e.g. dask-jobqueue's SLURMCluster); its workers read the run's bit matrix "
                       "from the shared filesystem. Prints a per-layer summary; the last line is the file.",
                       parents=[RUNS_DIR(), QUIET()])
    p.add_argument("run", metavar="RUN", help="a run directory or a run id under --runs-dir")
    p.add_argument("--metric", default="hamming", choices=["hamming", "hamming_norm", "matching", "jaccard"],
                   help="default hamming, as masklab.distances: bits that differ")
    p.add_argument("--per-layer", action="store_true", help="also every layer, beside the whole mask")
    p.add_argument("--scheduler", metavar="S", help="local, or the address of a Dask scheduler (default: no Dask, "
                   "the numba kernel in this process)")
    p.add_argument("--workers", type=int, metavar="N", help="--scheduler local: worker processes (default: one "
                   "per core)")
    p.add_argument("--out", metavar="FILE", help="output file (default RUN/analysis/distances-<metric>.parquet)")


# ---- masks from elsewhere and back: import, export (cli/interop.py) -------------------------------------
def add_import(sub) -> None:
    p = sub.add_parser("import", help="make a run from masks trained elsewhere (hidden-networks, Biprop, IWR code, "
                       "torch.nn.utils.prune, npz)",
                       description="One run whose masks are the files' masks, one file = one mask, in the order "
                       "given. hidden-networks (also Biprop and the IWR code): the mask is their rule, zero the "
                       "int((1 - K) * n) smallest |scores| of each layer, with K = --keep (their prune_rate, the "
                       "fraction KEPT; a Biprop checkpoint's own prune_rate is used when it has one). torch-prune and "
                       "npz hold their masks. The weights come with the files and are stored with the run. The last "
                       "line printed is the run directory.", parents=[RUNS_DIR(), QUIET()])
    p.add_argument("files", nargs="+", metavar="FILE", help="checkpoint or mask files, one mask each")
    p.add_argument("--format", required=True, metavar="F", help="hidden-networks, torch-prune or npz")
    p.add_argument("--keep", type=float, metavar="K", help="fraction of each layer KEPT (the reference code's "
                   "prune_rate): hidden-networks keeps n - int((1 - K) * n); for torch-prune/npz: check the masks "
                   "keep that")
    p.add_argument("--sparsity", type=float, metavar="S", help="fraction of each layer removed: hidden-networks "
                   "--keep 1 - S; for torch-prune/npz: check the masks keep n - int(S * n) (masklab's rule)")
    p.add_argument("--method", metavar="M", help="edge-popup or biprop (default: what the files say, else "
                   "edge-popup)")
    p.add_argument("--model", metavar="M", help="the masklab model the files are (their FC is lenet-300-100): "
                   "layers are checked against it and each mask is evaluated")
    p.add_argument("--dataset", metavar="D", help="the dataset to evaluate on (with --model)")
    p.add_argument("--data-root", metavar="DIR", help="directory holding the dataset files")
    p.add_argument("--width", type=float, default=1.0, metavar="W", help="width multiplier of --model (default 1)")
    p.add_argument("--name", metavar="NAME", help="run name: the run id is NAME-<hash8> (default "
                   "import-<format>[-<model>])")
    p.add_argument("--allow-different-weights", action="store_true", help="import files whose weights differ "
                   "(each mask keeps its own weights; the run says so)")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="write one mask as a plain PyTorch state dict, torch-prune state, a "
                       "hidden-networks checkpoint or an npz",
                       description="Write mask I of RUN to --out FILE (atomically). state-dict: the effective "
                       "weights of masklab.plain_model(run) (plain nn.Linear/nn.Conv2d, nn.BatchNorm2d); torch-prune: "
                       "<layer>.weight_orig + <layer>.weight_mask; hidden-networks: weights and scores in that code's "
                       "layout with the prune_rate its rule needs; npz: bool masks and weights per layer. The last "
                       "line printed is the file.", parents=[RUNS_DIR()])
    p.add_argument("run", metavar="RUN", help="run directory or run id")
    p.add_argument("--mask", type=int, required=True, metavar="I", help="mask id")
    p.add_argument("--format", required=True, metavar="F", help="state-dict, torch-prune, hidden-networks or npz")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
