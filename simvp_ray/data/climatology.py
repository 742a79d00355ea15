"""The climatology of a store: the per-channel, per-pixel mean over the valid training steps.

It is the climatology baseline of `jobs/evaluate.py` (the same map forecast at every lead time)
and the reference of the anomaly correlation (ACC). WeatherBench 2 uses a day-of-year (and
hour) climatology over 1990-2019; ours is the plain time mean of the store's training split,
which needs no calendar and works for every dataset (say so when comparing ACC numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simvp_ray.data.batches import channel_indices
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset

BLOCK_CHUNKS = 8  # chunks read at once: a few MiB per read, whole chunks only


def train_climatology(dataset: Dataset, channels: Sequence[str] | None = None) -> np.ndarray:
    """(C, H, W) float64 mean of the valid training frames, in physical units."""
    picked = channel_indices(dataset, channels)
    start, stop = dataset.split_range("train")
    shape = dataset.frames.shape[1:] if picked is None else (len(picked),
                                                              *dataset.frames.shape[2:])
    total, count = np.zeros(shape, np.float64), 0
    step = BLOCK_CHUNKS * dataset.chunk_frames
    for a in range(start - start % dataset.chunk_frames, stop, step):
        a, b = max(a, start), min(a + step, stop)
        keep = dataset.valid[a:b]
        if not keep.any():
            continue
        block = dataset.read_frames(a, b, picked)
        total += block[keep].sum(axis=0, dtype=np.float64)
        count += int(keep.sum())
    if count == 0:
        raise DatasetError(f"{dataset.url}: the training split [{start}, {stop}) has no valid "
                           "frame to compute the climatology on")
    return total / count
