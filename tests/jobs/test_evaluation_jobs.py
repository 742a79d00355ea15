"""jobs/evaluate.py, predict.py, visualize.py without Ray: bad input fails before any work, and
the pictures (panels with map axes, GIFs) from an untrained checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import load_job
from PIL import Image

from simvp_ray.analysis.evaluation import format_evaluation
from simvp_ray.analysis.panels import colormap_for, plot_forecast_panel, save_forecast_gif
from simvp_ray.config import override
from simvp_ray.data import StoreLayout, create_store, make_synthetic, write_synthetic
from simvp_ray.data.schema import default_splits
from simvp_ray.models import build_model, to_openstl_state_dict
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import save_checkpoint
from simvp_ray.train.optim import build_optimizer, build_scheduler

TINY = ["model.translator_channels=16", "model.spatial_channels=8",
        "model.num_translator_blocks=2", "model.mlp_ratio=2"]


def make_checkpoint(folder, store: str, changes: list[str] = ()) -> str:
    """An untrained but well-formed checkpoint folder for the store."""
    config = override(get_preset("demo"), [f"data.url={store}", *TINY, *changes])
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, 1, 1)
    save_checkpoint(folder, model_state=to_openstl_state_dict(model), optimizer=optimizer,
                    scheduler=scheduler, epoch=0, global_step=0, config=config, history=[])
    return str(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval_jobs")
    store = write_synthetic(root / "s.zarr", n_frames=300, seed=2).url
    other = write_synthetic(root / "three.zarr", n_frames=300, channels=3, seed=2).url
    small = write_synthetic(root / "small.zarr", n_frames=300, size=16, seed=2).url
    good = make_checkpoint(root / "good", store)
    foreign = root / "foreign"
    foreign.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign / "checkpoint.pt")
    truncated = root / "truncated"
    shutil.copytree(good, truncated)
    data = (truncated / "checkpoint.pt").read_bytes()
    (truncated / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    (root / "empty").mkdir()
    data = make_synthetic(300, 2, 32, seed=2)  # the same frames, min-max scaled (MMNIST-like)
    layout = StoreLayout(time=data["time"], channels=["blobs_0", "blobs_1"], units=["1", "1"],
                         height=32, width=32, splits=default_splits(300), time_step=3600,
                         time_unit="s", metadata={"converter": "test", "converter_version": "1",
                                                  "source": "synthetic", "licence": "none",
                                                  "citation": "none"})
    writer = create_store(str(root / "minmax.zarr"), layout)
    writer.write(0, data["frames"], data["valid"])
    writer.finish("minmax")
    return {"root": root, "store": store, "three": other, "small": small, "good": good,
            "minmax": str(root / "minmax.zarr"),
            "foreign": str(foreign), "truncated": str(truncated), "empty": str(root / "empty")}


@pytest.mark.parametrize("job, args, message", [
    ("evaluate", ["{foreign}"], "is not a simvp_ray checkpoint (format None"),
    ("evaluate", ["{truncated}"], "is not a readable checkpoint (truncated"),
    ("evaluate", ["{empty}"], "no checkpoint at"),
    ("evaluate", ["{good}", "--data", "{three}"],
     "the checkpoint's model expects frames of 2 channels x 32 x 32, the store"),
    ("evaluate", ["{good}", "--data", "{small}"], "holds 2 channels (blobs_0, blobs_1) x 16 x 16"),
    ("evaluate", ["{good}", "--split", "dev"], "no split 'dev'; valid: ['test', 'train', 'val']"),
    ("evaluate", ["{good}", "--data", "{root}/missing.zarr"], "no Zarr store there"),
    ("evaluate", ["{good}", "--data", "{minmax}", "--protocol", "openstl"],
     "--protocol openstl re-normalises z-score (weather) stores per period; "),
    ("evaluate", ["{good}", "--climatology", "day_of_year"],
     "cannot fit a day-of-year climatology: "),
    ("predict", ["{truncated}", "--start", "2000-01-05", "--end", "2000-01-06", "--out",
                 "{root}/f.zarr"], "not a readable checkpoint"),
    ("predict", ["{good}", "--start", "2000-01-05", "--end", "2000-02-06", "--out",
                 "{root}/f.zarr"], "outside the data: forecasts can be initialised from"),
    ("predict", ["{good}", "--start", "2000-01-05", "--end", "2000-01-06", "--out",
                 "{store}"], "already holds a store that is not a forecast store"),
    ("predict", ["{good}", "--start", "2000-01-05", "--end", "2000-01-06", "--out",
                 "{root}/f.zarr", "--data", "{three}"], "expects frames of 2 channels"),
    ("visualize", ["{good}", "--channel", "rain", "--out", "{root}/p"],
     "--channel 'rain': valid: ['blobs_0', 'blobs_1']"),
    ("visualize", ["{good}", "--index", "999", "--out", "{root}/p"], "--index 999: split 'val'"),
    ("visualize", ["{root}/nothing", "--out", "{root}/p"], "no checkpoint at"),
])
def test_bad_input_is_a_clear_error_and_nothing_is_written(setup, capsys, job, args, message):
    full = [arg.format(**setup) for arg in args]
    assert load_job(job).main(full) == 2
    assert message in capsys.readouterr().err
    assert not (setup["root"] / "f.zarr").exists()
    assert (setup["root"] / "s.zarr" / "zarr.json").exists()  # the store was not replaced


def test_visualize_a_checkpoint_writes_a_panel_and_a_gif(setup, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert load_job("visualize").main([setup["good"], "--split", "test", "--index", "3",
                                       "--channel", "blobs_1", "--out", str(out)]) == 0
    assert "wrote panel" in capsys.readouterr().out
    assert (out / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "forecast.gif") as gif:
        assert gif.n_frames == 8  # 4 inputs + 4 lead times


@pytest.mark.parametrize("lat", [np.linspace(87.2, -87.2, 16), np.linspace(-87.2, 87.2, 16)])
def test_map_panels_and_gifs_have_lat_lon_axes(tmp_path, lat):
    rng = np.random.default_rng(0)
    x, y = 280 + rng.normal(size=(2, 4, 1, 16, 32)).astype(np.float32)
    pred = y + 0.5
    y[-1] = np.nan  # a lead past the data: no target
    lon = np.arange(32) * 11.25
    panel = plot_forecast_panel(x, y, pred, tmp_path / "map.png", channel_name="t2m",
                                units="K", lat=lat, lon=lon)
    assert panel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gif = save_forecast_gif(x, y, pred, tmp_path / "map.gif", channel_name="t2m", units="K",
                            lat=lat, lon=lon)
    with Image.open(gif) as image:
        assert image.n_frames == 8


def test_colormaps_suit_the_variable():
    assert colormap_for("t2m") == "RdYlBu_r"
    assert colormap_for("u_850") == "RdBu_r"  # diverging for signed wind components
    assert colormap_for("inflow") == "inferno"
    assert colormap_for("blobs_0") == "viridis"


def test_the_markdown_tables_show_lat_weighted_rmse_and_acc_per_variable():
    metrics = {"mse": 0.1, "mae": 0.2, "rmse": 0.3, "ssim": 0.9, "psnr": 20.0,
               "rmse_phys": 1.5, "mae_phys": 1.0, "mse/t1": 0.1, "rmse_phys/t1": 1.5,
               "ssim/t1": 0.9, "wrmse_phys/t2m": 1.4, "wrmse_phys/t2m/t1": 1.4,
               "acc/t2m": 0.95, "acc/t2m/t1": 0.95}
    results = {"split": "test", "data": "d.zarr", "checkpoint": "ck", "epoch": 4,
               "windows": 10, "out_frames": 1, "channels": ["t2m"], "units": ["K"],
               "climatology_definition": "mean", "latitude_weighted": True,
               "model": metrics, "persistence": metrics, "climatology": metrics,
               "cost": {"params": 1.5e6, "flops": 2e9, "forward_samples_per_s": 12.0,
                        "device": "cpu"}}
    table = format_evaluation(results)
    assert "| t2m | all | 1.4 | 1.4 | 1.4 | 0.95 | 0.95 |" in table
    assert "| forecast | mse | mae | ssim | psnr |" in table  # no openstl_spatial_norm: image
    metrics.update(mse_openstl=2.0, mae_openstl=1.0, rmse_openstl=1.4, openstl_spatial_norm=1.0)
    weather = format_evaluation(results)
    assert "| forecast | mse | mae | rmse |" in weather and "| model | 2 | 1 | 1.4 |" in weather
    assert "| t+1 |" in table and "| 1.500 | 2.000 | 12.0 | cpu |" in table


def test_a_run_folder_stands_for_its_best_checkpoint(setup, tmp_path):
    from simvp_ray.train.checkpoint import fetch_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"best_checkpoint": setup["good"]}))
    fetched = fetch_checkpoint(str(run))
    assert fetched.url == setup["good"] and len(fetched.sha256) == 64
    assert fetched.payload.config.model.translator_channels == 16


def test_openstl_protocol_statistics_and_per_window_climatology(setup):
    """The pieces of --protocol openstl and of the day-of-year lookup, without Ray."""
    from simvp_ray.data import open_dataset
    from simvp_ray.data.climatology import split_stats
    from simvp_ray.distributed.evaluate import (
        ClimatologySetup,
        protocol_stats,
        renormalization,
    )

    dataset = open_dataset(setup["store"])
    names = dataset.channels
    train, denorm = protocol_stats(dataset, "test", names, "default")
    assert denorm is train and renormalization(train, train) is None
    inputs, denorm = protocol_stats(dataset, "test", names, "openstl")
    np.testing.assert_array_equal(denorm.scale, dataset.stats.scale)  # as OpenSTL's t2m
    start, stop = dataset.split_range("test")
    frames = dataset.frames[start:stop][dataset.valid[start:stop]].astype(np.float64)
    np.testing.assert_allclose(inputs.offset, frames.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(inputs.scale, frames.std(axis=(0, 2, 3)), rtol=1e-6)
    a, b = (np.asarray(v).reshape(1, -1, 1, 1) for v in renormalization(train, inputs))
    stored = (frames - train.offset.reshape(1, -1, 1, 1)) / train.scale.reshape(1, -1, 1, 1)
    period = (frames - inputs.offset.reshape(1, -1, 1, 1)) / inputs.scale.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(stored * a + b, period, atol=1e-9)
    assert split_stats(dataset, "test", names[:1]).offset.shape == (1,)
    # per-window lookup: row of each target frame's step, t0 = first target step
    table = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 2, 3, 4))
    lookup = ClimatologySetup(table=table, rows=np.array([4, 3, 2, 1, 0, 0, 0]),
                              target_steps=np.array([0, 2]))
    got = lookup.at(np.array([0, 2]), 2, 2)
    assert got.shape == (2, 2, 2, 3, 4) and got[:, :, 0, 0, 0].tolist() == [[4, 2], [2, 0]]
    with pytest.raises(ValueError, match="carry no t0"):
        lookup.at(None, 2, 2)
