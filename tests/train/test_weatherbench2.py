"""WeatherBench 2's conventions against an independent xarray implementation of its formulas.

The references follow weatherbench2/metrics.py (`get_lat_weights` from cell areas, `MSE`,
`RMSE` = root after the time mean, `RMSESqrtBeforeTimeAvg`, `ACC`) and
scripts/compute_climatology.py (per hour, day-of-year stacks, day 366 filled from 365, wrap
padding, 61-day linearly decaying window weights), written here with xarray.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from simvp_ray.data import StoreLayout, create_store
from simvp_ray.data.climatology import (
    day_of_year_climatology,
    resolve_climatology,
    train_climatology,
)
from simvp_ray.train.metrics import MetricAccumulator, latitude_weights


def wb2_lat_weights(lat_deg: np.ndarray) -> np.ndarray:
    """weatherbench2.metrics.get_lat_weights: integral of cos(lat) over each cell (increasing)."""
    lat = np.deg2rad(lat_deg)
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    weights = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return weights / weights.mean()


def wb2_scores(forecast: xr.DataArray, truth: xr.DataArray, climatology: xr.DataArray) -> dict:
    """Per lead: MSE, RMSE (root after the time mean), RMSESqrtBeforeTimeAvg, ACC."""
    forecast, truth = forecast.sortby("latitude"), truth.sortby("latitude")
    climatology = climatology.sortby("latitude")
    weights = xr.DataArray(wb2_lat_weights(forecast.latitude.values), dims=["latitude"],
                           coords={"latitude": forecast.latitude})

    def spatial(da):
        return da.weighted(weights).mean(["latitude", "longitude"])

    mse_per_time = spatial((forecast - truth) ** 2)
    fa, ta = forecast - climatology, truth - climatology
    acc = spatial(fa * ta) / np.sqrt(spatial(fa**2) * spatial(ta**2))
    return {"mse": mse_per_time.mean("time"), "rmse": np.sqrt(mse_per_time.mean("time")),
            "rmse_sqrt_before": np.sqrt(mse_per_time).mean("time"), "acc": acc.mean("time")}


@pytest.mark.parametrize("lat", [np.linspace(90, -90, 7),  # pole rows, north to south (ERA5)
                                 np.linspace(-87.1875, 87.1875, 8)])  # WeatherBench 5.625 deg
def test_weighted_rmse_and_acc_equal_weatherbench2(lat):
    gen = np.random.default_rng(0)
    n, t_len, h, w = 5, 3, len(lat), 6
    truth = 280 + 10 * gen.normal(size=(n, t_len, 1, h, w))
    forecast = truth + gen.normal(0, 1, (n, t_len, 1, h, w)) * np.linspace(0.5, 3, h)[:, None]
    clim = 280 + 8 * gen.normal(size=(n, t_len, 1, h, w))  # per forecast (day-of-year lookup)
    mean, std = 279.0, 9.0
    acc = MetricAccumulator(t_len, 1, offset=[mean], scale=[std], channel_names=["t2m"],
                            lat_weights=latitude_weights(lat))
    norm = [torch.from_numpy((a - mean) / std) for a in (forecast, truth, clim)]
    acc.update(norm[0][:2], norm[1][:2], climatology=norm[2][:2])
    acc.update(norm[0][2:], norm[1][2:], climatology=norm[2][2:])
    got = acc.compute()

    coords = {"time": np.arange(n), "lead": np.arange(t_len), "latitude": lat,
              "longitude": np.arange(w) * 60.0}
    dims = ["time", "lead", "latitude", "longitude"]
    scores = wb2_scores(*(xr.DataArray(a[:, :, 0], dims=dims, coords=coords)
                          for a in (forecast, truth, clim)))
    for k in range(t_len):
        lead = f"t2m/t{k + 1}"
        assert got[f"wmse_phys/{lead}"] == pytest.approx(float(scores["mse"][k]), rel=1e-9)
        assert got[f"wrmse_phys/{lead}"] == pytest.approx(float(scores["rmse"][k]), rel=1e-9)
        assert got[f"wrmse_sqrt_before_time_avg_phys/{lead}"] == pytest.approx(
            float(scores["rmse_sqrt_before"][k]), rel=1e-9)
        assert got[f"acc/{lead}"] == pytest.approx(float(scores["acc"][k]), rel=1e-9)
    # overall: the root of the mean over forecasts and leads
    assert got["wrmse_phys/t2m"] == pytest.approx(float(np.sqrt(scores["mse"].mean())), rel=1e-9)
    assert got["wrmse_phys/t2m"] > got["wrmse_sqrt_before_time_avg_phys/t2m"]


# ---- day-of-year climatology -------------------------------------------------------------------


def seasonal_store(path, start: str, days: int, every_h: int = 6) -> tuple[str, np.ndarray]:
    """A 1-channel store with a seasonal and a diurnal cycle plus noise; train = all but the
    last 30 days, which are val and test (with a gap of invalid steps)."""
    time = np.arange(np.datetime64(f"{start}T00", "s"), np.datetime64(f"{start}T00", "s")
                     + np.timedelta64(days, "D"), np.timedelta64(every_h, "h"))
    t_len, (h, w) = len(time), (3, 4)
    day = (time - time[0]).astype(np.int64) / 86400
    gen = np.random.default_rng(1)
    frames = (280 + 10 * np.sin(2 * np.pi * day / 365.25)[:, None, None, None]
              + 3 * np.cos(2 * np.pi * day)[:, None, None, None]
              + gen.normal(0, 1, (t_len, 1, h, w))).astype(np.float32)
    valid = np.ones(t_len, bool)
    per_day = 24 // every_h
    split = t_len - 30 * per_day
    valid[split + 10:split + 20] = False
    layout = StoreLayout(
        time=time, channels=["t2m"], units=["K"], height=h, width=w,
        splits={"train": (0, split), "val": (split, t_len), "test": (split, t_len)},
        time_step=every_h * 3600, time_unit="s", lat=np.array([50.0, 49.0, 48.0]),
        lon=np.arange(w, dtype=float),
        metadata={"converter": "test", "converter_version": "1", "source": "synthetic",
                  "licence": "none", "citation": "none"})
    writer = create_store(str(path), layout)
    writer.write(0, frames, valid)
    return writer.finish("zscore").url, frames


def wb2_climatology(da: xr.DataArray, hours, window: int = 61) -> xr.DataArray:
    """scripts/compute_climatology.py's explicit hourly method, in xarray."""
    half = window // 2
    weights = np.concatenate([np.linspace(0, 1, half + 1), np.linspace(1, 0, half + 1)[1:]])
    weights = xr.DataArray(weights / weights.mean(), dims=["window"])
    out = []
    for hour in hours:
        sel = da.isel(time=da.time.dt.hour == hour)
        sel = sel.assign_coords(time=sel.time.astype("datetime64[D]"))
        years = [sel.sel(time=str(y)) for y in np.unique(sel.time.dt.year)]
        stacked = xr.concat([y.assign_coords(time=y.time.dt.dayofyear).rename(time="dayofyear")
                             for y in years], dim="year", join="outer")
        stacked = stacked.fillna(stacked.sel(dayofyear=365))
        stacked = stacked.pad(dayofyear=half, mode="wrap")
        stacked = stacked.rolling(dayofyear=window, center=True).construct("window")
        clim = stacked.weighted(weights).mean(("window", "year"))
        out.append(clim.isel(dayofyear=slice(half, -half)))
    return xr.concat(out, dim=xr.DataArray(list(hours), dims=["hour"]))


def test_day_of_year_climatology_equals_weatherbench2(tmp_path):
    # training 2003-2004, whole years as WB2's script expects (it fills every missing day of a
    # year with that year's day 365, meant for day 366; we skip missing days instead); 6-hourly
    url, frames = seasonal_store(tmp_path / "t2m.zarr", "2003-01-01", 731 + 30)
    from simvp_ray.data import open_dataset

    dataset = open_dataset(url)
    assert resolve_climatology(dataset, "auto")[0] == "day_of_year"
    clim = day_of_year_climatology(dataset)
    assert clim.hours.tolist() == [0, 6, 12, 18] and clim.table.shape == (4, 366, 1, 3, 4)

    start, stop = dataset.split_range("train")
    keep = dataset.valid[start:stop]
    da = xr.DataArray(frames[start:stop][keep, 0].astype(np.float64),
                      dims=["time", "y", "x"], coords={"time": dataset.time[start:stop][keep]})
    want = wb2_climatology(da, [0, 6, 12, 18])
    np.testing.assert_allclose(clim.table[:, :, 0], want.transpose("hour", "dayofyear", "y", "x"),
                               rtol=1e-9)
    # lookup by valid time: 2004-03-01 12:00 is day 61 of a leap year
    rows = clim.rows(np.array(["2004-03-01T12:00", "2005-01-01T00:00"], dtype="datetime64[s]"))
    flat = clim.table.reshape(-1, 1, 3, 4)
    np.testing.assert_array_equal(flat[rows[0]], clim.table[2, 60])
    np.testing.assert_array_equal(flat[rows[1]], clim.table[0, 0])
    with pytest.raises(ValueError, match="hour 3 of day"):
        clim.rows(np.array(["2004-03-01T03:00"], dtype="datetime64[s]"))


def test_under_a_year_of_training_data_gets_the_training_mean_or_a_clear_error(tmp_path):
    from simvp_ray.data import open_dataset

    url, _ = seasonal_store(tmp_path / "short.zarr", "2004-01-01", 200)
    dataset = open_dataset(url)
    kind, why = resolve_climatology(dataset, "auto")
    assert kind == "train_mean" and "170.0 days" in why
    with pytest.raises(ValueError, match=r"day-of-year climatology: .* 170.0 days, under the 365"):
        resolve_climatology(dataset, "day_of_year")
    with pytest.raises(ValueError, match="under the 365"):
        day_of_year_climatology(dataset)
    with pytest.raises(ValueError, match="climatology 'weekly'; valid"):
        resolve_climatology(dataset, "weekly")
    assert train_climatology(dataset).shape == (1, 3, 4)
