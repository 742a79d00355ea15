"""Space-to-depth patching of frame sequences, as OpenSTL's `reshape_patch` lays it out.

(B, T, C, H, W) frames <-> (B, T, H/p, W/p, p*p*C) patches: the patch channel of pixel
(row p*a + i, column p*b + j), channel c is (i*p + j)*C + c (spec/rnn.md section 1.1).
"""

from __future__ import annotations

import torch


def reshape_patch(frames: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, T, H/p, W/p, p*p*C), channels last."""
    b, t, c, h, w = frames.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"frame size {h}x{w} is not divisible by patch_size={p}")
    x = frames.reshape(b, t, c, h // p, p, w // p, p)  # (B, T, C, H/p, i, W/p, j)
    return x.permute(0, 1, 3, 5, 4, 6, 2).reshape(b, t, h // p, w // p, p * p * c)


def reshape_patch_back(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, T, H/p, W/p, p*p*C) -> (B, T, C, H, W): the exact inverse of `reshape_patch`."""
    b, t, hp, wp, pc = patches.shape
    p = patch_size
    c = pc // (p * p)
    x = patches.reshape(b, t, hp, wp, p, p, c)  # (B, T, H/p, W/p, i, j, C)
    return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, t, c, hp * p, wp * p)
