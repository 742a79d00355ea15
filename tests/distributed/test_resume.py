"""A stopped run continues with --resume from S3 storage and ends as an uninterrupted one.

The driver of the first run is SIGKILLed after its first checkpoint (a laptop closed, a
cluster torn down); `--resume` with the same --name and --storage picks it up. Training is
seeded, so equal final metrics alone would not tell a resume from a restart: the attempt
record must show that only the missing epochs ran, and the earlier checkpoints must be the
same bytes.
"""

from __future__ import annotations

import json

import fsspec
import pytest
from helpers import load_job
from local_cluster import kill_driver_when

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.s3]

ARGS = ["model.translator_channels=32", "train.epochs=4", "data.batch_size=16",
        "data.val_batch_size=32", "train.seed=7", "train.keep_checkpoints=10"]
EPOCHS = 4


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

    # the same run in its own driver (and its own local Ray), killed after its first epoch
    fs = fsspec.filesystem("s3")

    def checkpointed() -> bool:
        fs.invalidate_cache()  # s3fs caches listings: without this the kill never comes
        return bool(fs.glob(f"{s3_bucket}/runs/killed/checkpoint_*/checkpoint.pt"))

    kill_driver_when(["jobs/train.py", *args, "--name", "killed"], checkpointed,
                     what="the first checkpoint of the first run")
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/runs/killed/result.json")
    # what the kill left: complete checkpoints (their bytes) and the epochs they end
    at_kill = {path: fs.cat(path) for path in fs.glob(f"{s3_bucket}/runs/killed/checkpoint_*/*")}
    done = sorted(json.loads(content)[-1]["epoch"] for path, content in at_kill.items()
                  if path.endswith("/history.json"))
    assert done and done[-1] < EPOCHS - 1, f"the kill came after the last epoch: {done}"

    assert load_job("train").main([*args, "--name", "killed", "--resume"]) == 0
    resumed = read_json(f"{storage}/killed/result.json")
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    # only the missing epochs ran after the resume
    attempts = [(a["start_epoch"], a["end_epoch"], a["reason"]) for a in resumed["attempts"]]
    assert attempts == [(0, done[-1] + 1, "first start"),
                        (done[-1] + 1, EPOCHS, "run resumed by the driver (--resume)")]
    for path, content in at_kill.items():
        assert fs.cat(path) == content, f"{path} changed after the resume"
    for key in ("mse", "mae", "ssim"):
        assert resumed["final"]["model"][key] == pytest.approx(straight["final"]["model"][key],
                                                               rel=1e-6)
    assert resumed["best_checkpoint"].startswith(f"s3://{s3_bucket}/runs/killed/checkpoint_")
    assert "the model beats persistence" in capsys.readouterr().out
