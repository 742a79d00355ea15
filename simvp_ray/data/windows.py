"""The window index: which start steps give a whole (input, target) window inside a split.

A window starting at step s covers steps s + offsets, with offsets = frame_step * (0 .. T_in +
T_out - 1) by default, or an explicit list (OpenSTL's multi-variable WeatherBench index lists).
It is valid when every covered step lies in the split and is marked valid, so no window crosses
a gap; the steps skipped between frames (frame_step > 1) are not looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset


def window_offsets(in_frames: int, out_frames: int, frame_step: int = 1,
                   offsets: Sequence[int] | None = None) -> np.ndarray:
    """Step offsets of a window's frames, relative to its start: (in_frames + out_frames,)."""
    if in_frames < 1 or out_frames < 0:
        raise DatasetError(f"in_frames={in_frames}, out_frames={out_frames}: need >= 1 and >= 0")
    if offsets is None:
        if frame_step < 1:
            raise DatasetError(f"frame_step={frame_step}: must be >= 1")
        return frame_step * np.arange(in_frames + out_frames, dtype=np.int64)
    result = np.asarray(offsets, dtype=np.int64)
    result = result - result[0]
    if len(result) != in_frames + out_frames or np.any(np.diff(result) <= 0):
        raise DatasetError(f"offsets {list(offsets)}: need {in_frames + out_frames} increasing "
                           "values (input then target frames)")
    return result


def window_starts(dataset: Dataset, split: str, in_frames: int, out_frames: int,
                  frame_step: int = 1, stride: int = 1,
                  offsets: Sequence[int] | None = None) -> np.ndarray:
    """Sorted int64 start steps of every valid window inside split, every stride-th start."""
    if stride < 1:
        raise DatasetError(f"stride={stride}: must be >= 1")
    start, stop = dataset.split_range(split)
    steps = window_offsets(in_frames, out_frames, frame_step, offsets)
    extent = int(steps[-1]) + 1
    n_candidates = stop - start - extent + 1
    if n_candidates <= 0:
        return np.zeros(0, dtype=np.int64)
    valid = dataset.valid[start:stop]
    ok = np.ones(n_candidates, dtype=bool)
    for offset in steps:
        ok &= valid[offset : offset + n_candidates]
    starts = start + np.flatnonzero(ok)
    return starts[(starts - start) % stride == 0] if stride > 1 else starts


def input_and_lead_steps(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """Input step offsets (T_in,) from the window start, and lead steps (T_out,) after the
    init time (the last input frame), of a RunConfig's model and data sections."""
    model, data = config.model, config.data
    steps = window_offsets(model.in_frames, model.out_frames, data.frame_step,
                           list(data.frame_offsets) or None)
    inputs = steps[:model.in_frames]
    return inputs, steps[model.in_frames:] - inputs[-1]
