"""The real ERA5 UK GRIB end to end as a new user runs it: convert (33 x 49, a grid the encoder
cannot halve evenly), train one epoch of a tiny weather_t2m_gsta on local Ray, evaluate."""

from __future__ import annotations

import json
import math

import pytest
from helpers import load_job, shared_file

from simvp_ray.data import open_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the preset's 12 -> 12 frames and N_S, shrunk in width and depth; 4 steps of 8 windows
TINY = ["model.height=33", "model.width=49", "model.translator_channels=16",
        "model.spatial_channels=8", "model.num_translator_blocks=2", "model.mlp_ratio=2",
        "train.epochs=1", "train.max_steps_per_epoch=4", "data.batch_size=8",
        "data.val_batch_size=32", "scaling.cpus_per_worker=1"]


def test_era5_33x49_converts_trains_and_evaluates(local_ray, tmp_path, capsys):
    grib = str(shared_file("data/weatherbench/era5-2mt-2019-03-uk.grib"))
    store = str(tmp_path / "era5.zarr")
    assert load_job("prepare_data").main([
        "xarray", "--src", grib, "--dst", store, "--variables", "t2m",
        "--val-start", "2019-03-22", "--test-start", "2019-03-27"]) == 0
    assert open_dataset(store).frames.shape == (744, 1, 33, 49)

    storage = tmp_path / "runs"
    assert load_job("train").main(["--preset", "weather_t2m_gsta", "--set", f"data.url={store}",
                                   *TINY, "--storage", str(storage), "--name", "era5"]) == 0
    result = json.loads((storage / "era5" / "result.json").read_text())
    assert len(result["history"]) == 1 and math.isfinite(result["final"]["model"]["mse"])

    out = tmp_path / "eval"
    assert load_job("evaluate").main([result["latest_checkpoint"], "--split", "test",
                                      "--out", str(out), "--no-cost"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["windows"] == 120 - 23  # every 12 -> 12 window of 2019-03-27 .. 31
    assert all(math.isfinite(v) for v in metrics["model"].values())
    assert "rmse_phys" in metrics["model"] and "| persistence |" in capsys.readouterr().out
