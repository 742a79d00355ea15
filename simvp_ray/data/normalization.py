"""Per-channel normalisation: statistics fitted on the training split, applied on read.

Both kinds reduce to `(x - offset) / scale` per channel: zscore (offset = mean, scale = std)
and minmax (offset = min, scale = max - min: the training range maps to [0, 1], as in OpenSTL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simvp_ray.data.schema import NORMALIZATION_KINDS, DatasetError


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics of one store; arrays are per channel, shape (C,)."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray
    fitted_on: str  # "train" or "fixed" (a documented constant such as MNIST's 0..255)

    @property
    def min(self) -> np.ndarray:
        return self.offset

    @property
    def max(self) -> np.ndarray:
        return self.offset + self.scale

    def select(self, channels: Sequence[int] | np.ndarray) -> Stats:
        """The statistics of the channels at these indices, in this order (repeats allowed)."""
        return Stats(self.kind, self.offset[channels], self.scale[channels], self.fitted_on)

    def to_attrs(self) -> dict[str, Any]:
        if self.kind == "zscore":
            values = {"mean": self.offset.tolist(), "std": self.scale.tolist()}
        else:
            values = {"min": self.min.tolist(), "max": self.max.tolist()}
        return {"kind": self.kind, "fitted_on": self.fitted_on, **values}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Stats:
        kind = attrs["kind"]
        if kind == "zscore":
            offset, scale = np.asarray(attrs["mean"]), np.asarray(attrs["std"])
        elif kind == "minmax":
            offset = np.asarray(attrs["min"])
            scale = np.asarray(attrs["max"]) - offset
        else:
            raise DatasetError(f"normalization kind {kind!r}; valid: {list(NORMALIZATION_KINDS)}")
        return cls(kind, offset.astype(np.float64), scale.astype(np.float64), attrs["fitted_on"])


def minmax_stats(minimum: Iterable[float], maximum: Iterable[float], fitted_on: str) -> Stats:
    """Min-max statistics from given bounds (x -> (x - min) / (max - min))."""
    low, high = np.asarray(list(minimum), np.float64), np.asarray(list(maximum), np.float64)
    return Stats("minmax", low, high - low, fitted_on)


def _broadcast(values: np.ndarray, ndim: int) -> np.ndarray:
    # channel axis is -3 of (..., C, H, W)
    return values.reshape((-1, 1, 1)) if ndim >= 3 else values


def normalize(x: np.ndarray, stats: Stats) -> np.ndarray:
    """Physical units -> model units, float32; x is (..., C, H, W); stats or a Dataset."""
    stats = getattr(stats, "stats", stats)
    offset = _broadcast(stats.offset, x.ndim).astype(np.float32)
    scale = _broadcast(stats.scale, x.ndim).astype(np.float32)
    return ((x - offset) / scale).astype(np.float32, copy=False)


def denormalize(x: np.ndarray, stats: Stats) -> np.ndarray:
    """Model units -> physical units, float32; x is (..., C, H, W); stats or a Dataset."""
    stats = getattr(stats, "stats", stats)
    offset = _broadcast(stats.offset, x.ndim).astype(np.float32)
    scale = _broadcast(stats.scale, x.ndim).astype(np.float32)
    return (x * scale + offset).astype(np.float32, copy=False)


class StatsAccumulator:
    """Streams frame blocks (n, C, H, W) into per-channel mean/std (Chan's merge) and min/max."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.low = np.full(channels, np.inf)
        self.high = np.full(channels, -np.inf)

    def add(self, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        values = block.astype(np.float64).transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        n = values.shape[1]
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total
        self.low = np.minimum(self.low, values.min(axis=1))
        self.high = np.maximum(self.high, values.max(axis=1))

    def stats(self, kind: str, pooled_channels: bool = False) -> Stats:
        """zscore or minmax statistics; pooled_channels uses one value for all channels."""
        if self.count == 0:
            raise DatasetError("the training split has no valid frame to fit statistics on")
        if kind == "zscore":
            std = np.sqrt(self.m2 / self.count)
            if pooled_channels:
                raise DatasetError("pooled statistics are only defined for minmax")
            return Stats("zscore", self.mean.copy(), np.where(std > 0, std, 1.0), "train")
        if kind == "minmax":
            low, high = self.low, self.high
            if pooled_channels:
                low = np.full_like(low, low.min())
                high = np.full_like(high, high.max())
            return Stats("minmax", low.copy(), np.where(high > low, high - low, 1.0), "train")
        raise DatasetError(f"normalization kind {kind!r}; valid: {list(NORMALIZATION_KINDS)}")
