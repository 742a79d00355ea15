"""A stopped run continues with --resume from S3 storage and ends as an uninterrupted one.

The driver of the first run is SIGKILLed after its second checkpoint (a laptop closed, a
cluster torn down); `--resume` with the same --name and --storage picks it up.
"""

from __future__ import annotations

import json

import fsspec
import pytest
from helpers import load_job
from local_cluster import kill_driver_when

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.s3]

ARGS = ["model.translator_channels=32", "train.epochs=4", "data.batch_size=16",
        "data.val_batch_size=32", "train.seed=7"]


def read_json(url: str) -> dict:
    with fsspec.open(url, "r") as handle:
        return json.load(handle)


def test_killed_run_resumes_to_the_same_result(local_ray, small_store, s3_bucket, tmp_path,
                                               capsys):
    storage = f"s3://{s3_bucket}/runs"
    args = ["--set", f"data.url={small_store}", *ARGS, "--storage", storage]
    # the uninterrupted reference, in this process's Ray
    assert load_job("train").main([*args, "--name", "straight"]) == 0
    straight = read_json(f"{storage}/straight/result.json")

    # the same run in its own driver (and its own local Ray), killed after epoch 2
    fs = fsspec.filesystem("s3")
    kill_driver_when(
        ["jobs/train.py", *args, "--name", "killed"],
        lambda: len(fs.glob(f"{s3_bucket}/runs/killed/checkpoint_*/checkpoint.pt")) >= 2,
        what="two checkpoints of the first run")
    assert not fs.exists(f"{s3_bucket}/runs/killed/result.json")

    assert load_job("train").main([*args, "--name", "killed", "--resume"]) == 0
    resumed = read_json(f"{storage}/killed/result.json")
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    for key in ("mse", "mae", "ssim"):
        assert resumed["final"]["model"][key] == pytest.approx(straight["final"]["model"][key],
                                                               rel=1e-6)
    assert resumed["best_checkpoint"].startswith(f"s3://{s3_bucket}/runs/killed/checkpoint_")
    assert "the model beats persistence" in capsys.readouterr().out
