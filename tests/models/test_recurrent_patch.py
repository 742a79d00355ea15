"""OpenSTL's patch layout: pixel (p*a + i, p*b + j), channel c -> patch channel (i*p + j)*C + c."""

import pytest
import torch

from simvp_ray.models.recurrent.patch import reshape_patch, reshape_patch_back


def test_patch_channel_layout_and_inverse():
    frames = torch.randn(2, 3, 2, 8, 12)
    patches = reshape_patch(frames, 4)
    assert patches.shape == (2, 3, 2, 3, 32)
    for a, b, i, j, c in [(1, 2, 3, 1, 1), (0, 0, 0, 0, 0), (1, 0, 2, 3, 0)]:
        assert patches[1, 2, a, b, (i * 4 + j) * 2 + c] == frames[1, 2, c, 4 * a + i, 4 * b + j]
    assert torch.equal(reshape_patch_back(patches, 4), frames)


def test_patch_size_must_divide_the_frame():
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        reshape_patch(torch.zeros(1, 1, 1, 6, 8), 4)
