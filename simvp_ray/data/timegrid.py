"""Place possibly gappy, sorted time stamps on a regular grid: missing steps become gaps."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from simvp_ray.data.schema import DatasetError

# a --time-step value: a count and a unit (`1h`, `30min`, `6h`, `1d`, `90s`)
STEP_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}


def infer_step(times: np.ndarray) -> np.timedelta64 | np.integer:
    """The smallest positive difference between consecutive stamps (the regular step)."""
    diffs = np.diff(times)
    diffs = diffs[diffs > diffs.dtype.type(0)]  # repeats are reported later, by regular_grid
    if len(diffs) == 0:
        return np.timedelta64(1, "s") if np.issubdtype(times.dtype, np.datetime64) else np.int64(1)
    return diffs.min()


def parse_step(text: str | int | np.timedelta64, numeric: bool) -> np.timedelta64 | np.integer:
    """A grid step: '1h', '30min', '6h', '1d', '90s' for a datetime axis, a count for a numeric
    one (a number or timedelta64 passes through)."""
    if isinstance(text, np.timedelta64):
        step = text.astype("timedelta64[s]")
    elif numeric or isinstance(text, int | np.integer):
        if not str(text).strip().isdigit():
            raise DatasetError(f"time step {text!r}: expected a positive whole number of steps "
                               "(the time axis is numeric)")
        step = np.int64(int(text))
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(s|min|h|d)\s*", str(text))
        if match is None:
            raise DatasetError(f"time step {text!r}: expected a count and a unit, one of "
                               f"{list(STEP_UNITS)} (e.g. 1h, 30min, 6h, 1d)")
        step = np.timedelta64(int(match[1]) * STEP_UNITS[match[2]], "s")
    if step <= step.dtype.type(0):
        raise DatasetError(f"time step {text!r}: must be positive")
    return step


def format_step(step: np.timedelta64 | np.integer) -> str:
    """A step as --time-step writes it ('7h', '30min'); a count for a numeric axis."""
    if not isinstance(step, np.timedelta64):
        return str(int(step))
    seconds = int(step / np.timedelta64(1, "s"))
    unit = next(u for u in ("d", "h", "min", "s") if seconds % STEP_UNITS[u] == 0)
    return f"{seconds // STEP_UNITS[unit]}{unit}"


def coarsest_step(times: np.ndarray) -> np.timedelta64 | np.integer:
    """The largest step every stamp falls on (the GCD of the offsets from the first one)."""
    offsets = (times - times[0]).astype(np.int64)
    gcd = int(np.gcd.reduce(offsets)) if len(offsets) > 1 else 0
    gcd = max(gcd, 1)
    return np.timedelta64(gcd, "s") if np.issubdtype(times.dtype, np.datetime64) else np.int64(gcd)


def check_increasing(times: np.ndarray, locate: Callable[[int], str]) -> None:
    """DatasetError naming the first stamp that repeats or goes back (locate(i): where it is)."""
    diffs = np.diff(times)
    bad = np.flatnonzero(diffs <= diffs.dtype.type(0)) if len(diffs) else []
    if len(bad):
        i = int(bad[0]) + 1
        raise DatasetError(f"{locate(i)} ({times[i]}) repeats or goes back in time")


def regular_grid(times: np.ndarray, step: np.timedelta64 | np.integer, where: str,
                 locate: Callable[[int], str] | None = None,
                 hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(grid, positions): a regular grid from the first to the last stamp and each stamp's
    index on it. Stamps must increase strictly and fall on the grid.

    locate(i) names stamp i in errors (default '<where>: time index i'); hint ends the
    off-grid error (what the caller can do about it)."""
    times = np.asarray(times)
    locate = locate or (lambda i: f"{where}: time index {i}")
    check_increasing(times, locate)
    offsets = times - times[0]
    positions = offsets // step
    off_grid = np.flatnonzero(offsets % step != offsets.dtype.type(0))
    if len(off_grid):
        i = int(off_grid[0])
        raise DatasetError(f"{locate(i)} ({times[i]}) is not on the {format_step(step)} grid "
                           f"starting at {times[0]}{hint}")
    positions = positions.astype(np.int64)
    grid = times[0] + step * np.arange(int(positions[-1]) + 1 if len(positions) else 0)
    return grid, positions
