"""A stopped run continues with --resume from S3 storage and ends as an uninterrupted one.

The driver of the first run is SIGKILLed after its second checkpoint (a laptop closed, a
cluster torn down); `--resume` with the same --name and --storage picks it up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import fsspec
import pytest
from helpers import REPO_ROOT, load_job
from local_cluster import end_processes, processes_mentioning, short_temp_dir, wait_for

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
    ray_tmp = short_temp_dir()
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "jobs/train.py", *args, "--name", "killed"],
                              cwd=REPO_ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = fsspec.filesystem("s3")
    try:
        wait_for(lambda: len(fs.glob(f"{s3_bucket}/runs/killed/checkpoint_*/checkpoint.pt"))
                 >= 2, timeout=300, interval=1, what="two checkpoints of the first run")
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        # a SIGKILLed driver leaves Ray's agents behind (spec/ray.md 1): end ours by pid
        end_processes(processes_mentioning(ray_tmp))
    assert not fs.exists(f"{s3_bucket}/runs/killed/result.json")

    assert load_job("train").main([*args, "--name", "killed", "--resume"]) == 0
    resumed = read_json(f"{storage}/killed/result.json")
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    for key in ("mse", "mae", "ssim"):
        assert resumed["final"]["model"][key] == pytest.approx(straight["final"]["model"][key],
                                                               rel=1e-6)
    assert resumed["best_checkpoint"].startswith(f"s3://{s3_bucket}/runs/killed/checkpoint_")
    assert "the model beats persistence" in capsys.readouterr().out
