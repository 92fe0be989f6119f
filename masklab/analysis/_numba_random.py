"""Numba kernel of `masklab.analysis.random_sets.random_masks`: bring random rows to their exact counts.

Imported lazily; ``cache=True`` keeps the compiled code on disk (`python -m masklab.warm` fills it).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def flip_to_counts(words, rows, excess, candidates):
    """For each row ``rows[i]`` of the packed `words` (R, W uint64), walk through its candidate positions
    ``candidates[i]`` in order and flip each one that is in the state to remove (1 when ``excess[i] > 0``,
    0 when below), until ``|excess[i]|`` bits are flipped or the candidates run out. The same bits as
    `random_sets._flip_some`'s numpy code chooses from the same candidates (a position drawn again after its
    flip is in the other state, so it is skipped, as a repeat is there)."""
    one = np.uint64(1)
    for i in range(rows.shape[0]):
        r = rows[i]
        need = excess[i]
        j = 0
        while need != 0 and j < candidates.shape[1]:
            position = candidates[i, j]
            j += 1
            word = position >> 6
            bit = one << np.uint64(position & 63)
            is_set = (words[r, word] & bit) != 0
            if (need > 0 and is_set) or (need < 0 and not is_set):
                words[r, word] ^= bit
                need += -1 if need > 0 else 1
