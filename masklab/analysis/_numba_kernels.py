"""Numba kernel: AND-popcount intersections of packed masks, all pairs, per layer, in one pass.

Own kernel because the libraries that compute all-pairs Hamming distances are far slower on packed masks,
measured by `bench/bench_distances.py` (1,000 Conv-4-sized masks, README "Benchmarks"): 1,109x scipy's
``pdist(bools, "hamming")`` (which scikit-learn's pairwise Hamming also runs) and 13.9x faiss-cpu's ``hammings``
per computed pair.

Imported lazily (by `masklab.analysis.kernels`) so that `import masklab` never pays for numba.

The kernel sees both matrices through raw addresses (`carray` over an integer address), so every input
(a writable array, a read-only memory map, a block of rows of either) uses the same single compiled
specialisation, which `cache=True` keeps on disk.

Blocking, from the outside in:

- *cache chunks* (serial): groups of word segments small enough that the rows of both blocks fit in the
  shared last-level cache; every chunk is a parallel pass;
- *macro tiles* (parallel, ``prange``): `macro_rows` rows of A against `macro_rows` rows of B; the segment
  words of those rows stay in L2 while the tile's micro tiles sweep them;
- *micro tiles*: 4 rows of A against 4 rows of B over one segment (a word range inside one layer); each
  loaded word is used four times and the 16 sums stay in registers (or L1). LLVM vectorises the word
  loop: on AVX2 with a nibble-lookup popcount (VPSHUFB + VPSADBW, checked); on CPUs with AVX-512
  VPOPCNTDQ `llvm.ctpop` becomes VPOPCNTQ (`bench/bench_distances.py` prints which one it got).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, word):
    """`llvm.ctpop.i64` on a uint64, returned as int64."""
    if not (isinstance(word, types.Integer) and word.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        llvm_type = context.get_value_type(types.int64)
        fn = cgutils.get_or_insert_function(
            builder.module, cgutils.ir.FunctionType(llvm_type, [llvm_type]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.int64(word), codegen


@intrinsic
def _as_word_pointer(typingctx, address):
    """An int64 address as a `uint64*` (the caller keeps the array alive)."""
    if not isinstance(address, types.Integer):
        return None
    pointer_type = types.CPointer(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address), codegen


@njit(inline="always")
def _micro_tile(a, b, i, j, w_start, w_stop, out, layer, out_i, out_j):
    """Add the 4 x 4 intersections of rows i..i+3 of `a` and j..j+3 of `b` over one word range.

    Rows past the end are clamped for reading (duplicates); their sums land in the padding of `out`.
    """
    last_a = a.shape[0] - 1
    last_b = b.shape[0] - 1
    i1 = min(i + 1, last_a)
    i2 = min(i + 2, last_a)
    i3 = min(i + 3, last_a)
    j1 = min(j + 1, last_b)
    j2 = min(j + 2, last_b)
    j3 = min(j + 3, last_b)
    s00 = s01 = s02 = s03 = 0
    s10 = s11 = s12 = s13 = 0
    s20 = s21 = s22 = s23 = 0
    s30 = s31 = s32 = s33 = 0
    # unsigned word index: no negative-index wrap-around, so the loads stay contiguous and vectorise
    for w in range(np.uint64(w_start), np.uint64(w_stop)):
        x0 = a[i, w]
        x1 = a[i1, w]
        x2 = a[i2, w]
        x3 = a[i3, w]
        y0 = b[j, w]
        y1 = b[j1, w]
        y2 = b[j2, w]
        y3 = b[j3, w]
        s00 += _popcount(x0 & y0)
        s01 += _popcount(x0 & y1)
        s02 += _popcount(x0 & y2)
        s03 += _popcount(x0 & y3)
        s10 += _popcount(x1 & y0)
        s11 += _popcount(x1 & y1)
        s12 += _popcount(x1 & y2)
        s13 += _popcount(x1 & y3)
        s20 += _popcount(x2 & y0)
        s21 += _popcount(x2 & y1)
        s22 += _popcount(x2 & y2)
        s23 += _popcount(x2 & y3)
        s30 += _popcount(x3 & y0)
        s31 += _popcount(x3 & y1)
        s32 += _popcount(x3 & y2)
        s33 += _popcount(x3 & y3)
    r = out_i + i
    c = out_j + j
    out[layer, r, c] += s00
    out[layer, r, c + 1] += s01
    out[layer, r, c + 2] += s02
    out[layer, r, c + 3] += s03
    out[layer, r + 1, c] += s10
    out[layer, r + 1, c + 1] += s11
    out[layer, r + 1, c + 2] += s12
    out[layer, r + 1, c + 3] += s13
    out[layer, r + 2, c] += s20
    out[layer, r + 2, c + 1] += s21
    out[layer, r + 2, c + 2] += s22
    out[layer, r + 2, c + 3] += s23
    out[layer, r + 3, c] += s30
    out[layer, r + 3, c + 1] += s31
    out[layer, r + 3, c + 2] += s32
    out[layer, r + 3, c + 3] += s33


@njit(parallel=True, cache=True, nogil=True)
def intersect_blocks(a_address, a_rows, a_row_words, b_address, b_rows, b_row_words,
                     tile_i, tile_j, macro_rows, symmetric,
                     chunk_segments, segment_start, segment_stop, segment_layer,
                     out, out_i, out_j):
    """Accumulate |a_r AND b_q| per layer into ``out[layer, out_i + r, out_j + q]``.

    Parameters
    ----------
    a_address, b_address : int
        Addresses of two row-major uint64 matrices of `a_rows` x `a_row_words` (row stride in words)
        and `b_rows` x `b_row_words`.
    tile_i, tile_j : int64 arrays
        First row in A and in B of each macro tile of `macro_rows` x `macro_rows` rows (multiples of 4).
    symmetric : bool
        A and B are the same rows: only micro tiles on or above the diagonal are computed.
    chunk_segments : int64 array
        Segments ``chunk_segments[k]:chunk_segments[k + 1]`` form cache chunk k.
    segment_start, segment_stop, segment_layer : int64 arrays
        Word range and output layer of each segment.
    out : int64 array (layers, rows, cols)
        Padded to a multiple of 4 past the last row and column written.
    """
    a = carray(_as_word_pointer(a_address), (a_rows, a_row_words))
    b = carray(_as_word_pointer(b_address), (b_rows, b_row_words))
    n_tiles = tile_i.shape[0]
    for chunk in range(chunk_segments.shape[0] - 1):
        first_segment = chunk_segments[chunk]
        last_segment = chunk_segments[chunk + 1]
        for t in prange(n_tiles):
            i_start = tile_i[t]
            j_start = tile_j[t]
            i_stop = min(i_start + macro_rows, a_rows)
            j_stop = min(j_start + macro_rows, b_rows)
            for s in range(first_segment, last_segment):
                w_start = segment_start[s]
                w_stop = segment_stop[s]
                layer = segment_layer[s]
                for i in range(i_start, i_stop, 4):
                    j_first = max(j_start, i) if symmetric else j_start
                    for j in range(j_first, j_stop, 4):
                        _micro_tile(a, b, i, j, w_start, w_stop, out, layer, out_i, out_j)
