"""Golden bits: the exact masks, scores, recycling maps and recorded figures of small fixed runs, pinned.

The invariance tests (stack, threads, shards, resume) prove that a mask depends on its own seeds only; they
would all pass a change that alters every mask the same way. This test pins what the masks ARE: one small
run per method (edge-popup and biprop, each alone, with IWR and with IteRand; dense), on the MLP over the
bundled digits and on a small conv2 over synthetic 3x8x8 images, each trained with `masklab.generate` and
stored, then read back through the store.

Each entry of GOLDEN is a sha256 over what the stored run gives back, each layer packed with np.packbits (so
the digest does not depend on the file format, only on the bits and values): the masks; the scores
(float16, stored with --keep-scores); the IWR / IteRand maps; and every mask's recorded test accuracy, loss
and best epoch.

A change that moves these digests changes masks: it must be deliberate, and its commit must say why and
update GOLDEN (run this file with MASKLAB_GOLDEN_PRINT=1 to print the new table). The digests hold for the
CPU build of PyTorch on x86-64 with MKL's strict CNR mode, which masklab sets (see masklab/nn/exact.py).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import masklab

MLP = {"dataset": "digits", "model": "mlp", "width": 0.5}
CONV = {"dataset": "synthetic", "input_shape": "3x8x8", "model": "conv2", "width": 0.125}
# IWR after every epoch but the last (REFERENCE.md): 6 epochs recycle 5 times, enough for the recycled weights to
# change which weights the masks keep (with fewer, IWR only moves pruned weights and the masks stay as without it)
RECYCLE = {"recycle_every": 1, "epochs": 6}

CASES = {
    "mlp edge-popup": {**MLP},
    "mlp edge-popup+iwr": {**MLP, "recycle": "iwr", **RECYCLE},
    "mlp edge-popup+iterand": {**MLP, "recycle": "iterand"},
    "mlp biprop": {**MLP, "method": "biprop"},
    "mlp biprop+iwr": {**MLP, "method": "biprop", "recycle": "iwr", **RECYCLE},
    "mlp biprop+iterand": {**MLP, "method": "biprop", "recycle": "iterand", "sparsity": 0.8},
    "mlp dense": {**MLP, "method": "dense"},
    "conv2 edge-popup": {**CONV},
    "conv2 edge-popup+iwr": {**CONV, "recycle": "iwr", **RECYCLE, "sparsity": 0.7},
    "conv2 edge-popup+iterand": {**CONV, "recycle": "iterand"},
    "conv2 biprop": {**CONV, "method": "biprop"},
    "conv2 biprop+iwr": {**CONV, "method": "biprop", "recycle": "iwr", **RECYCLE},
    "conv2 biprop+iterand": {**CONV, "method": "biprop", "recycle": "iterand"},
}
COMMON = {"masks": 2, "epochs": 3, "batch_size": 64, "keep_scores": True, "stack": 2, "device": "cpu"}

GOLDEN = {
    "mlp edge-popup": {
        "masks": "37cf9d2afc7c24e8", "scores": "4cf01580f9a801ee",
        "figures": "9f4b5838b59c4e41",
    },
    "mlp edge-popup+iwr": {
        "masks": "9e1442a494047b7b", "scores": "18cadcef2d824e9d",
        "src": "bd18b1201d85263a", "figures": "2f2103acbca787d4",
    },
    "mlp edge-popup+iterand": {
        "masks": "aa4041829f8348f7", "scores": "04b1a65d2c552d1a",
        "draw": "32c26268cdf9f024", "figures": "aaa3a4ecc9308284",
    },
    "mlp biprop": {
        "masks": "d8df18a9b7f1b613", "scores": "6f85a7203a416485",
        "figures": "3f7612dc4fe9f111",
    },
    "mlp biprop+iwr": {
        "masks": "9b0360c168b92f0b", "scores": "f491a57ef66937ef",
        "src": "542a74c0d09867b1", "figures": "59b0e0d9f1826b38",
    },
    "mlp biprop+iterand": {
        "masks": "bc058ee2770273d1", "scores": "4cda2cd031218aa7",
        "draw": "482b0c101b034e70", "figures": "bc864fecac088c69",
    },
    "mlp dense": {
        "masks": "ee4ed1078527b164", "weights": "b400e9bb4dc219e6",
        "figures": "ae8a53d8be1f92f5",
    },
    "conv2 edge-popup": {
        "masks": "4aca21bde7eaea98", "scores": "44d05b045c105fb9",
        "figures": "1b3928caf156d1df",
    },
    "conv2 edge-popup+iwr": {
        "masks": "e7f96e8529dc0467", "scores": "f6819fc2873186df",
        "src": "0749b447f3dc95bd", "figures": "2eb2b6eda0b80e13",
    },
    "conv2 edge-popup+iterand": {
        "masks": "ea782936bfeeed88", "scores": "9de4d63684f73b95",
        "draw": "1e051012a8679eef", "figures": "d5baeb341ff1ca5b",
    },
    "conv2 biprop": {
        "masks": "1d2f9ff085fd9c20", "scores": "95f0f90d8a126bba",
        "figures": "03c92da8c49fef35",
    },
    "conv2 biprop+iwr": {
        "masks": "339a76b2b288e130", "scores": "c43a9f54b900e741",
        "src": "c1cf0974f495ae49", "figures": "010eb5c753771871",
    },
    "conv2 biprop+iterand": {
        "masks": "82f816b9fd657101", "scores": "1de6ea4e6c6c1a74",
        "draw": "4600904a0005ef9a", "figures": "c85d868e64737bd6",
    },
}


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.packbits(a).tobytes() if a.dtype == bool else a.tobytes())
    return h.hexdigest()[:16]


def fingerprint(run) -> dict[str, str]:
    """sha256 prefixes of a run's masks, scores, recycling maps and recorded figures (see the module doc)."""
    masks = run.masks
    out = {"masks": _digest(masks.unpack(i, layer) for i in range(len(masks)) for layer in masks.layers.layer)}
    if run.config.method != "dense":
        out["scores"] = _digest(s for i in run.ids for s in run.scores(i))
    else:
        out["weights"] = _digest(w for i in run.ids for w in run.dense_weights(i))
    for kind in ("src", "draw"):
        maps = [run.index_map(i, kind) for i in run.ids]
        if any(m is not None for m in maps):
            assert any((m != np.arange(m.size)).any() for ms in maps for m in ms), f"{kind} map is the identity"
            out[kind] = _digest(m for ms in maps for m in ms)
    table = run.table.sort_values("mask_id")
    figures = [repr(float(v)) for col in ("test_acc", "test_loss", "best_test_acc") for v in table[col]]
    out["figures"] = hashlib.sha256(" ".join(figures).encode()).hexdigest()[:16]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_golden_bits(case, tmp_path):
    run = masklab.generate(**{**COMMON, **CASES[case]}, runs_dir=tmp_path)
    got = fingerprint(run)
    if os.environ.get("MASKLAB_GOLDEN_PRINT"):
        print(f"\n    {case!r}: {got!r},")
    assert got == GOLDEN[case], (
        f"{case}: the bits or values of a pinned run changed ({got}). If the change is deliberate, update GOLDEN "
        "and say why in the commit.")
