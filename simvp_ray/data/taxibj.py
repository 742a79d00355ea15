"""TaxiBJ converter: DeepST's BJ13..BJ16 HDF5 flow files (or OpenSTL's dataset.npz) -> a store.

Follows spec/data.md 1.2-1.3: incomplete days removed per file as DeepST does, channels in/out
flow clamped at 0, the last 48 * 28 kept slots are the test split (OpenSTL validates on it too),
one min-max pair pooled over both channels fitted on train (normalised = OpenSTL's (x + 1) / 2).
Kept slots sit on a regular 30-minute grid; removed days and the months between files are gaps.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from simvp_ray.data.normalization import minmax_stats
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset, StoreLayout, create_store
from simvp_ray.data.timegrid import regular_grid

CONVERTER_VERSION = "1"
SLOTS_PER_DAY = 48
SLOT = np.timedelta64(30, "m")
TEST_SLOTS = 48 * 28  # DeepST len_test: the last four weeks
FLOW_PATTERN = "BJ*_M32x32_T30_InOut.h5"
WEATHER_TYPES = ["Sunny", "Cloudy", "Overcast", "Rainy", "Sprinkle", "ModerateRain", "HeavyRain",
                 "Rainstorm", "Thunderstorm", "FreezingRain", "Snowy", "LightSnow",
                 "ModerateSnow", "HeavySnow", "Foggy", "Sandstorm", "Dusty"]
METADATA = {
    "converter_version": CONVERTER_VERSION,
    "licence": "no licence stated by the authors (Copyright Junbo Zhang); research use, cite",
    "citation": "Zhang, Zheng, Qi. Deep Spatio-Temporal Residual Networks for Citywide Crowd "
                "Flows Prediction. AAAI 2017",
}
BLOCK_ROWS = 1024  # source rows read at a time: 16 MB of float64, so memory stays flat


def parse_slots(dates: np.ndarray, where: str) -> np.ndarray:
    """b'YYYYMMDDSS' slot strings (SS = 01..48) -> datetime64[s] slot start times."""
    text = [d.decode() if isinstance(d, bytes) else str(d) for d in dates]
    out = np.empty(len(text), dtype="datetime64[s]")
    for i, stamp in enumerate(text):
        slot = int(stamp[8:]) if len(stamp) == 10 and stamp.isdigit() else 0
        if not 1 <= slot <= SLOTS_PER_DAY:
            raise DatasetError(f"{where}: date[{i}] = {stamp!r} is not 'YYYYMMDDSS' with SS 01..48")
        day = np.datetime64(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}", "s")
        out[i] = day + (slot - 1) * SLOT
    return out


def complete_day_rows(dates: np.ndarray) -> np.ndarray:
    """Row indices DeepST's remove_incomplete_days keeps: days whose slot 01 is followed 47
    rows later by a slot 48 (only those two rows are checked, as in the reference)."""
    text = [d.decode() if isinstance(d, bytes) else str(d) for d in dates]
    days, i = set(), 0
    while i < len(text):
        if int(text[i][8:]) != 1:
            i += 1
        elif i + SLOTS_PER_DAY - 1 < len(text) and int(text[i + SLOTS_PER_DAY - 1][8:]) == 48:
            days.add(text[i][:8])
            i += SLOTS_PER_DAY
        else:
            i += 1
    return np.array([i for i, t in enumerate(text) if t[:8] in days], dtype=np.int64)


def read_holidays(path: str | os.PathLike) -> set[str]:
    """BJ_Holiday.txt: one YYYYMMDD a line (CRLF, no final newline in the real file)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    dates = {line for line in lines if line}
    bad = sorted(d for d in dates if len(d) != 8 or not d.isdigit())
    if bad:
        raise DatasetError(f"{path}: lines {bad[:3]} are not YYYYMMDD dates")
    return dates


def _open_flow(path: Path) -> h5py.File:
    handle = h5py.File(path, "r")
    missing = [key for key in ("data", "date") if key not in handle]
    if missing:
        raise DatasetError(f"{path}: missing dataset {missing} (found {sorted(handle)})")
    data, date = handle["data"], handle["date"]
    if data.ndim != 4 or data.shape[1] < 2 or data.shape[0] != date.shape[0]:
        raise DatasetError(f"{path}: data shape {data.shape} with {date.shape[0]} dates; "
                           "expected (N, 2, H, W) and N dates")
    return handle


def convert_taxibj(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                   test_slots: int = TEST_SLOTS, chunk_frames: int | None = None,
                   storage_options: dict | None = None) -> Dataset:
    """TaxiBJ: DeepST's BJ*_M32x32_T30_InOut.h5 files, or OpenSTL's dataset.npz.

    src is a folder of flow files (plus BJ_Holiday.txt and BJ_Meteorology.h5 when present) or
    the path of a dataset.npz."""
    src = Path(src)
    if src.suffix == ".npz":
        return convert_taxibj_npz(src, dst, overwrite=overwrite, chunk_frames=chunk_frames,
                                  storage_options=storage_options)
    files = sorted(src.glob(FLOW_PATTERN))
    if not files:
        raise DatasetError(f"{src}: no {FLOW_PATTERN} files (nor a dataset.npz)")
    kept: list[tuple[Path, np.ndarray, np.ndarray]] = []  # (file, rows, times)
    for path in files:
        with _open_flow(path) as handle:
            dates = handle["date"][:]
            height, width = handle["data"].shape[2:]
        times = parse_slots(dates, str(path))
        rows = complete_day_rows(dates)
        kept.append((path, rows, times[rows]))
    kept.sort(key=lambda item: item[2][0] if len(item[2]) else np.datetime64("NaT"))
    all_times = np.concatenate([times for _, _, times in kept])
    if len(all_times) <= test_slots:
        raise DatasetError(f"{src}: {len(all_times)} slots in complete days, not more than the "
                           f"{test_slots} test slots")
    grid, positions = regular_grid(all_times, SLOT, f"{src} (dates of {[p.name for p in files]})")
    test_start = int(positions[len(all_times) - test_slots])
    layout = StoreLayout(
        time=grid, channels=["inflow", "outflow"], units=["taxis / 30 min"] * 2,
        height=height, width=width,
        splits={"train": (0, test_start), "val": (test_start, len(grid)),
                "test": (test_start, len(grid))},
        metadata={**METADATA, "converter": "taxibj",
                  "source": f"DeepST TaxiBJ files {[p.name for p in files]}"},
        time_step=int(SLOT / np.timedelta64(1, "s")), time_unit="s", chunk_frames=chunk_frames,
        extra_attrs={"val_is_test": True},
    )
    writer = create_store(dst, layout, overwrite=overwrite, storage_options=storage_options)
    done = 0
    for path, rows, _ in kept:
        with _open_flow(path) as handle:
            for i in range(0, len(rows), BLOCK_ROWS):
                block_rows = rows[i : i + BLOCK_ROWS]
                span = handle["data"][block_rows[0] : block_rows[-1] + 1, :2]
                block = np.maximum(span[block_rows - block_rows[0]], 0)  # DeepST: negatives -> 0
                where = f"{path} rows {block_rows[0]}..{block_rows[-1]}"
                writer.write_at(positions[done + i : done + i + len(block_rows)], block, where)
        done += len(rows)
    _write_external(writer, src, grid)
    return writer.finish("minmax", pooled_channels=True)


def _write_external(writer, src: Path, grid: np.ndarray) -> None:
    days = np.datetime_as_string(grid, unit="D")
    holiday_file = src / "BJ_Holiday.txt"
    if holiday_file.exists():
        holidays = {f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in read_holidays(holiday_file)}
        flags = np.array([day in holidays for day in days], dtype=np.int8)
        writer.write_external("holiday", flags, {"source": holiday_file.name})
    weather_file = src / "BJ_Meteorology.h5"
    if not weather_file.exists():
        return
    with h5py.File(weather_file, "r") as handle:
        missing = [k for k in ("date", "Temperature", "WindSpeed", "Weather") if k not in handle]
        if missing:
            raise DatasetError(f"{weather_file}: missing dataset {missing} "
                               f"(found {sorted(handle)})")
        times = parse_slots(handle["date"][:], str(weather_file))
        index = np.searchsorted(grid, times)
        inside = (index < len(grid)) & (grid[np.minimum(index, len(grid) - 1)] == times)
        for name, key in (("temperature", "Temperature"), ("wind_speed", "WindSpeed"),
                          ("weather", "Weather")):
            values = handle[key][:].astype(np.float32)
            out = np.full((len(grid), *values.shape[1:]), np.nan, dtype=np.float32)
            out[index[inside]] = values[inside]
            attrs = {"source": weather_file.name, "aligned": "same slot (DeepST uses the previous)"}
            if key == "Weather":
                attrs["categories"] = WEATHER_TYPES
            writer.write_external(name, out, attrs)


def convert_taxibj_npz(path: str | os.PathLike, dst: str | os.PathLike, *,
                       overwrite: bool = False, chunk_frames: int | None = None,
                       storage_options: dict | None = None) -> Dataset:
    """OpenSTL's dataset.npz (X/Y_train, X/Y_test: (n, 4, 2, 32, 32) in [-1, 1]): each sample
    becomes 8 consecutive steps followed by one gap step, so 4 -> 4 windows are the samples."""
    arrays = np.load(path)
    missing = [k for k in ("X_train", "Y_train", "X_test", "Y_test") if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing array {missing} (found {sorted(arrays.files)})")
    counts = {}
    for split in ("train", "test"):
        x, y = arrays[f"X_{split}"], arrays[f"Y_{split}"]
        if x.ndim != 5 or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
            raise DatasetError(f"{path}: X_{split} {x.shape} and Y_{split} {y.shape} do not pair")
        counts[split] = x.shape[0]
    _, t_in, channels, height, width = arrays["X_train"].shape
    period = t_in + arrays["Y_train"].shape[1] + 1  # one gap step after each sample
    n_train, n_test = counts["train"], counts["test"]
    total = period * (n_train + n_test)
    layout = StoreLayout(
        time=np.arange(total), channels=["inflow", "outflow"][:channels] if channels <= 2
        else [f"channel_{c}" for c in range(channels)],
        units=["scaled to [-1, 1] (DeepST min-max)"] * channels, height=height, width=width,
        splits={"train": (0, period * n_train), "val": (period * n_train, total),
                "test": (period * n_train, total)},
        metadata={**METADATA, "converter": "taxibj-npz",
                  "source": f"OpenSTL taxibj {Path(path).name}"},
        time_step=1, time_unit="step", chunk_frames=chunk_frames,
        extra_attrs={"val_is_test": True, "samples_per_split": counts},
    )
    writer = create_store(dst, layout, overwrite=overwrite, storage_options=storage_options)
    step = 0
    for split in ("train", "test"):
        x, y = arrays[f"X_{split}"], arrays[f"Y_{split}"]
        for i in range(0, len(x), 1024):
            samples = np.concatenate([x[i : i + 1024], y[i : i + 1024]], axis=1)
            gap = np.full((len(samples), 1, *samples.shape[2:]), np.nan, samples.dtype)
            block = np.concatenate([samples, gap], axis=1).reshape(-1, *samples.shape[2:])
            valid = np.tile(np.arange(period) < period - 1, len(samples))
            writer.write(step, block, valid, f"{path} {split} samples {i}..")
            step += len(block)
    # the npz is already scaled to [-1, 1]; OpenSTL's (x + 1) / 2 is min-max with -1 and 1
    return writer.finish(fixed=minmax_stats([-1.0] * channels, [1.0] * channels, "fixed"))
