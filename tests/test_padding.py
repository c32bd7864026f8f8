"""The one padding helper against torch's own ``pad_sequence`` (right) and its flipped form (left)."""

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from nemo_eagle.data.padding import pad_rows

ROWS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]


def test_right_padding_matches_pad_sequence():
    ids, mask = pad_rows(ROWS, 0, side="right")
    want = pad_sequence([torch.tensor(r) for r in ROWS], batch_first=True, padding_value=0)
    assert torch.equal(ids, want)
    assert torch.equal(mask, (pad_sequence([torch.ones(len(r)) for r in ROWS], batch_first=True) > 0).long())


def test_left_padding_is_right_padding_of_reversed_rows_reversed_back():
    ids, mask = pad_rows([torch.tensor(r) for r in ROWS], -1, side="left")
    want = pad_sequence([torch.tensor(r[::-1]) for r in ROWS], batch_first=True, padding_value=-1).flip(1)
    assert torch.equal(ids, want)
    assert mask.sum(1).tolist() == [len(r) for r in ROWS] and mask[:, -1].all()


def test_multiple_of_rounds_the_length_up():
    ids, mask = pad_rows(ROWS, 0, multiple_of=8)
    assert ids.shape == (3, 8) and mask[:, 5:].sum() == 0


def test_bad_side_is_named():
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        pad_rows(ROWS, 0, side="middle")
