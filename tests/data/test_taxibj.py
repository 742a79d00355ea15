"""TaxiBJ: raw DeepST HDF5 files and OpenSTL's dataset.npz, written here in their exact formats."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import h5py
import numpy as np
import pytest
from helpers import SHARED_DIR, shared_file

from simvp_ray.data import (
    convert_taxibj,
    open_dataset,
    read_windows,
    validate_store,
    window_starts,
)
from simvp_ray.data.taxibj import complete_day_rows, read_holidays

SLOT = np.timedelta64(30, "m")


def slot_strings(first_day: date, days: int, drop: set[tuple[int, int]]) -> list[bytes]:
    """b'YYYYMMDDSS' for every slot of `days` days except the (day, slot) pairs in drop."""
    out = []
    for d in range(days):
        day = first_day + timedelta(days=d)
        out += [f"{day:%Y%m%d}{s:02d}".encode() for s in range(1, 49) if (d, s) not in drop]
    return out


def write_flow_file(path, dates: list[bytes], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(-3, 1250, (len(dates), 2, 32, 32)).astype(np.float64)
    with h5py.File(path, "w") as handle:
        handle["data"] = data
        handle["date"] = np.array(dates, dtype="S10")
    return data


def slot_times(dates: list[bytes]) -> np.ndarray:
    return np.array([np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:8]}", "s") + (int(d[8:]) - 1) * SLOT
                     for d in (x.decode() for x in dates)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two periods: BJ15 (4 days, day 0 starts at slot 5, day 1 lacks slot 20) and BJ16
    (6 days, day 2 lacks slot 48); plus the real holiday file and a meteorology file."""
    src = tmp_path_factory.mktemp("taxibj")
    files = {
        "BJ15_M32x32_T30_InOut.h5": (slot_strings(date(2015, 4, 3), 4,
                                                  {(0, s) for s in range(1, 5)} | {(1, 20)}), 1),
        "BJ16_M32x32_T30_InOut.h5": (slot_strings(date(2016, 4, 1), 6, {(2, 48)}), 2),
    }
    kept_times, kept_frames = [], []
    for name, (dates, seed) in files.items():
        data = write_flow_file(src / name, dates, seed)
        days = [d[:8] for d in dates]
        complete = {day for day in set(days) if days.count(day) == 48}
        rows = [i for i, day in enumerate(days) if day in complete]
        kept_times.append(slot_times(dates)[rows])
        kept_frames.append(np.maximum(data[rows], 0))
    holiday_file = SHARED_DIR / "data/taxibj/BJ_Holiday.txt"
    if holiday_file.exists():  # test_external_arrays skips without it; the rest runs anyway
        shutil.copy(holiday_file, src / "BJ_Holiday.txt")
    weather_dates = slot_strings(date(2016, 4, 1), 6, set())
    with h5py.File(src / "BJ_Meteorology.h5", "w") as handle:
        handle["date"] = np.array(weather_dates, dtype="S10")
        handle["Temperature"] = np.linspace(5, 20, len(weather_dates))
        handle["WindSpeed"] = np.linspace(0, 3, len(weather_dates))
        handle["Weather"] = np.eye(17)[np.arange(len(weather_dates)) % 17]
    return src, np.concatenate(kept_times), np.concatenate(kept_frames).astype(np.float32)


def test_convert_flow_files(raw, tmp_path):
    src, times, frames = raw
    ds = convert_taxibj(src, tmp_path / "taxibj.zarr", test_slots=96)
    # kept: BJ15 days 2 and 3 (96 slots), BJ16 days 0, 1, 3, 4, 5 (240 slots)
    assert len(times) == 96 + 240
    assert ds.time[0] == times[0] and ds.time[-1] == times[-1]
    assert np.all(np.diff(ds.time) == SLOT)
    position = ((times - times[0]) // SLOT).astype(int)
    assert ds.valid.sum() == len(times) and ds.valid[position].all()
    np.testing.assert_array_equal(ds.frames.get_orthogonal_selection((position,)), frames)
    test_start = position[-96]
    assert ds.splits == {"train": (0, test_start), "val": (test_start, ds.n_steps),
                         "test": (test_start, ds.n_steps)}
    # one global min / max over both channels of the training slots, as DeepST
    train = frames[: len(times) - 96]
    assert ds.stats.kind == "minmax"
    np.testing.assert_array_equal(ds.stats.min, [train.min()] * 2)
    np.testing.assert_array_equal(ds.stats.max, [train.max()] * 2)
    # windows: 8 consecutive kept slots inside the split, never across a dropped day
    kept = set(times.tolist())
    for split, (a, b) in ds.splits.items():
        expected = [s for s in range(a, b - 7)
                    if all((ds.time[0] + (s + k) * SLOT).tolist() in kept for k in range(8))]
        assert window_starts(ds, split, 4, 4).tolist() == expected
    # BJ15 days 2-3, BJ16 days 0-1, BJ16 day 3 (days 4-5 are the test split)
    assert len(window_starts(ds, "train", 4, 4)) == (96 - 7) + (96 - 7) + (48 - 7)
    assert len(window_starts(ds, "test", 4, 4)) == 96 - 7
    # normalised values = OpenSTL's (x_scaled + 1) / 2 with DeepST's [-1, 1] scaling
    start = window_starts(ds, "test", 4, 4)[5]
    batch = read_windows(ds, [start], 4, 4)
    source = frames[np.searchsorted(position, start) + np.arange(8)]
    lo, hi = train.min(), train.max()
    openstl = (2 * (source - lo) / (hi - lo) - 1 + 1) / 2
    np.testing.assert_allclose(np.concatenate([batch["x"][0], batch["y"][0]]), openstl, atol=1e-6)


def test_external_arrays(raw, tmp_path):
    shared_file("data/taxibj/BJ_Holiday.txt")
    src, _, _ = raw
    ds = convert_taxibj(src, tmp_path / "taxibj.zarr", test_slots=96)
    holiday = ds.group["external/holiday"][:]
    days = np.datetime_as_string(ds.time, unit="D")
    assert holiday[days == "2015-04-04"].all() and holiday[days == "2016-04-02"].all()
    assert not holiday[days == "2016-04-01"].any()
    temperature = ds.group["external/temperature"][:]
    at = np.searchsorted(ds.time, np.datetime64("2016-04-01T00:00", "s"))
    assert temperature[at] == 5 and np.isnan(temperature[0])
    assert ds.group["external/weather"].shape == (ds.n_steps, 17)


def test_reference_incomplete_day_rule():
    dates = slot_strings(date(2015, 1, 1), 3, {(0, 10)}) + [b"2015010401"]
    rows = complete_day_rows(np.array(dates, dtype="S10"))
    assert rows.tolist() == list(range(47, 47 + 96))


def test_holiday_file_crlf():
    holidays = read_holidays(shared_file("data/taxibj/BJ_Holiday.txt"))
    assert len(holidays) == 106 and "20130101" in holidays and "20160611" in holidays


def test_bad_flow_files(tmp_path):
    with h5py.File(tmp_path / "BJ13_M32x32_T30_InOut.h5", "w") as handle:
        handle["data"] = np.zeros((2, 2, 32, 32))
        handle["date"] = np.array([b"2013070101", b"2013070149"], dtype="S10")
    with pytest.raises(ValueError, match="BJ13_M32x32_T30_InOut.h5: date\\[1\\] = '2013070149'"):
        convert_taxibj(tmp_path, tmp_path / "out.zarr")
    with h5py.File(tmp_path / "BJ13_M32x32_T30_InOut.h5", "w") as handle:
        handle["flows"] = np.zeros((2, 2, 32, 32))
    with pytest.raises(ValueError, match="missing dataset \\['data', 'date'\\]"):
        convert_taxibj(tmp_path, tmp_path / "out.zarr")
    with pytest.raises(ValueError, match="no BJ\\*_M32x32_T30_InOut.h5 files"):
        convert_taxibj(tmp_path / "empty", tmp_path / "out.zarr")


def test_nan_in_flow_file(tmp_path):
    dates = slot_strings(date(2014, 3, 1), 3, set())
    data = np.ones((len(dates), 2, 32, 32))
    data[60, 1, 4, 4] = np.nan
    with h5py.File(tmp_path / "BJ14_M32x32_T30_InOut.h5", "w") as handle:
        handle["data"] = data
        handle["date"] = np.array(dates, dtype="S10")
    with pytest.raises(ValueError, match="BJ14_M32x32_T30_InOut.h5 rows 0..143: NaN .* index 60"):
        convert_taxibj(tmp_path, tmp_path / "out.zarr", test_slots=48)


def test_interrupted_conversion_is_incomplete_then_completed(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    write_flow_file(src / "BJ14_M32x32_T30_InOut.h5", slot_strings(date(2014, 3, 1), 3, set()), 0)
    dates = slot_strings(date(2015, 3, 1), 3, set())
    data = write_flow_file(src / "BJ15_M32x32_T30_InOut.h5", dates, 1)
    with h5py.File(src / "BJ15_M32x32_T30_InOut.h5", "r+") as handle:
        handle["data"][100, 0, 0, 0] = np.inf  # the second file fails after the first is written
    with pytest.raises(ValueError, match="BJ15_M32x32_T30_InOut.h5 rows 0..143: NaN or inf"):
        convert_taxibj(src, tmp_path / "out.zarr", test_slots=48)
    with pytest.raises(ValueError, match="incomplete store"):
        validate_store(tmp_path / "out.zarr")
    with h5py.File(src / "BJ15_M32x32_T30_InOut.h5", "r+") as handle:
        handle["data"][100] = data[100]
    ds = convert_taxibj(src, tmp_path / "out.zarr", test_slots=48)  # no --overwrite needed
    assert ds.valid.sum() == 6 * 48 and "all chunks read" in validate_store(ds.url)


def test_openstl_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"{k}_{s}": rng.uniform(-1, 1, (n, 4, 2, 32, 32)).astype(np.float64)
              for s, n in (("train", 30), ("test", 7)) for k in ("X", "Y")}
    np.savez(tmp_path / "dataset.npz", **arrays)
    ds = convert_taxibj(tmp_path / "dataset.npz", tmp_path / "npz.zarr")
    train, test = window_starts(ds, "train", 4, 4), window_starts(ds, "test", 4, 4)
    assert len(train) == 30 and len(test) == 7 and len(window_starts(ds, "val", 4, 4)) == 7
    batch = read_windows(ds, test, 4, 4)
    np.testing.assert_allclose(batch["x"], (arrays["X_test"].astype(np.float32) + 1) / 2,
                               atol=1e-6)
    np.testing.assert_allclose(batch["y"], (arrays["Y_test"].astype(np.float32) + 1) / 2,
                               atol=1e-6)
    raw = read_windows(ds, train, 4, 4, normalized=False)
    np.testing.assert_array_equal(raw["x"], arrays["X_train"].astype(np.float32))
    assert open_dataset(tmp_path / "npz.zarr").stats.fitted_on == "fixed"
