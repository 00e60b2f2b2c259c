"""ES2D: the four interleaved sub-grid sequences of a token grid, and back."""

import pytest
import torch

from model.network.es2d import es2d_merge, es2d_split


@pytest.mark.parametrize("height,width", [(14, 14), (16, 16), (25, 25), (7, 10)])
def test_es2d_split_and_merge_are_inverse(height, width):
    grid = torch.randn(2, height, width, 3, generator=torch.Generator().manual_seed(height * 100 + width))
    sequences, size = es2d_split(grid)
    assert sequences.shape[0] == 8
    torch.testing.assert_close(es2d_merge(sequences, size), grid)


def test_es2d_sub_grids_are_interleaved_and_two_are_transposed():
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    sequences, _ = es2d_split(grid)
    assert sequences[0, :, 0].tolist() == [0, 2, 8, 10]  # rows 0,2 x cols 0,2, row-major
    assert sequences[2, :, 0].tolist() == [1, 9, 3, 11]  # rows 0,2 x cols 1,3, column-major
