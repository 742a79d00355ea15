"""The plain-PyTorch training loop: learns, checkpoints, resumes exactly, fails loudly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from simvp_ray.config import RunConfig, override, to_dict
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import CHECKPOINT_FILE, CheckpointPayload, load_checkpoint
from simvp_ray.train.loop import NonFiniteLossError, Runtime, run_training
from simvp_ray.train.metrics import MetricContext


def moving_wave_windows(num: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Windows of a travelling sine wave: the future is a shift of the past."""
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=num)
    speeds = rng.uniform(0.2, 0.5, size=num)
    grid = np.arange(16, dtype=np.float32)
    t = np.arange(8, dtype=np.float32)
    wave = np.sin(0.4 * (grid[None, None, None, :] + grid[None, None, :, None])
                  - speeds[:, None, None, None] * 4 * t[None, :, None, None]
                  + phases[:, None, None, None])  # (N, 8, 16, 16)
    frames = wave[:, :, None].astype(np.float32)  # (N, 8, 1, 16, 16)
    return {"x": frames[:, :4], "y": frames[:, 4:]}


def tiny_config(epochs: int = 3) -> RunConfig:
    config = get_preset("demo")
    return override(config, {"model.channels": 1, "model.height": 16, "model.width": 16,
                             "model.translator_channels": 32, "train.epochs": epochs,
                             "data.batch_size": 8, "optim.lr": 3e-3})


def make_runtime(tmp_path, reports: list, resume=None, windows=None) -> Runtime:
    windows = windows or moving_wave_windows(64)
    val = moving_wave_windows(24, seed=1)

    def train_batches(epoch: int):
        order = np.random.default_rng(100 + epoch).permutation(len(windows["x"]))
        for start in range(0, len(order) - 7, 8):
            index = order[start:start + 8]
            yield {"x": windows["x"][index], "y": windows["y"][index]}

    def val_batches():
        for start in range(0, 24, 10):
            yield {"x": val["x"][start:start + 10], "y": val["y"][start:start + 10]}

    return Runtime(train_batches=train_batches, val_batches=val_batches, steps_per_epoch=8,
                   checkpoint_dir=tmp_path, report=lambda m, c: reports.append((m, c)),
                   metrics=MetricContext(offset=[0.0], scale=[2.0], normalization="zscore"),
                   resume=resume,
                   log=lambda line: None)


def test_training_beats_persistence_and_reports_every_epoch(tmp_path):
    reports = []
    final = run_training(tiny_config(epochs=4), make_runtime(tmp_path, reports))
    assert [m["epoch"] for m, _ in reports] == [0, 1, 2, 3]
    assert reports[-1][0]["train/loss"] < reports[0][0]["train/loss"]
    assert final["val/mse"] < final["val_persistence/mse"]
    assert final["val/mse_phys"] == pytest.approx(4 * final["val/mse"])
    assert {"val/mse/t1", "val/ssim", "val/psnr", "lr", "train/samples_per_s"} <= final.keys()
    assert final["train/samples"] == 64
    # the logged rate is the last step's: OneCycle ends annealed to lr / 25 / 1e4, not past it
    assert final["lr"] == pytest.approx(3e-3 / 25 / 1e4, rel=0.05)


def test_latitude_weighted_rmse_per_named_channel(tmp_path):
    runtime = make_runtime(tmp_path, [])
    runtime.metrics = dataclasses.replace(runtime.metrics, channel_names=["wave"],
                                          latitudes=np.linspace(-84.375, 84.375, 16))
    final = run_training(tiny_config(epochs=1), runtime)
    assert {"val/wrmse/wave", "val/wrmse_phys/wave", "val/mse/wave"} <= final.keys()
    assert final["val/wrmse_phys/wave"] == pytest.approx(2 * final["val/wrmse/wave"])


def test_checkpoint_every_k_epochs_and_at_the_end(tmp_path):
    reports = []
    config = override(tiny_config(epochs=3), {"train.checkpoint_every": 2})
    run_training(config, make_runtime(tmp_path, reports))
    saved = [c.name if c else None for _, c in reports]
    assert saved == [None, "epoch_0001", "epoch_0002"]
    payload = load_checkpoint(reports[-1][1])
    assert payload.epoch == 2 and payload.config == config
    assert [row["epoch"] for row in payload.history] == [0, 1, 2]
    assert "enc.enc.0.conv.conv.weight" in payload.model  # OpenSTL key names


def test_resumed_run_ends_with_the_same_metrics(tmp_path):
    config = tiny_config(epochs=3)
    straight = []
    run_training(config, make_runtime(tmp_path / "a", straight))
    interrupted = load_checkpoint(straight[1][1])  # as if the run had died after epoch 1
    resumed = []
    run_training(config, make_runtime(tmp_path / "c", resumed, resume=interrupted))
    assert [m["epoch"] for m, _ in resumed] == [2]
    assert [row["epoch"] for row in load_checkpoint(resumed[-1][1]).history] == [0, 1, 2]
    for key in ("val/mse", "val/ssim", "train/loss"):
        assert resumed[-1][0][key] == pytest.approx(straight[-1][0][key], rel=1e-6, abs=1e-9)


def test_resume_with_another_model_config_is_refused(tmp_path):
    reports = []
    run_training(tiny_config(epochs=1), make_runtime(tmp_path, reports))
    payload = load_checkpoint(reports[-1][1])
    other = override(tiny_config(epochs=2), {"model.translator": "incepu"})
    with pytest.raises(ValueError, match="cannot resume: the checkpoint's model config differs"):
        run_training(other, make_runtime(tmp_path, [], resume=payload))


def test_nan_loss_stops_naming_epoch_and_step(tmp_path):
    windows = moving_wave_windows(64)
    windows["y"][5] = np.nan
    with pytest.raises(NonFiniteLossError, match="at epoch 0 step \\d+"):
        run_training(tiny_config(), make_runtime(tmp_path, [], windows=windows))
    assert not list(tmp_path.glob("epoch_*"))  # no checkpoint of a broken model


def test_not_a_checkpoint_is_a_value_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"format": "other"}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a simvp_ray checkpoint"):
        load_checkpoint(tmp_path)


def same(a, b) -> bool:
    """Equal values, tensors compared exactly, containers of the same type and keys."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def test_checkpoint_payload_is_exactly_what_torch_saves(tmp_path):
    """The typed payload's dict is the file's dict (so format-1 files written before it load),
    and its key names are pinned."""
    reports = []
    run_training(tiny_config(epochs=1), make_runtime(tmp_path, reports))
    saved = torch.load(reports[-1][1] / CHECKPOINT_FILE, weights_only=True)
    assert list(saved) == ["format", "model", "optimizer", "scheduler", "epoch", "global_step",
                           "rng", "config", "history", "method"]
    assert saved["format"] == "simvp_ray-checkpoint/1"
    assert saved["config"] == json.dumps(to_dict(tiny_config(epochs=1)))  # format 1's config text
    payload = CheckpointPayload.from_dict(saved)
    assert payload.config == tiny_config(epochs=1) and payload.epoch == 0
    assert same(payload.to_dict(), saved)


def test_checkpoint_missing_a_field_names_it_and_the_file(tmp_path):
    reports = []
    run_training(tiny_config(epochs=1), make_runtime(tmp_path / "run", reports))
    saved = torch.load(reports[-1][1] / CHECKPOINT_FILE, weights_only=True)
    del saved["method"]  # format-1 files written before training methods: the method starts anew
    torch.save(saved, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").method == {}
    del saved["global_step"]
    torch.save(saved, tmp_path / "broken.pt")
    with pytest.raises(ValueError,
                       match="broken.pt: missing field 'global_step' of CheckpointPayload"):
        load_checkpoint(tmp_path / "broken.pt")
    saved["global_step"], saved["config"] = 0, saved["config"].replace('"lr"', '"rate"')
    with pytest.raises(ValueError, match="checkpoint: its config does not parse: .*'rate'"):
        CheckpointPayload.from_dict(saved)
    with pytest.raises(ValueError, match="unknown field.*'extra'"):
        CheckpointPayload.from_dict({**torch.load(reports[-1][1] / CHECKPOINT_FILE,
                                                  weights_only=True), "extra": 1})


def test_training_steps_do_not_sync_with_the_host(tmp_path, monkeypatch):
    """Host syncs (.item() / .cpu() in simvp_ray's code) of a run do not grow with its steps:
    the non-finite check reads the device every FINITE_CHECK_EVERY steps and at the epoch's
    end, not every step. (torch's Adam reads its CPU step counters with .item(): not a device
    sync, and not ours, so calls from torch itself are not counted.)"""
    import sys

    from simvp_ray.train.loop import FINITE_CHECK_EVERY

    calls = []
    for name in ("item", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if "simvp_ray" in sys._getframe(1).f_code.co_filename:
                calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def syncs(num_windows: int) -> int:
        runtime = make_runtime(tmp_path / str(num_windows), [],
                               windows=moving_wave_windows(num_windows))
        runtime.steps_per_epoch = num_windows // 8
        calls.clear()
        run_training(tiny_config(epochs=1), runtime)
        return len(calls)

    extra_steps = FINITE_CHECK_EVERY - 9  # both runs stay below the first in-epoch check
    few, many = syncs(64), syncs(64 + 8 * extra_steps)
    assert many == few, f"{many - few} host syncs for {extra_steps} more steps"


def test_epoch_metrics_report_data_wait_and_tflops(tmp_path):
    final = run_training(tiny_config(epochs=1), make_runtime(tmp_path, []))
    assert 0 <= final["train/data_wait_frac"] < 1
    assert final["train/tflops"] > 0
    assert "train/mfu" not in final  # CPU: no peak to compare with
