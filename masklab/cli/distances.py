"""`masklab distances`: all-pairs distances of a run's masks into a file, in this process or on Dask."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from masklab.analysis.distances import distances_to_file
from masklab.analysis.tiles import connect
from masklab.cli.options import at_least
from masklab.cli.text import frame_text
from masklab.errors import UserError
from masklab.files import make_dirs
from masklab.store.run import open_run


def cmd_distances(args: argparse.Namespace) -> int:
    if args.workers is not None:
        at_least("--workers", args.workers, 1)
    run = open_run(args.run, args.runs_dir)
    if len(run) < 2:
        raise UserError(f"run {run.id} has {len(run)} finished mask(s); distances need at least 2")
    out = Path(args.out) if args.out else run.path / "analysis" / f"distances-{args.metric}.parquet"
    make_dirs(out.parent, root=run.path if not args.out else None)
    client = connect(args.scheduler, args.workers) if args.scheduler else None
    try:
        bar = tqdm(desc="tiles", unit="tile", dynamic_ncols=True, disable=client is None or args.quiet)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = distances_to_file(run.masks, out, args.metric, args.per_layer, client, progress)
        bar.close()
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and args.scheduler == "local":
                cluster.close()
    if not args.quiet:
        print(frame_text(summary))
    print(out, flush=True)
    return 0
