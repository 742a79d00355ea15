"""Climatologies and period statistics of a store, read once in whole chunks (numpy only).

`train_climatology`: the per-channel, per-pixel mean over the valid training steps (one map for
every lead time). `day_of_year_climatology`: WeatherBench 2's climatology (its
`compute_climatology.py`: per hour of day, per day of year, a 61-day window with linearly
decaying weights, day 366 of other years filled from day 365) fitted on the training split
instead of WB2's 1990-2019; it needs a calendar time axis and at least a year of training
data. Both serve as the climatology baseline and ACC reference of `jobs/evaluate.py`.
`split_stats`: the z-score statistics of one split (OpenSTL's per-period normalisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from simvp_ray.data.batches import channel_indices
from simvp_ray.data.normalization import Stats, StatsAccumulator
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset

BLOCK_CHUNKS = 8  # chunks read at once: a few MiB per read, whole chunks only
WINDOW_DAYS = 61  # WB2 compute_climatology's --window_size default
DAY_S = 86_400
YEAR_S = 365 * DAY_S  # the least training span a day-of-year climatology is fitted on
CLIMATOLOGIES = ("auto", "day_of_year", "train_mean")


def _valid_blocks(dataset: Dataset, split: str, picked: list[int] | None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(step indices, frames (n, C, H, W)) of the valid steps of `split`, block by block."""
    start, stop = dataset.split_range(split)
    step = BLOCK_CHUNKS * dataset.chunk_frames
    for a in range(start - start % dataset.chunk_frames, stop, step):
        a, b = max(a, start), min(a + step, stop)
        keep = dataset.valid[a:b]
        if not keep.any():
            continue
        block = dataset.read_frames(a, b, picked)
        yield np.arange(a, b)[keep], block[keep]


def _no_valid_frame(dataset: Dataset, split: str, what: str) -> DatasetError:
    start, stop = dataset.split_range(split)
    return DatasetError(f"{dataset.url}: the {split} split [{start}, {stop}) has no valid frame "
                        f"to compute {what} on")


def train_climatology(dataset: Dataset, channels: Sequence[str] | None = None) -> np.ndarray:
    """(C, H, W) float64 mean of the valid training frames, in physical units."""
    picked = channel_indices(dataset, channels)
    total, count = 0.0, 0
    for _, block in _valid_blocks(dataset, "train", picked):
        total = total + block.sum(axis=0, dtype=np.float64)
        count += len(block)
    if count == 0:
        raise _no_valid_frame(dataset, "train", "the climatology")
    return total / count


def split_stats(dataset: Dataset, split: str, channels: Sequence[str] | None = None) -> Stats:
    """Per-channel z-score statistics of the valid frames of `split` (population std)."""
    picked = channel_indices(dataset, channels)
    accumulator = StatsAccumulator(len(picked) if picked is not None else len(dataset.channels))
    for _, block in _valid_blocks(dataset, split, picked):
        accumulator.add(block)
    if accumulator.count == 0:
        raise _no_valid_frame(dataset, split, "statistics")
    return dataclasses.replace(accumulator.stats("zscore"), fitted_on=split)


def _calendar(times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """datetime64 -> (day of year 1..366, hour of day, leap year) as int / bool arrays."""
    days = times.astype("datetime64[D]")
    years = times.astype("datetime64[Y]")
    doy = (days - years.astype("datetime64[D]")).astype(np.int64) + 1
    hour = (times.astype("datetime64[h]") - days).astype(np.int64)
    year = years.astype(np.int64) + 1970
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    return doy, hour, leap


def train_span_s(dataset: Dataset) -> int | None:
    """Seconds the training split's valid steps cover (last - first + one step); None without a
    calendar time axis."""
    unit = dataset.attrs["time_unit"]
    if unit != "s" or not np.issubdtype(dataset.time.dtype, np.datetime64):
        return None
    start, stop = dataset.split_range("train")
    steps = np.flatnonzero(dataset.valid[start:stop])
    if len(steps) == 0:
        return 0
    first, last = dataset.time[start + steps[0]], dataset.time[start + steps[-1]]
    span = (last - first).astype("timedelta64[s]").astype(np.int64)
    return int(span) + int(dataset.attrs["time_step"])


def resolve_climatology(dataset: Dataset, requested: str) -> tuple[str, str]:
    """`auto` / `day_of_year` / `train_mean` -> (the kind used, why); a ValueError when the
    data cannot support the request (no calendar, or under a year of training data)."""
    if requested not in CLIMATOLOGIES:
        raise ValueError(f"climatology {requested!r}; valid: {list(CLIMATOLOGIES)}")
    if requested == "train_mean":
        return "train_mean", "asked for"
    span = train_span_s(dataset)
    if span is None:
        unit = dataset.attrs["time_unit"]
        why = f"{dataset.url} has no calendar time axis (time_unit {unit!r})"
    elif span < YEAR_S:
        why = (f"{dataset.url}: the training split covers {span / DAY_S:.1f} days, under the "
               "365 a day-of-year climatology needs")
    else:
        return "day_of_year", f"the training split covers {span / DAY_S:.0f} days"
    if requested == "day_of_year":
        raise ValueError(f"cannot fit a day-of-year climatology: {why}; use --climatology "
                         "train_mean (or auto)")
    return "train_mean", why


@dataclass(frozen=True)
class DayOfYearClimatology:
    """table[k, d - 1] is the climatology (C, H, W, physical units) of hour hours[k] and day of
    year d; `hours` is (-1,) for daily or coarser data (no hour of day)."""

    hours: np.ndarray  # (K,) int
    table: np.ndarray  # (K, 366, C, H, W) float64
    window_days: int

    def rows(self, times: np.ndarray) -> np.ndarray:
        """Flat row indices into table.reshape(K * 366, C, H, W) for datetime64 `times`."""
        doy, hour, _ = _calendar(np.asarray(times))
        if self.hours[0] == -1:
            return doy - 1
        slot = np.searchsorted(self.hours, hour).clip(0, len(self.hours) - 1)
        missing = self.hours[slot] != hour
        if missing.any():
            raise ValueError(f"no climatology for hour {int(hour[missing][0])} of day: the "
                             f"training data has hours {self.hours.tolist()}")
        return slot * 366 + doy - 1


def day_of_year_climatology(dataset: Dataset, channels: Sequence[str] | None = None,
                            window_days: int = WINDOW_DAYS) -> DayOfYearClimatology:
    """WB2's day-of-year (and hour-of-day, for sub-daily data) climatology of the training split;
    see the module docstring. A ValueError when the split spans under a year."""
    resolve_climatology(dataset, "day_of_year")  # raises, naming why, under a year of data
    if window_days < 1 or window_days % 2 == 0:
        raise ValueError(f"window_days must be odd and >= 1, got {window_days}")
    picked = channel_indices(dataset, channels)
    start, stop = dataset.split_range("train")
    steps = start + np.flatnonzero(dataset.valid[start:stop])
    _, hours_all, _ = _calendar(dataset.time[steps])
    sub_daily = int(dataset.attrs["time_step"]) < DAY_S
    hours = np.unique(hours_all) if sub_daily else np.array([-1])
    sums = counts = None
    for index, block in _valid_blocks(dataset, "train", picked):
        doy, hour, leap = _calendar(dataset.time[index])
        slot = np.zeros_like(doy) if hours[0] == -1 else np.searchsorted(hours, hour)
        if sums is None:
            sums = np.zeros((len(hours), 366, *block.shape[1:]))
            counts = np.zeros((len(hours), 366))
        np.add.at(sums, (slot, doy - 1), block.astype(np.float64))
        np.add.at(counts, (slot, doy - 1), 1.0)
        fill = ~leap & (doy == 365)  # WB2 fills day 366 of other years with their day 365
        np.add.at(sums, (slot[fill], 365), block[fill].astype(np.float64))
        np.add.at(counts, (slot[fill], 365), 1.0)
    half = window_days // 2
    # WB2's create_window_weights: linearly decaying, zero at both ends
    weights = np.concatenate([np.linspace(0, 1, half + 1), np.linspace(1, 0, half + 1)[1:]])
    smooth_sums, smooth_counts = np.zeros_like(sums), np.zeros_like(counts)
    for k, weight in enumerate(weights):  # circular over the 366 days (WB2 pads with wrap)
        if weight > 0:
            smooth_sums += weight * np.roll(sums, half - k, axis=1)
            smooth_counts += weight * np.roll(counts, half - k, axis=1)
    if (smooth_counts == 0).any():
        k, d = np.argwhere(smooth_counts == 0)[0]
        raise ValueError(f"{dataset.url}: no training frame within {window_days} days of day "
                         f"{d + 1} at hour {hours[k]}: the training split is too gappy for a "
                         "day-of-year climatology; use --climatology train_mean")
    table = smooth_sums / smooth_counts.reshape(*smooth_counts.shape, *[1] * (sums.ndim - 2))
    return DayOfYearClimatology(hours, table, window_days)
