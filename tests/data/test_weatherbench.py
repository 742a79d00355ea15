"""WeatherBench: per-variable, per-year NetCDF files written here in the 5.625 deg layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from simvp_ray.data import convert_weatherbench, read_windows, window_starts

LEVELS = [150, 500, 850, 1000]  # a subset of WeatherBench's 13, ascending as in the files


def write_year(root, folder, variable, year, levels=None, shape=(4, 8), seed=0):
    """<root>/<folder>/<folder>_<year>_5.625deg.nc with hourly `time`, `lat`, `lon`."""
    time = pd.date_range(f"{year}-01-01", f"{year}-12-31T23:00", freq="h")
    lat = np.linspace(-87.1875, 87.1875, shape[0])
    lon = np.linspace(0, 354.375, shape[1])
    rng = np.random.default_rng([seed, year])
    dims, coords = ["time", "lat", "lon"], {"time": time, "lat": lat, "lon": lon}
    size = [len(time), *shape]
    if levels is not None:
        dims.insert(1, "level")
        coords["level"] = np.array(levels, dtype=np.int32)
        size.insert(1, len(levels))
    values = (280 + rng.standard_normal(size)).astype(np.float32)
    ds = xr.Dataset({variable: (dims, values, {"units": "K"})}, coords=coords)
    (root / folder).mkdir(exist_ok=True)
    ds.to_netcdf(root / folder / f"{folder}_{year}_5.625deg.nc", engine="h5netcdf")


def source(root, folder, years):
    paths = [root / folder / f"{folder}_{y}_5.625deg.nc" for y in years]
    return xr.concat([xr.open_dataset(p) for p in paths], dim="time")


@pytest.fixture(scope="module")
def t2m_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weatherbench")
    for year in range(2010, 2019):
        write_year(root, "2m_temperature", "t2m", year)
    return root


def test_t2m_preset(t2m_root, tmp_path):
    ds = convert_weatherbench(t2m_root, tmp_path / "t2m.zarr", preset="t2m")
    hours = {"train": 52584, "val": 8784, "test": 17520}  # 2010-2015 / 2016 / 2017-2018
    assert ds.frames.shape == (sum(hours.values()), 1, 4, 8) and ds.channels == ["t2m"]
    assert ds.units == ["K"] and ds.attrs["time_step"] == 3600 and ds.valid.all()
    assert [b - a for a, b in ds.splits.values()] == list(hours.values())
    # OpenSTL counts N - 1 - 23 (it drops the last hour and one more start); we keep both
    for split, n in hours.items():
        assert len(window_starts(ds, split, 12, 12)) == n - 23
    src = source(t2m_root, "2m_temperature", range(2010, 2019))
    np.testing.assert_array_equal(ds.frames[:, 0], src["t2m"].values)
    np.testing.assert_array_equal(ds.time, src["time"].values.astype("datetime64[s]"))
    np.testing.assert_array_equal(ds.lat, src["lat"].values)
    train = src["t2m"].sel(time=slice("2010", "2015")).values.astype(np.float64)
    np.testing.assert_allclose(ds.stats.offset, [train.mean()], rtol=1e-10)
    np.testing.assert_allclose(ds.stats.scale, [train.std()], rtol=1e-8)
    start = window_starts(ds, "test", 12, 12)[-1]
    batch = read_windows(ds, [start], 12, 12)
    expected = (src["t2m"].values[start + 12 : start + 24] - train.mean()) / train.std()
    np.testing.assert_allclose(batch["y"][0, :, 0], expected, atol=1e-5)


@pytest.fixture(scope="module")
def mv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("weatherbench_mv")
    folders = {"relative_humidity": "r", "temperature": "t", "u_component_of_wind": "u",
               "v_component_of_wind": "v", "geopotential": "z"}
    for seed, (folder, variable) in enumerate(folders.items()):
        for year in range(2014, 2019):
            write_year(root, folder, variable, year, LEVELS, shape=(2, 4), seed=seed)
    return root


def test_mv_preset_channels_and_frame_step(mv_root, tmp_path):
    ds = convert_weatherbench(mv_root, tmp_path / "mv.zarr", preset="mv",
                              train_years=(2014, 2015))
    assert ds.channels == [f"{v}_{lv}" for v in "rtuv" for lv in (150, 500, 850)]
    assert ds.attrs["time_step"] == 6 * 3600 and ds.n_steps == 5 * 365 * 4 + 4
    assert ds.time[1] - ds.time[0] == np.timedelta64(6, "h")
    t = source(mv_root, "temperature", range(2014, 2019))["t"]
    np.testing.assert_array_equal(ds.frames[:, 4], t.sel(level=500).values[::6])
    assert len(window_starts(ds, "train", 4, 4)) == 730 * 4 - 7
    assert len(window_starts(ds, "train", 4, 28)) == 730 * 4 - 31


def test_single_level_and_geopotential_key(mv_root, tmp_path):
    r = convert_weatherbench(mv_root, tmp_path / "r.zarr", preset="r", train_years=(2014, 2015))
    assert r.channels == ["r_1000"]  # OpenSTL keeps the last level of relative_humidity
    # key `g` lives in folder geopotential as variable `z` (OpenSTL looks up `g` and fails)
    g = convert_weatherbench(mv_root, tmp_path / "g.zarr", keys=["g"], levels=[500],
                             train_years=(2014, 2015), every=6)
    z = source(mv_root, "geopotential", range(2014, 2019))["z"].sel(level=500)
    np.testing.assert_array_equal(g.frames[:, 0], z.values[::6])


def test_missing_year_and_variable(t2m_root, mv_root, tmp_path):
    with pytest.raises(ValueError, match="missing 2m_temperature/2m_temperature_2009_5.625deg.nc"):
        convert_weatherbench(t2m_root, tmp_path / "x.zarr", train_years=(2009, 2015))
    with pytest.raises(ValueError, match="unknown WeatherBench variable 'q'"):
        convert_weatherbench(t2m_root, tmp_path / "x.zarr", keys=["q"])
    with pytest.raises(ValueError, match="has no level 300"):
        convert_weatherbench(mv_root, tmp_path / "x.zarr", keys=["t"], levels=[300],
                             train_years=(2014, 2015))


def test_region_across_greenwich(t2m_root, tmp_path):
    ds = convert_weatherbench(t2m_root, tmp_path / "box.zarr", preset="t2m",
                              train_years=(2010, 2010), val_years=(2011, 2011),
                              test_years=(2012, 2012), lat="-10:90", lon="-60:60")
    src = source(t2m_root, "2m_temperature", [2010, 2011, 2012])
    lon = src["lon"].values  # 0, 50.625, ..., 354.375
    columns = [6, 7, 0, 1]  # 303.75, 354.375, 0, 50.625: east from -60
    np.testing.assert_allclose(ds.lon, np.where(lon[columns] > 180, lon[columns] - 360,
                                                lon[columns]))
    np.testing.assert_array_equal(ds.lat, src["lat"].values[2:])
    np.testing.assert_array_equal(ds.frames[:, 0], src["t2m"].values[:, 2:][:, :, columns])
    assert ds.attrs["region"] == {"lat": [-10.0, 90.0], "lon": [-60.0, 60.0]}
