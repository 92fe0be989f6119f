"""Shards: the masks of one run split between processes that write the same run directory at once.

Shard I of N trains the masks i with `i % N == I` (interleaved, so that the shards stay the same when a
run is extended with more masks, and each shard gets early and late score seeds alike). Each process
writes only its own masks, each whole (atomic per-mask files, record last); `locks/shard-I-of-N` lets one
process per shard in, and the run's `lock` is held shared, so a whole-run writer (or `verify --repair`)
waits until the shards are done. The registry is the set of records and `masks.bits` a cache of the mask
files, so the first reader after the shards finish sees the whole run; there is nothing to merge. Since
a mask depends only on its own seeds (masklab.train.trainer), the result is the same run, bit for bit, as
one process makes, and `--resume` of any shard, or of the whole run, trains exactly what is missing.
"""

from __future__ import annotations

import re

from masklab.errors import UserError


def parse_shard(shard) -> tuple[int, int]:
    """(I, N) from "I/N" or a pair; 0 <= I < N."""
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match:
            raise UserError(f"--shard {shard!r} is invalid: write I/N, e.g. 0/4 (shard I of N, I from 0)")
        shard = (int(match.group(1)), int(match.group(2)))
    try:
        index, count = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise UserError(f"shard {shard!r} is invalid: give (I, N) or 'I/N'") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count} is invalid: I must lie in 0..N-1 (e.g. 0/{max(count, 2)})")
    return index, count


def shard_masks(masks: int, index: int, count: int) -> list[int]:
    """The mask ids of shard `index` of `count` in a run of `masks` masks."""
    return list(range(index, masks, count))
