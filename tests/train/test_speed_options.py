"""bf16, channels_last and torch.compile each train two steps and resume exactly (plain loop, no
Ray); the in-epoch progress line every train.log_every_s."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from simvp_ray.config import override
from simvp_ray.presets import get_preset
from simvp_ray.train.checkpoint import load_checkpoint
from simvp_ray.train.loop import Runtime, run_training
from simvp_ray.train.performance import bf16_supported

TINY = {"model.channels": 1, "model.height": 16, "model.width": 16,
        "model.spatial_channels": 8, "model.translator_channels": 16,
        "model.num_translator_blocks": 2, "model.mlp_ratio": 2.0, "data.batch_size": 4,
        "train.epochs": 2, "optim.lr": 3e-3}


def windows(num: int, seed: int) -> dict[str, np.ndarray]:
    frames = np.random.default_rng(seed).normal(size=(num, 8, 1, 16, 16)).astype(np.float32)
    frames = np.cumsum(frames, axis=1) / 4  # a little structure in time
    return {"x": frames[:, :4], "y": frames[:, 4:]}


def runtime(folder, reports: list, steps: int = 1, resume=None, log=None) -> Runtime:
    train, val = windows(4 * steps, 0), windows(4, 1)

    def train_batches(epoch: int):
        for start in range(0, 4 * steps, 4):
            yield {key: value[start:start + 4] for key, value in train.items()}

    return Runtime(train_batches=train_batches, val_batches=lambda: [val], steps_per_epoch=steps,
                   checkpoint_dir=folder, report=lambda m, c: reports.append((m, c)),
                   resume=resume, log=log or (lambda line: None))


OPTIONS = [
    pytest.param({"train.precision": "bf16"}, id="bf16", marks=pytest.mark.skipif(
        not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 support")),
    pytest.param({"train.channels_last": True}, id="channels_last"),
    pytest.param({"train.compile": True}, id="compile"),
]


@pytest.mark.parametrize("option", OPTIONS)
def test_speed_option_trains_two_steps_and_resumes_exactly(tmp_path, option):
    config = override(get_preset("demo"), {**TINY, **option})
    straight = []
    run_training(config, runtime(tmp_path / "straight", straight))
    assert [m["epoch"] for m, _ in straight] == [0, 1]
    assert all(np.isfinite(m["train/loss"]) for m, _ in straight)

    # resume from the first epoch's checkpoint: the second step must come out the same
    first = load_checkpoint(straight[0][1])
    assert first.config.train == config.train
    resumed = []
    run_training(config, runtime(tmp_path / "resumed", resumed, resume=first))
    assert [m["epoch"] for m, _ in resumed] == [1]
    for key in ("train/loss", "val/mse", "val/mae"):
        assert resumed[0][0][key] == pytest.approx(straight[1][0][key], rel=1e-5), key


def test_a_progress_line_every_log_every_s_within_the_epoch(tmp_path):
    config = override(get_preset("demo"), {**TINY, "train.epochs": 1,
                                           "train.log_every_s": 1e-9})
    lines = []
    run_training(config, runtime(tmp_path, [], steps=3, log=lines.append))
    steps = [line for line in lines if " step " in line]
    assert len(steps) == 3, lines
    pattern = r"epoch 1/1  step (\d)/3  [\d.]+ samples/s  loss [\d.]+  epoch eta \d+s"
    assert [int(re.fullmatch(pattern, line).group(1)) for line in steps] == [1, 2, 3]
    quiet = []
    run_training(override(config, {"train.log_every_s": 0}),
                 runtime(tmp_path / "quiet", [], steps=3, log=quiet.append))
    assert not [line for line in quiet if " step " in line]
