"""jobs/evaluate.py, predict.py and visualize.py on one tiny trained run: local and on S3.

One training run (module fixture) serves every test: evaluation must give the training job's
final validation metrics, prediction must write a valid store equal to running the model
directly, rerun idempotently and resume an interrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import load_job

from simvp_ray.config import override
from simvp_ray.data import (
    StoreLayout,
    create_store,
    denormalize,
    iter_numpy_batches,
    make_synthetic,
    open_dataset,
    read_windows,
)
from simvp_ray.data.forecasts import DONE, open_forecasts
from simvp_ray.data.schema import default_splits
from simvp_ray.models import build_model, to_openstl_state_dict
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import load_checkpoint, save_checkpoint
from simvp_ray.train.inference import model_from_checkpoint, predict_numpy
from simvp_ray.train.optim import build_optimizer, build_scheduler

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["model.translator_channels=16", "model.spatial_channels=8",
        "model.num_translator_blocks=2", "model.mlp_ratio=2", "train.epochs=2",
        "train.max_steps_per_epoch=6", "data.batch_size=16", "data.val_batch_size=32",
        "scaling.cpus_per_worker=1"]
START, END = "2000-01-20T00", "2000-01-23T12"  # 85 init times: 3 chunks of 32


@pytest.fixture(scope="module")
def trained(local_ray, small_store, tmp_path_factory) -> dict:
    storage = tmp_path_factory.mktemp("runs")
    args = ["--set", f"data.url={small_store}", *TINY, "--storage", str(storage),
            "--name", "tiny"]
    assert load_job("train").main(args) == 0
    result = json.loads((storage / "tiny" / "result.json").read_text())
    return {"result": result, "checkpoint": result["latest_checkpoint"], "store": small_store}


def test_evaluate_equals_the_training_jobs_validation_metrics(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert load_job("evaluate").main([trained["checkpoint"], "--split", "val",
                                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| persistence |" in printed and "| climatology |" in printed and "t+4" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    final = trained["result"]["final"]
    for forecast in ("model", "persistence"):
        for key, value in final[forecast].items():
            assert metrics[forecast][key] == pytest.approx(value, rel=1e-5), (forecast, key)
    assert metrics["windows"] > 0 and metrics["split"] == "val"
    for lead in range(1, 5):  # per lead time, normalised and physical
        assert {f"mse/t{lead}", f"rmse_phys/t{lead}"} <= set(metrics["model"])
    assert metrics["climatology"]["mse"] > metrics["model"]["mse"]
    assert metrics["cost"]["params"] > 0 and metrics["cost"]["flops"] > 0
    assert metrics["cost"]["forward_samples_per_s"] > 0
    assert "| forecast | mse |" in (out / "metrics.md").read_text()


def _direct_forecasts(checkpoint: str, store: str, init_times: np.ndarray) -> np.ndarray:
    """The model run by hand on the windows ending at each init time: (N, T_out, C, H, W)."""
    dataset = open_dataset(store)
    steps = np.searchsorted(dataset.time, init_times)
    x = read_windows(dataset, steps - 3, 4, 0)["x"]
    pred = predict_numpy(model_from_checkpoint(load_checkpoint(checkpoint)), x)
    return denormalize(pred, dataset.stats)


def test_predict_writes_a_valid_store_equal_to_the_model_and_resumes(trained, tmp_path,
                                                                     capsys):
    out = str(tmp_path / "forecasts.zarr")
    args = [trained["checkpoint"], "--start", START, "--end", END, "--out", out]
    assert load_job("predict").main(args) == 0
    assert "85 init times" in capsys.readouterr().out
    assert load_job("prepare_data").main(["validate", out]) == 0
    assert "converter simvp_ray.predict" in capsys.readouterr().out
    forecasts = open_forecasts(out)
    assert forecasts.lead.tolist() == [3600, 7200, 10800, 14400]
    assert forecasts.info["request"]["checkpoint"] == trained["checkpoint"]
    assert forecasts.info["request"]["config"]["model"]["translator_channels"] == 16
    stored = forecasts.forecast_array(0, 85)
    expected = _direct_forecasts(trained["checkpoint"], trained["store"],
                                 forecasts.dataset.time)
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)

    assert load_job("predict").main(args) == 0  # same request: nothing recomputed
    assert "0 written, 3 already done" in capsys.readouterr().out
    group = zarr.open_group(out, mode="r+")  # an interrupted run: chunk 1 never finished
    group[DONE][1] = False
    group["frames"][32:64] = 0.0
    group.attrs["complete"] = False
    assert load_job("predict").main(args) == 0
    assert "1 written, 2 already done" in capsys.readouterr().out
    np.testing.assert_allclose(open_forecasts(out).forecast_array(0, 85), stored, rtol=1e-6,
                               atol=1e-6)

    other = [trained["checkpoint"], "--start", START, "--end", "2000-01-23T13", "--out", out]
    assert load_job("predict").main(other) == 2
    assert "already holds forecasts of checkpoint" in capsys.readouterr().err

    pictures = tmp_path / "pictures"
    assert load_job("visualize").main([out, "--out", str(pictures), "--init",
                                       "2000-01-21T06"]) == 0
    assert (pictures / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (pictures / "forecast.gif").read_bytes()[:6] == b"GIF89a"


@pytest.mark.s3
def test_evaluate_predict_visualize_on_s3(trained, s3_bucket, tmp_path, capsys):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(trained["checkpoint"], f"{s3_bucket}/ckpt", recursive=True)
    fs.put(trained["store"], f"{s3_bucket}/data.zarr", recursive=True)
    checkpoint, data = f"s3://{s3_bucket}/ckpt", f"s3://{s3_bucket}/data.zarr"

    assert load_job("evaluate").main([checkpoint, "--data", data, "--split", "test",
                                      "--out", f"s3://{s3_bucket}/eval", "--no-cost"]) == 0
    metrics = json.loads(fs.cat(f"{s3_bucket}/eval/metrics.json"))
    assert metrics["data"] == data and metrics["split"] == "test" and metrics["windows"] > 0
    assert metrics["model"]["mse"] < metrics["climatology"]["mse"]

    out = f"s3://{s3_bucket}/forecasts.zarr"
    args = [checkpoint, "--data", data, "--start", "2000-01-24T00", "--end", "2000-01-25T23",
            "--out", out]
    assert load_job("predict").main(args) == 0
    assert load_job("prepare_data").main(["validate", out]) == 0
    forecasts = open_forecasts(out)
    expected = _direct_forecasts(trained["checkpoint"], trained["store"],
                                 forecasts.dataset.time)
    np.testing.assert_allclose(forecasts.forecast_array(0, len(expected)), expected,
                               rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert load_job("predict").main(args) == 0
    assert "0 written" in capsys.readouterr().out
    assert load_job("visualize").main([out, "--out", str(tmp_path / "pics"), "--no-gif"]) == 0
    assert Path(tmp_path / "pics" / "panel.png").exists()


def _lat_store(path) -> str:
    """A one-channel "t2m" store in kelvin on a 32 x 32 lat/lon grid (WeatherBench-like)."""
    data = make_synthetic(n_frames=240, channels=1, size=32, seed=5, gaps=0)
    layout = StoreLayout(
        time=data["time"], channels=["t2m"], units=["K"], height=32, width=32,
        splits=default_splits(240), time_step=3600, time_unit="s",
        lat=np.linspace(87.1875, -87.1875, 32), lon=np.arange(32) * 11.25,
        metadata={"converter": "test", "converter_version": "1", "source": "synthetic",
                  "licence": "none", "citation": "none"})
    writer = create_store(str(path), layout)
    writer.write(0, 250.0 + 40.0 * data["frames"], data["valid"])
    return writer.finish("zscore").url


def save_untrained_checkpoint(config, folder) -> None:
    """A checkpoint of a freshly initialised model: enough to score baselines and plumbing."""
    model = build_model(config.model)
    optimizer = build_optimizer(model, config.optim)
    save_checkpoint(folder, model_state=to_openstl_state_dict(model), optimizer=optimizer,
                    scheduler=build_scheduler(optimizer, config.optim, 1, 1), epoch=0,
                    global_step=0, config=config, history=[])


def test_weatherbench_metrics_lat_weighted_rmse_and_acc(local_ray, tmp_path):
    """Lat-weighted RMSE of persistence equals WeatherBench 2's definition computed here."""
    store = _lat_store(tmp_path / "t2m.zarr")
    config = override(get_preset("demo"), [f"data.url={store}", "model.channels=1", *TINY[:4]])
    save_untrained_checkpoint(config, tmp_path / "ck")
    out = tmp_path / "eval"
    assert load_job("evaluate").main([str(tmp_path / "ck"), "--out", str(out), "--no-cost"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["latitude_weighted"] and "Latitude-weighted" in (out / "metrics.md").read_text()

    dataset = open_dataset(store)
    windows = next(iter_numpy_batches(dataset, "test", 4, 4, 10_000))
    std = dataset.stats.scale[0]
    error = (windows["x"][:, -1:] - windows["y"])[:, :, 0] * std  # (N, T, H, W) kelvin
    weights = np.cos(np.deg2rad(dataset.lat))[:, None]  # = WB2's cell areas on this grid
    weights = weights / weights.mean()
    per_forecast = (weights * error.astype(np.float64) ** 2).mean(axis=(2, 3))  # (N, T) MSE
    persistence = metrics["persistence"]
    # WB2's RMSE: the root after the mean over forecasts; RMSESqrtBeforeTimeAvg: before it
    assert persistence["wrmse_phys/t2m"] == pytest.approx(np.sqrt(per_forecast.mean()), rel=1e-6)
    assert persistence["wrmse_phys/t2m/t2"] == pytest.approx(np.sqrt(per_forecast[:, 1].mean()),
                                                             rel=1e-6)
    assert persistence["wrmse_sqrt_before_time_avg_phys/t2m"] == pytest.approx(
        np.sqrt(per_forecast).mean(), rel=1e-6)
    assert metrics["climatology"]["acc/t2m"] == 0.0  # its anomaly is zero everywhere
    assert -1.0 <= metrics["model"]["acc/t2m/t1"] <= 1.0
    assert np.isfinite(metrics["model"]["wrmse_phys/t2m"])
    # 240 hourly steps: no year of training data, so the training mean, and metrics.json says so
    assert metrics["climatology_kind"] == "train_mean" and "days" in metrics["climatology_reason"]

    # OpenSTL's protocol: the test split z-scored with its own statistics; metric() de-normalises
    # with the training std, so persistence's errors scale by std_train / std_test
    out = tmp_path / "eval-openstl"
    assert load_job("evaluate").main([str(tmp_path / "ck"), "--out", str(out), "--no-cost",
                                      "--protocol", "openstl"]) == 0
    openstl = json.loads((out / "metrics.json").read_text())
    assert openstl["protocol"] == "openstl"
    ratio = std / openstl["period_stats"]["std"][0]
    assert openstl["persistence"]["wrmse_phys/t2m"] == pytest.approx(
        ratio * persistence["wrmse_phys/t2m"], rel=1e-5)


def test_a_year_of_training_data_gets_the_day_of_year_climatology(local_ray, tmp_path):
    """Two years, 6-hourly: evaluate's baseline and ACC use WB2's day-of-year climatology at
    each target's valid time, found from the window time index t0 the batches carry."""
    from simvp_ray.data.climatology import day_of_year_climatology
    from simvp_ray.data.windows import window_starts

    n, h = 2 * 1461, 32  # 2003-2004, four steps a day
    time = np.datetime64("2003-01-01T00", "s") + np.arange(n) * np.timedelta64(6, "h")
    day = np.arange(n) / 4
    gen = np.random.default_rng(0)
    frames = (280 + 10 * np.sin(2 * np.pi * day / 365.25)[:, None, None, None]
              + gen.normal(0, 1, (n, 1, h, h))).astype(np.float32)
    split = n - 4 * 40
    layout = StoreLayout(
        time=time, channels=["t2m"], units=["K"], height=h, width=h,
        splits={"train": (0, split), "val": (split, n), "test": (split, n)}, time_step=6 * 3600,
        time_unit="s", lat=np.linspace(87.1875, -87.1875, h), lon=np.arange(h) * 11.25,
        metadata={"converter": "test", "converter_version": "1", "source": "synthetic",
                  "licence": "none", "citation": "none"})
    writer = create_store(str(tmp_path / "two-years.zarr"), layout)
    writer.write(0, frames, np.ones(n, bool))
    store = writer.finish("zscore").url
    config = override(get_preset("demo"), [f"data.url={store}", "model.channels=1", *TINY[:4]])
    save_untrained_checkpoint(config, tmp_path / "ck")
    out = tmp_path / "eval"
    assert load_job("evaluate").main([str(tmp_path / "ck"), "--out", str(out), "--no-cost"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["climatology_kind"] == "day_of_year"
    # the climatology baseline's MSE, computed here from the table at each target's time
    dataset = open_dataset(store)
    clim = day_of_year_climatology(dataset)
    starts = window_starts(dataset, "test", 4, 4)
    steps = starts[:, None] + 4 + np.arange(4)[None, :]  # (N, 4) target steps
    forecast = clim.table.reshape(-1, 1, h, h)[clim.rows(dataset.time[steps].ravel())]
    error = (forecast - frames[steps.ravel()]) / dataset.stats.scale[0]
    assert metrics["climatology"]["mse"] == pytest.approx(np.mean(error**2), rel=1e-5)
    assert metrics["climatology"]["acc/t2m"] == 0.0
