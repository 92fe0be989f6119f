"""All-pairs mask distances: masklab's numba kernel against scipy pdist and faiss hammings, side by side.

1,000 random masks of Conv-4 size (2,425,024 bits in the layers 1728, 36864, 73728, 147456, 2097152, 65536,
2560; density 0.5), all pairs, on `--threads` cores. Prints, each measured in this process:

- whole-mask intersections (upper triangle) and Gbit-pairs/s (pairs x bits / s);
- the per-layer pass (whole mask and every layer at once) and its cost relative to the whole-mask pass
  (target < 1.3x);
- scipy ``pdist(bools, "hamming")`` timed on a subset (`--scipy-masks`, default 40) and scaled by the pair
  count to all pairs (target >= 150x);
- faiss-cpu ``hammings`` on the same packed bytes (uint8 codes), timed on a subset (`--faiss-masks`) and
  scaled; faiss computes the full square, so both the ratio of the task times and the ratio per computed
  pair are printed (target >= 3x per pair); skipped with a message if faiss is not installed;
- peak memory of the per-layer pass beside the packed matrix and the N x N x (L + 1) result;
- whether the compiled kernel contains VPOPCNTQ (AVX-512 VPOPCNTDQ) and whether this CPU has it.

Every timing is the minimum over `--rounds` rounds that interleave all four measurements (other processes
on a shared machine only ever make a round slower, and interleaving spreads that over all of them).

    python bench/bench_distances.py [--masks 1000] [--threads 2] [--rounds 4] [--quick]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc

import numpy as np

from masklab.analysis import intersections
from masklab.store.bits import MaskSet, make_layout

CONV4_LAYERS = [1728, 36864, 73728, 147456, 2097152, 65536, 2560]


def random_masks(n_masks: int, seed: int = 0) -> MaskSet:
    """Density-0.5 random masks, generated a few rows at a time (no large temporaries)."""
    layout = make_layout([f"layer{k}" for k in range(len(CONV4_LAYERS))], [(n,) for n in CONV4_LAYERS])
    n_words = int(layout["word_stop"].iloc[-1])
    bits = np.empty((n_masks, n_words), dtype=np.uint64)
    rng = np.random.default_rng(seed)
    for r0 in range(0, n_masks, 32):
        rows = bits[r0:r0 + 32]
        rows[:] = rng.integers(0, np.iinfo(np.uint64).max, size=rows.shape, dtype=np.uint64, endpoint=True)
    for layer in layout.itertuples():          # padding bits past a layer's end are zero
        spare = layer.word_stop * 64 - (layer.word_start * 64 + layer.n_bits)
        if spare:
            bits[:, layer.word_stop - 1] &= np.uint64((1 << (64 - spare)) - 1)
    return MaskSet(bits, layout)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_assembly() -> str:
    """Assembly of the kernel, compiled afresh (numba does not keep the assembly of cached code)."""
    import numba

    from masklab.analysis import _numba_kernels, kernels

    fresh = numba.njit(parallel=True, nogil=True)(_numba_kernels.intersect_blocks.py_func)
    cached, _numba_kernels.intersect_blocks = _numba_kernels.intersect_blocks, fresh
    try:
        kernels.intersection_counts(np.zeros((8, 64), np.uint64), None, np.array([[0, 64]]), backend="numba")
    finally:
        _numba_kernels.intersect_blocks = cached
    return fresh.inspect_asm(fresh.signatures[0])


def report_simd(flags: set[str]) -> None:
    try:
        assembly = kernel_assembly().lower()
    except Exception as error:  # noqa: BLE001 - a report, never a failure
        print(f"assembly: could not inspect ({error})")
        return
    has_vpopcntq = "vpopcntq" in assembly
    print(f"CPU: AVX-512 VPOPCNTDQ {'yes' if 'avx512_vpopcntdq' in flags else 'no'}, "
          f"AVX2 {'yes' if 'avx2' in flags else 'no'}")
    print(f"kernel assembly: VPOPCNTQ {'present' if has_vpopcntq else 'absent'}; "
          f"VPSHUFB nibble popcount {'present' if 'vpshufb' in assembly else 'absent'}; "
          f"scalar POPCNT {'present' if 'popcnt' in assembly.replace('vpopcnt', '') else 'absent'}")


def gbit_pairs(pairs: float, n_bits: int, seconds: float) -> float:
    return pairs * n_bits / seconds / 1e9


def scipy_timer(masks: MaskSet, n_subset: int):
    """A function timing scipy pdist(hamming) on the bools of the first `n_subset` masks."""
    from scipy.spatial.distance import pdist

    bools = np.stack([masks.unpack(int(i)) for i in masks.ids[:n_subset]])
    pdist(bools[:3], "hamming")                     # warm-up: first-call set-up is not per-pair cost

    def run() -> float:
        t0 = time.perf_counter()
        pdist(bools, "hamming")
        return time.perf_counter() - t0

    return run


def faiss_timer(masks: MaskSet, n_subset: int, threads: int):
    """A function timing faiss.hammings over the n_subset x n_subset square of packed codes, or None."""
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(threads)
    codes = np.ascontiguousarray(masks.bits[:n_subset]).view(np.uint8)   # the same packed bytes
    out = np.empty((n_subset, n_subset), dtype=np.int32)
    pointer = faiss.swig_ptr(codes)
    faiss.hammings(pointer, pointer, 4, 4, codes.shape[1], faiss.swig_ptr(out))   # warm-up (threads)

    def run() -> float:
        t0 = time.perf_counter()
        faiss.hammings(pointer, pointer, n_subset, n_subset, codes.shape[1], faiss.swig_ptr(out))
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scipy-masks", type=int, default=40)
    parser.add_argument("--faiss-masks", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="200 masks, 2 rounds, small subsets")
    args, _ = parser.parse_known_args()
    if args.quick:
        args.masks, args.rounds = min(args.masks, 200), min(args.rounds, 2)
        args.scipy_masks, args.faiss_masks = min(args.scipy_masks, 12), min(args.faiss_masks, 100)
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    flags = cpu_flags()
    report_simd(flags)

    rss_start = max_rss_mib()
    masks = random_masks(args.masks)
    n, n_bits, n_layers = len(masks), masks.n_bits, len(masks.layers)
    pairs = n * (n - 1) / 2
    rss_data = max_rss_mib()
    t0 = time.perf_counter()
    intersections(masks.subset(masks.ids[:8]), per_layer=True, threads=args.threads)
    print(f"{n} masks x {n_bits:,} bits ({n_layers} layers), {pairs:,.0f} pairs, {args.threads} threads "
          f"({numba.threading_layer()}); kernel load/compile {time.perf_counter() - t0:.2f} s")

    # peak memory of one per-layer pass (first, so that nothing else has raised the high-water mark)
    tracemalloc.start()
    result = intersections(masks, per_layer=True, threads=args.threads)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rss_pass = max_rss_mib()
    packed_mib, result_mib = masks.bits.nbytes / 2**20, result.counts.nbytes / 2**20
    del result

    scipy_subset, faiss_subset = min(args.scipy_masks, n), min(args.faiss_masks, n)
    time_scipy, time_faiss = scipy_timer(masks, scipy_subset), faiss_timer(masks, faiss_subset, args.threads)
    whole, per_layer, scipy_times, faiss_times = [], [], [], []
    for _ in range(args.rounds):                   # interleaved, so that load from elsewhere hits all alike
        t0 = time.perf_counter()
        intersections(masks, per_layer=False, threads=args.threads)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        intersections(masks, per_layer=True, threads=args.threads)
        per_layer.append(time.perf_counter() - t0)
        scipy_times.append(time_scipy())
        if time_faiss is not None:
            faiss_times.append(time_faiss())
    t_whole, t_layers = min(whole), min(per_layer)
    ours = gbit_pairs(pairs, n_bits, t_whole)
    print(f"masklab whole mask : {t_whole:8.3f} s  {ours:7.1f} Gbit-pairs/s  "
          f"(median {statistics.median(whole):.3f} s)")
    print(f"masklab per layer  : {t_layers:8.3f} s  {gbit_pairs(pairs, n_bits, t_layers):7.1f} Gbit-pairs/s  "
          f"-> per-layer / whole = {t_layers / t_whole:.3f}x (target < 1.3x)")

    subset, t_scipy = scipy_subset, min(scipy_times)
    subset_pairs = subset * (subset - 1) / 2
    scipy_all = t_scipy * pairs / subset_pairs
    scipy_rate = gbit_pairs(subset_pairs, n_bits, t_scipy)
    print(f"scipy pdist hamming: {t_scipy:8.3f} s for {subset} masks ({subset_pairs:.0f} pairs), scaled "
          f"by the pair count to {scipy_all:,.0f} s; {scipy_rate:7.2f} Gbit-pairs/s "
          f"-> masklab {scipy_all / t_whole:,.0f}x faster (target >= 150x)")

    subset = faiss_subset
    if time_faiss is None:
        print("faiss-cpu is not installed (pip install faiss-cpu): faiss comparison skipped")
    else:
        t_faiss = min(faiss_times)
        faiss_rate = gbit_pairs(subset * subset, n_bits, t_faiss)
        faiss_all = t_faiss * (n / subset) ** 2
        print(f"faiss hammings     : {t_faiss:8.3f} s for the {subset} x {subset} square, {faiss_rate:7.1f} "
              f"Gbit-pairs/s; all pairs of {n} (full square, scaled) {faiss_all:.1f} s")
        print(f"  -> masklab per computed pair {ours / faiss_rate:.2f}x faster (target >= 3x); "
              f"for the whole task (faiss has no triangle-only call) {faiss_all / t_whole:.2f}x")

    print(f"memory: packed matrix {packed_mib:.0f} MiB + result (N x N x {n_layers + 1} int64) "
          f"{result_mib:.0f} MiB; max RSS {rss_start:.0f} MiB at start, {rss_data:.0f} MiB with the masks, "
          f"{rss_pass:.0f} MiB after the per-layer pass (+{rss_pass - rss_data:.0f} MiB over the masks); "
          f"numpy allocations in the pass peak at {traced_peak:.0f} MiB")


if __name__ == "__main__":
    main()
