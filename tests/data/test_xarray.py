"""The xarray converter on the real files in ../shared/data and on WeatherBench2-style Zarr."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import shared_file

from simvp_ray.data import convert_xarray, open_dataset, validate_store, window_starts
from simvp_ray.data.xarray_source import open_source


def test_real_era5_grib(tmp_path):
    path = str(shared_file("data/weatherbench/era5-2mt-2019-03-uk.grib"))
    ds = convert_xarray(path, tmp_path / "era5.zarr", variables=["t2m"],
                        val_start="2019-03-22", test_start="2019-03-27")
    src = open_source(path)
    assert ds.frames.shape == (744, 1, 33, 49) and ds.units == ["K"]
    np.testing.assert_array_equal(ds.frames[:, 0], src["t2m"].values)
    np.testing.assert_array_equal(ds.lat, src["latitude"].values)  # 58 -> 50, as in the file
    assert ds.splits == {"train": (0, 504), "val": (504, 624), "test": (624, 744)}
    assert len(window_starts(ds, "train", 12, 12)) == 504 - 23
    assert "all chunks read" in validate_store(tmp_path / "era5.zarr")


def test_real_packed_netcdf3_levels(tmp_path):
    path = str(shared_file("data/weatherbench/eraint_uvz.nc"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's int16 variables carry a NaN _FillValue
        ds = convert_xarray(path, tmp_path / "uvz.zarr", variables=["z", "u"], levels=[850, 200],
                            time_dim="month", test_start="7")
        src = xr.open_dataset(path)
    assert ds.channels == ["z_850", "z_200", "u_850", "u_200"]
    assert ds.time.tolist() == [1, 7] and ds.attrs["time_step"] == 6
    assert ds.splits["train"] == (0, 1) and ds.splits["test"] == (1, 2)
    # int16 * scale_factor + add_offset decoded in float64, stored to float32 rounding
    expected = src["u"].sel(level=200).values.astype(np.float32)
    np.testing.assert_array_equal(ds.frames[:, 3], expected)
    assert ds.frames.shape[2:] == (241, 480)


@pytest.fixture
def wb2_store(tmp_path):
    """A WeatherBench2-style Zarr (v2, consolidated): latitude / longitude / level, time
    dimension `valid_time`, with two missing hours."""
    times = pd.date_range("2020-01-01", periods=60, freq="h").delete([30, 31])
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"temperature": (("valid_time", "level", "latitude", "longitude"),
                         rng.standard_normal((58, 3, 4, 6)).astype(np.float32), {"units": "K"}),
         "10m_wind_speed": (("valid_time", "latitude", "longitude"),
                            rng.random((58, 4, 6)).astype(np.float32), {"units": "m s-1"})},
        coords={"valid_time": times, "level": [250, 500, 850],
                "latitude": np.linspace(-60, 60, 4), "longitude": np.arange(6) * 60.0},
    )
    path = tmp_path / "wb2.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True)  # WeatherBench2 stores are Zarr v2
    return path, ds


def test_weatherbench2_zarr_with_gap(wb2_store, tmp_path):
    path, src = wb2_store
    ds = convert_xarray(str(path), tmp_path / "out.zarr",
                        variables=["temperature", "10m_wind_speed"], levels=[500],
                        time_dim="valid_time", val_start="2020-01-02T12", test_start="2020-01-03")
    assert ds.channels == ["temperature_500", "10m_wind_speed"] and ds.n_steps == 60
    assert (~ds.valid).nonzero()[0].tolist() == [30, 31]
    np.testing.assert_array_equal(ds.lon, src["longitude"].values)
    kept = np.flatnonzero(ds.valid)
    np.testing.assert_array_equal(ds.frames[:, 0][kept], src["temperature"].sel(level=500).values)
    starts = window_starts(ds, "train", 2, 2)
    assert ds.splits["train"] == (0, 36)
    assert starts.tolist() == [s for s in range(33) if s + 3 < 30 or s > 31]


def test_every_k_steps_and_nan_as_gap(wb2_store, tmp_path):
    path, src = wb2_store
    bad = src.copy(deep=True)
    bad["10m_wind_speed"][5, 0, 0] = np.nan
    bad.to_zarr(tmp_path / "nan.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ValueError, match="NaN or inf in frame at time index 5"):
        convert_xarray(str(tmp_path / "nan.zarr"), tmp_path / "a.zarr",
                       variables=["10m_wind_speed"], time_dim="valid_time")
    ds = convert_xarray(str(tmp_path / "nan.zarr"), tmp_path / "b.zarr",
                        variables=["10m_wind_speed"], time_dim="valid_time", nan_as_gap=True)
    assert not ds.valid[5] and ds.valid.sum() == 57
    three = convert_xarray(str(path), tmp_path / "c.zarr", variables=["10m_wind_speed"],
                           time_dim="valid_time", every=3)
    assert three.attrs["time_step"] == 3 * 3600 and three.n_steps == 20
    np.testing.assert_array_equal(three.frames[:10, 0], src["10m_wind_speed"].values[:30:3])


def test_bad_xarray_input(wb2_store, tmp_path):
    path, _ = wb2_store
    with pytest.raises(ValueError, match="no variable 'q'; valid: \\['10m_wind_speed', 'temp"):
        convert_xarray(str(path), tmp_path / "x.zarr", variables=["q"])
    with pytest.raises(ValueError, match="no level 1000; valid: \\['250', '500', '850'\\]"):
        convert_xarray(str(path), tmp_path / "x.zarr", variables=["temperature"], levels=[1000])
    auto = convert_xarray(str(path), tmp_path / "y.zarr", variables=["10m_wind_speed"])
    assert auto.n_steps == 60  # valid_time found without --time-dim
    with pytest.raises(ValueError, match="no time dimension among"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_xarray(str(shared_file("data/weatherbench/eraint_uvz.nc")), tmp_path / "x.zarr",
                       variables=["z"])
    with pytest.raises(ValueError, match="no time dimension 'time'"):
        convert_xarray(str(path), tmp_path / "x.zarr", variables=["10m_wind_speed"],
                       time_dim="time")
    with pytest.raises(ValueError, match="no such file"):
        convert_xarray(str(tmp_path / "absent.nc"), tmp_path / "x.zarr", variables=["t2m"])


def test_time_stamps_going_back(tmp_path):
    times = pd.to_datetime(["2020-01-01T00", "2020-01-01T01", "2020-01-01T01", "2020-01-01T02"])
    ds = xr.Dataset({"t": (("time", "y", "x"), np.zeros((4, 2, 2), np.float32))},
                    coords={"time": times})
    ds.to_netcdf(tmp_path / "dup.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="dup.nc.*time index 2 .* repeats or goes back in time"):
        convert_xarray(str(tmp_path / "dup.nc"), tmp_path / "x.zarr", variables=["t"])
    ds.assign_coords(time=times + pd.to_timedelta([0, 0, 30, 15], "min")).to_netcdf(
        tmp_path / "off.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="time index 3 .* is not on the 30min grid"):
        convert_xarray(str(tmp_path / "off.nc"), tmp_path / "x.zarr", variables=["t"])


ERA5 = "data/weatherbench/era5-2mt-2019-03-uk.grib"


@pytest.fixture(scope="module")
def irregular_grib(tmp_path_factory):
    """The real ERA5 GRIB made irregular as real archives are: 6-hourly messages, every tenth
    dropped and every seventh taken an hour late (messages copied whole by eccodes, so each
    stamp keeps its own real field). Returns (path, the stamps kept, the source rows)."""
    eccodes = pytest.importorskip("eccodes")
    src = shared_file(ERA5)
    rows = []
    for k, hour in enumerate(range(0, 744 - 1, 6)):
        if k % 10 == 3:
            continue  # dropped: a gap of 12 h
        rows.append(hour + 1 if k % 7 == 2 else hour)  # shifted: steps of 7 h and 5 h
    path = tmp_path_factory.mktemp("irregular") / "era5-irregular.grib"
    with open(src, "rb") as f, open(path, "wb") as out:
        for index in range(744):
            message = eccodes.codes_grib_new_from_file(f)
            if index in rows:
                eccodes.codes_write(message, out)
            eccodes.codes_release(message)
    stamps = np.datetime64("2019-03-01T00", "s") + np.array(rows) * np.timedelta64(3600, "s")
    return str(path), stamps, np.array(rows)


def test_irregular_axis_names_both_options(irregular_grib, tmp_path):
    path, stamps, _ = irregular_grib
    diffs = set((np.diff(stamps) // np.timedelta64(1, "h")).tolist())
    assert {5, 6, 7, 12} <= diffs  # really irregular
    with pytest.raises(ValueError) as error:
        convert_xarray(path, tmp_path / "x.zarr", variables=["t2m"])
    message = str(error.value)
    # names the file itself (no stray '..'), the stamp, and both ways through
    assert message.startswith(f"{path}: time index 1 (2019-03-01T06:00:00) is not on the 5h grid")
    assert "--time-step" in message and "here 1h" in message and "--ordinal" in message
    with pytest.raises(ValueError, match="exclude each other"):
        convert_xarray(path, tmp_path / "x.zarr", variables=["t2m"], time_step="1h",
                       ordinal=True)
    with pytest.raises(ValueError, match=r"time index 2 .* is not on the 2h grid.*here 1h"):
        convert_xarray(path, tmp_path / "x.zarr", variables=["t2m"], time_step="2h")
    with pytest.raises(ValueError, match="time step '1 hour': expected a count and a unit"):
        convert_xarray(path, tmp_path / "x.zarr", variables=["t2m"], time_step="1 hour")
    with pytest.raises(ValueError, match=r"places \d+ stamps on a grid of \d+ steps"):
        convert_xarray(path, tmp_path / "x.zarr", variables=["t2m"], time_step="1s")


def test_irregular_on_a_finer_grid(irregular_grib, tmp_path, prepare_data_main):
    path, stamps, rows = irregular_grib
    dst = str(tmp_path / "grid.zarr")
    assert prepare_data_main(["xarray", "--src", path, "--dst", dst, "--variables", "t2m",
                              "--time-step", "1h", "--val-start", "2019-03-22",
                              "--test-start", "2019-03-27"]) == 0
    assert "all chunks read" in validate_store(dst)
    assert prepare_data_main(["validate", dst]) == 0
    ds = open_dataset(dst)
    assert ds.attrs["time_axis"] == "regular" and ds.attrs["time_step"] == 3600
    hours = (ds.time - ds.time[0]) // np.timedelta64(1, "h")
    assert hours.tolist() == list(range(rows[-1] + 1))  # hourly from the first stamp
    np.testing.assert_array_equal(ds.time[ds.valid], stamps)
    # the frames are the source's, at their own stamps; every other step is a NaN gap
    src = open_source(str(shared_file(ERA5)))["t2m"].values
    np.testing.assert_array_equal(ds.frames[:][ds.valid, 0], src[rows])
    assert np.isnan(ds.frames[:][~ds.valid]).all() and (~ds.valid).sum() == rows[-1] + 1 - len(rows)
    # 6-hourly windows (frame_step 6): exactly the starts whose 4 stamps all exist, none across
    # a dropped or shifted step (counted from the stamps, not from `valid`)
    have = set(stamps.tolist())
    a, b = ds.splits["train"]
    expected = [s for s in range(a, b - 18) if all(
        (ds.time[s] + np.timedelta64(6 * k, "h")).item() in have for k in range(4))]
    starts = window_starts(ds, "train", 2, 2, frame_step=6)
    assert starts.tolist() == expected and 0 < len(expected) < len(stamps)
    assert all(ds.valid[s + 6 * np.arange(4)].all() for s in starts)


def test_irregular_as_ordinal_frames(irregular_grib, tmp_path, prepare_data_main):
    path, stamps, rows = irregular_grib
    dst = str(tmp_path / "ordinal.zarr")
    assert prepare_data_main(["xarray", "--src", path, "--dst", dst, "--variables", "t2m",
                              "--ordinal", "--val-start", "2019-03-22",
                              "--test-start", "2019-03-27"]) == 0
    assert "step 1 frame (ordinal: frames in stamp order" in validate_store(dst)
    assert prepare_data_main(["validate", dst]) == 0
    ds = open_dataset(dst)
    assert ds.attrs["time_axis"] == "ordinal"
    assert (ds.attrs["time_step"], ds.attrs["time_unit"]) == (1, "frame")
    np.testing.assert_array_equal(ds.time, stamps)  # the real times, irregular
    assert ds.valid.all() and ds.n_steps == len(stamps)
    src = open_source(str(shared_file(ERA5)))["t2m"].values
    np.testing.assert_array_equal(ds.frames[:, 0], src[rows])
    first_val = int(np.searchsorted(stamps, np.datetime64("2019-03-22", "s")))
    assert ds.splits["train"] == (0, first_val)
    assert len(window_starts(ds, "train", 2, 2)) == first_val - 3


def test_region_on_the_real_grib(tmp_path, prepare_data_main):
    path = str(shared_file(ERA5))
    dst = str(tmp_path / "box.zarr")
    assert prepare_data_main(["xarray", "--src", path, "--dst", dst, "--variables", "t2m",
                              "--lat", "52:55", "--lon=-5:0"]) == 0
    ds = open_dataset(dst)
    src = open_source(path)["t2m"]
    box = src.sel(latitude=slice(55, 52), longitude=slice(-5, 0))  # ERA5: north to south
    assert ds.frames.shape == (744, 1, 13, 21) and ds.attrs["region"]["lon"] == [-5.0, 0.0]
    np.testing.assert_array_equal(ds.lat, box["latitude"].values)  # 55 -> 52, as in the file
    np.testing.assert_array_equal(ds.lon, box["longitude"].values)
    np.testing.assert_array_equal(ds.frames[:, 0], box.values)
    assert "all chunks read" in validate_store(dst)


def test_region_across_greenwich_on_a_0_360_grid(tmp_path):
    """The same file with 0..360 longitudes and south-to-north latitudes: -10:2 (and 350:2)
    picks 350..360 then 0..2, in the -10..2 frame, the same values as from the original."""
    path = str(shared_file(ERA5))
    src = open_source(path)[["t2m"]].isel(time=slice(0, 48)).load()
    shifted = src.assign_coords(longitude=src["longitude"] % 360).sortby("longitude")
    shifted = shifted.sortby("latitude")
    assert shifted["longitude"].values[0] == 0 and shifted["longitude"].values[-1] == 359.75
    shifted.to_netcdf(tmp_path / "era5_360.nc", engine="h5netcdf")
    expected = src["t2m"].sel(latitude=slice(56, 51), longitude=slice(-10, 2))
    for lon in ("-10:2", "350:2"):
        ds = convert_xarray(str(tmp_path / "era5_360.nc"), tmp_path / f"{lon}.zarr",
                            variables=["t2m"], lat="51:56", lon=lon)
        np.testing.assert_allclose(ds.lon, expected["longitude"].values, atol=1e-9)
        np.testing.assert_array_equal(ds.lat, expected["latitude"].values[::-1])  # file order
        np.testing.assert_array_equal(ds.frames[:, 0], expected.values[:, ::-1])
    everything = convert_xarray(str(tmp_path / "era5_360.nc"), tmp_path / "all.zarr",
                                variables=["t2m"], lon="0:360")
    assert everything.frames.shape[2:] == (33, 49)
    nc = str(tmp_path / "era5_360.nc")
    with pytest.raises(ValueError, match=r"--lat 70.0:80.0 selects no lat point; the file's lat "
                                         r"runs 50 .. 58"):
        convert_xarray(nc, tmp_path / "x.zarr", variables=["t2m"], lat="70:80")
    with pytest.raises(ValueError, match=r"--lon 20.0:30.0 selects no lon point"):
        convert_xarray(nc, tmp_path / "x.zarr", variables=["t2m"], lon="20:30")
    with pytest.raises(ValueError, match="range '50-60': expected LOW:HIGH"):
        convert_xarray(nc, tmp_path / "x.zarr", variables=["t2m"], lat="50-60")


def test_ordinal_and_time_step_on_gappy_and_numeric_axes(wb2_store, tmp_path):
    path, src = wb2_store  # hourly with hours 30 and 31 missing
    ordinal = convert_xarray(str(path), tmp_path / "o.zarr", variables=["10m_wind_speed"],
                             ordinal=True)
    assert ordinal.n_steps == 58 and ordinal.valid.all()  # the gap closes up
    np.testing.assert_array_equal(ordinal.time, src["valid_time"].values.astype("M8[s]"))
    halves = convert_xarray(str(path), tmp_path / "h.zarr", variables=["10m_wind_speed"],
                            ordinal=True, every=2)
    assert halves.n_steps == 29 and halves.attrs["time_step"] == 2
    np.testing.assert_array_equal(halves.frames[:, 0], src["10m_wind_speed"].values[::2])
    coarse = convert_xarray(str(path), tmp_path / "c.zarr", variables=["10m_wind_speed"],
                            time_step="30min")  # a finer grid than the data's own
    assert coarse.n_steps == 119 and coarse.valid.sum() == 58
    months = xr.Dataset({"t": (("month", "y", "x"), np.ones((3, 2, 2), np.float32))},
                        coords={"month": [1, 7, 9]})
    months.to_netcdf(tmp_path / "months.nc", engine="h5netcdf")
    numeric = convert_xarray(str(tmp_path / "months.nc"), tmp_path / "m.zarr", variables=["t"],
                             time_dim="month", time_step="2")
    assert numeric.time.tolist() == [1, 3, 5, 7, 9] and numeric.valid.tolist() == [
        True, False, False, True, True]
    with pytest.raises(ValueError, match="time step '1h': expected a positive whole number"):
        convert_xarray(str(tmp_path / "months.nc"), tmp_path / "m.zarr", variables=["t"],
                       time_dim="month", time_step="1h", overwrite=True)
