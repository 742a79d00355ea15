"""Place possibly gappy, sorted time stamps on a regular grid: missing steps become gaps."""

from __future__ import annotations

import numpy as np

from simvp_ray.data.schema import DatasetError


def infer_step(times: np.ndarray) -> np.timedelta64 | np.integer:
    """The smallest positive difference between consecutive stamps (the regular step)."""
    diffs = np.diff(times)
    diffs = diffs[diffs > diffs.dtype.type(0)]  # repeats are reported later, by regular_grid
    if len(diffs) == 0:
        return np.timedelta64(1, "s") if np.issubdtype(times.dtype, np.datetime64) else np.int64(1)
    return diffs.min()


def regular_grid(times: np.ndarray, step: np.timedelta64 | np.integer,
                 where: str) -> tuple[np.ndarray, np.ndarray]:
    """(grid, positions): a regular grid from the first to the last stamp and each stamp's
    index on it. Stamps must increase strictly and fall on the grid."""
    times = np.asarray(times)
    diffs = np.diff(times)
    bad = np.flatnonzero(diffs <= diffs.dtype.type(0)) if len(diffs) else []
    if len(bad):
        i = int(bad[0]) + 1
        raise DatasetError(f"{where}: time index {i} ({times[i]}) repeats or goes back in time")
    offsets = times - times[0]
    positions = offsets // step
    off_grid = np.flatnonzero(offsets % step != offsets.dtype.type(0))
    if len(off_grid):
        i = int(off_grid[0])
        raise DatasetError(f"{where}: time index {i} ({times[i]}) is not on the {step} grid "
                           f"starting at {times[0]}")
    positions = positions.astype(np.int64)
    grid = times[0] + step * np.arange(int(positions[-1]) + 1 if len(positions) else 0)
    return grid, positions
