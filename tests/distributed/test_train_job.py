"""jobs/train.py on a local Ray: result.json, checkpoints, and equality with the plain loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_job

from simvp_ray.config import override
from simvp_ray.data import iter_numpy_batches, open_dataset, read_windows, window_starts
from simvp_ray.data.batches import shard_positions
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import load_checkpoint
from simvp_ray.train.loop import Runtime, run_training
from simvp_ray.train.metrics import MetricContext

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = ["model.translator_channels=32", "train.epochs=2", "data.batch_size=16",
         "data.val_batch_size=32"]


def test_train_job_writes_result_and_checkpoints(local_ray, small_store, tmp_path, capsys):
    args = ["--set", f"data.url={small_store}", *SMALL, "--storage", str(tmp_path),
            "--name", "run1"]
    assert load_job("train").main(args) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and "| persistence |" in out and "best checkpoint:" in out
    result = json.loads((tmp_path / "run1" / "result.json").read_text())
    assert result["epochs_run"] == 2
    assert [row["epoch"] for row in result["history"]] == [0, 1]
    assert result["final"]["model"]["mse"] < result["final"]["persistence"]["mse"]
    assert result["config"]["data"]["url"] == small_store
    run = tmp_path / "run1"
    assert (run / "panel_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert result["artifacts"]["panel"] == str(run / "panel_val.png")
    best = Path(result["best_checkpoint"])
    payload = load_checkpoint(best)
    assert payload.config.model.translator == "gsta"
    assert payload.history[payload.epoch]["val/mse"] == pytest.approx(
        result["best"]["model"]["mse"])
    # a second launch under the same name must not silently resume or overwrite
    assert load_job("train").main(args) == 2
    assert "already exists" in capsys.readouterr().err
    other_model = ["--set", f"data.url={small_store}", *SMALL, "model.translator=incepu",
                   "--storage", str(tmp_path), "--name", "run1", "--resume"]
    assert load_job("train").main(other_model) == 2
    assert "cannot resume 'run1': its checkpoints hold a different model" in (
        capsys.readouterr().err)


def test_non_finite_loss_stops_without_retries(local_ray, small_store, tmp_path, capsys):
    args = ["--set", f"data.url={small_store}", *SMALL, "optim.lr=1e12",
            "optim.schedule=constant", "--storage", str(tmp_path), "--name", "nan"]
    assert load_job("train").main(args) == 3
    err = capsys.readouterr().err
    assert "training stopped: loss is" in err and "at epoch 0 step" in err


@pytest.mark.parametrize("mode, shuffle", [("resident", True), ("streaming", False)])
def test_ray_path_equals_plain_pytorch_loop(local_ray, small_store, tmp_path, mode, shuffle):
    """Same data, seed and order: the same final metrics to float precision. Resident and
    shuffled, the plain loop gets the windows in the resident order, one global permutation
    per epoch drawn from (seed, epoch); streaming, in time order."""
    settings = [f"data.url={small_store}", *SMALL, f"data.shuffle={str(shuffle).lower()}",
                f"data.mode={mode}"]
    job_args = ["--set", *settings, "--storage", str(tmp_path), "--name", "ordered"]
    assert load_job("train").main(job_args) == 0
    ray_result = json.loads((tmp_path / "ordered" / "result.json").read_text())
    # the run records the data path it took
    assert [attempt["data_mode"] for attempt in ray_result["attempts"]] == [mode]

    config = override(get_preset("demo"), settings)
    model, data = config.model, config.data
    dataset = open_dataset(small_store)
    starts = window_starts(dataset, "train", model.in_frames, model.out_frames)
    reports = []

    def train_batches(epoch: int):
        order = starts[shard_positions(len(starts), 0, 1, seed=config.train.seed, epoch=epoch,
                                       shuffle=shuffle)]
        for at in range(0, len(order) - data.batch_size + 1, data.batch_size):
            yield read_windows(dataset, order[at : at + data.batch_size], model.in_frames,
                               model.out_frames)

    runtime = Runtime(
        train_batches=train_batches,
        val_batches=lambda: iter_numpy_batches(small_store, "val", model.in_frames,
                                               model.out_frames, data.val_batch_size),
        steps_per_epoch=len(starts) // data.batch_size, checkpoint_dir=tmp_path / "plain",
        report=lambda metrics, folder: reports.append(metrics),
        metrics=MetricContext(dataset.stats.offset, dataset.stats.scale, "zscore"),
        log=lambda line: None)
    run_training(config, runtime)
    for key in ("mse", "mae", "ssim"):
        assert ray_result["final"]["model"][key] == pytest.approx(reports[-1][f"val/{key}"],
                                                                  rel=1e-5)
    for epoch in (0, 1):
        assert ray_result["history"][epoch]["train/loss"] == pytest.approx(
            reports[epoch]["train/loss"], rel=1e-5)
    assert np.isfinite(ray_result["final"]["model"]["mse"])
    assert 0 <= ray_result["history"][-1]["train/data_wait_frac"] < 1


@pytest.mark.parametrize("args, message", [
    (["--preset", "taxibj_lstm"], "unknown preset 'taxibj_lstm'"),
    (["--set", "optim.learnrate=1"], "unknown config key 'optim.learnrate'"),
    (["--set", "train.epochs=two"], "train.epochs: expected int"),
    (["--set", "model.channels=3"], "holds frames of 2 channels x 32 x 32 but the model "
                                    "expects 3 x 32 x 32"),
    (["--num-workers", "16"], "cannot place the training workers: 16 workers x 2 CPU need 32"),
    (["--name", "missing", "--resume"], "cannot resume: no run 'missing'"),
    (["--storage", "/proc/simvp_runs"], "cannot write to storage '/proc/simvp_runs'"),
    (["--set", "data.mode=resident", "data.resident_max_bytes=1000"],
     "data.mode=resident: the train and val splits take 0.00418 GB as normalised float32 "
     "frames, over data.resident_max_bytes=1e-06 GB"),
    (["--set", "data.mode=fast"], "data.mode='fast': valid modes are auto, resident, streaming"),
])
def test_bad_input_is_a_clear_error(local_ray, small_store, tmp_path, capsys, args, message):
    full = ["--set", f"data.url={small_store}", "--storage", str(tmp_path), *args]
    if "--storage" in args:  # the last --storage wins
        full = ["--set", f"data.url={small_store}", *args]
    if "--set" in args:  # merge the two --set lists
        full = ["--set", f"data.url={small_store}", *args[1:], "--storage", str(tmp_path)]
    assert load_job("train").main(full) == 2
    assert message in capsys.readouterr().err


def test_elastic_worker_range_becomes_a_ray_scaling_range():
    from simvp_ray.distributed.trainer import scaling_config

    parse = load_job("train").parse_workers
    elastic = override(get_preset("demo"), parse("1-3"))
    assert scaling_config(elastic).num_workers == (1, 3)
    fixed = override(get_preset("demo"), parse("2"))
    assert scaling_config(fixed).num_workers == 2
    assert scaling_config(fixed).placement_strategy == "SPREAD"
