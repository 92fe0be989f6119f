"""MaskSet: the packed N x W matrix; its errors are the project's own (UserError: one line, exit 2)."""

import numpy as np
import pytest

from masklab.errors import UserError
from masklab.store.bits import MaskSet, pack, unpack_words


def test_pack_is_lsb_first_and_pads_with_zeros():
    words = pack(np.array([1, 0, 1] + [0] * 61 + [1], dtype=bool))
    assert words.tolist() == [0b101, 1] and unpack_words(words, 65).tolist()[:3] == [True, False, True]


def test_lookups_and_bad_shapes_raise_user_errors():
    masks = MaskSet.from_bool(np.eye(3, 70, dtype=bool), [60, 10], ["a", "b"], ids=[5, 6, 7])
    assert masks.unpack(6, "b").shape == (10,) and masks.unpack(6).sum() == 1
    for bad in (lambda: masks.unpack(99), lambda: masks.unpack(5, "c"), lambda: masks.subset([5, 8]),
                lambda: MaskSet.from_bool(np.ones((2, 5), bool), [2, 2]),
                lambda: MaskSet(np.zeros((2, 3), np.int64), masks.layers),
                lambda: MaskSet(np.zeros((2, 3), np.uint64), masks.layers)):
        with pytest.raises(UserError):
            bad()
