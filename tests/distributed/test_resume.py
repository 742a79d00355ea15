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
# Ray Train's record of the reported checkpoints: a resume starts from the latest one listed
SNAPSHOT = "checkpoint_manager_snapshot.json"


def read_json(url: str) -> dict:
    with fsspec.open(url, "r") as handle:
        return json.load(handle)


def recorded(snapshot: bytes) -> bool:
    """Ray Train has recorded a checkpoint (a file written but not yet recorded is not one a
    resume can start from; a snapshot caught mid-write is not read)."""
    try:
        return bool(json.loads(snapshot)["checkpoint_results"])
    except ValueError:
        return False


def recorded_epoch(snapshot: bytes) -> int:
    """The epoch of the latest recorded checkpoint: the one --resume starts after."""
    return int(json.loads(snapshot)["latest_checkpoint_result"]["metrics"]["epoch"])


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
        try:
            return recorded(fs.cat(f"{s3_bucket}/runs/killed/{SNAPSHOT}"))
        except FileNotFoundError:
            return False

    kill_driver_when(["jobs/train.py", *args, "--name", "killed"], checkpointed,
                     what="the first checkpoint of the first run")
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/runs/killed/result.json")
    # what the kill left: checkpoint files (their bytes) and the last epoch Ray recorded (a
    # checkpoint written but not yet recorded is not one a resume starts from)
    at_kill = {path: fs.cat(path) for path in fs.glob(f"{s3_bucket}/runs/killed/checkpoint_*/*")}
    last = recorded_epoch(fs.cat(f"{s3_bucket}/runs/killed/{SNAPSHOT}"))
    assert last < EPOCHS - 1, f"the kill came after the last epoch ({last})"

    assert load_job("train").main([*args, "--name", "killed", "--resume"]) == 0
    resumed = read_json(f"{storage}/killed/result.json")
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2, 3]
    # only the missing epochs ran after the resume
    attempts = [(a["start_epoch"], a["end_epoch"], a["reason"]) for a in resumed["attempts"]]
    assert attempts == [(0, last + 1, "first start"),
                        (last + 1, EPOCHS, "run resumed by the driver (--resume)")]
    for path, content in at_kill.items():
        assert fs.cat(path) == content, f"{path} changed after the resume"
    for key in ("mse", "mae", "ssim"):
        assert resumed["final"]["model"][key] == pytest.approx(straight["final"]["model"][key],
                                                               rel=1e-6)
    assert resumed["best_checkpoint"].startswith(f"s3://{s3_bucket}/runs/killed/checkpoint_")
    assert "the model beats persistence" in capsys.readouterr().out


# two workers: a tiny model and capped epochs keep the three runs cheap on 2 cores
TWO_WORKERS = ["model.translator_channels=16", "model.spatial_channels=8",
               "model.num_translator_blocks=2", "train.epochs=4", "data.batch_size=8",
               "data.val_batch_size=32", "train.seed=7", "train.keep_checkpoints=10",
               "train.max_steps_per_epoch=40", "scaling.cpus_per_worker=0.5"]
TWO_WORKER_EPOCHS = 4


def test_killed_two_worker_run_resumes_within_one_percent(local_ray, small_store, tmp_path):
    """The same kill and --resume with 2 workers on local storage: only the missing epochs
    run, earlier checkpoints keep their bytes, and the final metrics land within 1% of an
    uninterrupted 2-worker run (an epoch's order is a function of seed, epoch and world size;
    the 1% leaves room for the reduction order of the gradients)."""
    storage = tmp_path / "runs"
    args = ["--set", f"data.url={small_store}", *TWO_WORKERS, "--num-workers", "2",
            "--storage", str(storage)]
    assert load_job("train").main([*args, "--name", "straight"]) == 0
    straight = json.loads((storage / "straight" / "result.json").read_text())

    killed = storage / "killed"

    def checkpointed() -> bool:
        return (killed / SNAPSHOT).exists() and recorded((killed / SNAPSHOT).read_bytes())

    kill_driver_when(["jobs/train.py", *args, "--name", "killed"], checkpointed,
                     what="the first checkpoint of the 2-worker run")
    assert not (killed / "result.json").exists()
    at_kill = {path: path.read_bytes() for path in killed.glob("checkpoint_*/*")}
    last = recorded_epoch((killed / SNAPSHOT).read_bytes())
    assert last < TWO_WORKER_EPOCHS - 1, f"the kill came after the last epoch ({last})"

    assert load_job("train").main([*args, "--name", "killed", "--resume"]) == 0
    resumed = json.loads((killed / "result.json").read_text())
    assert [row["epoch"] for row in resumed["history"]] == list(range(TWO_WORKER_EPOCHS))
    attempts = [(a["start_epoch"], a["end_epoch"], a["reason"], a["world_size"])
                for a in resumed["attempts"]]
    assert attempts == [(0, last + 1, "first start", 2),
                        (last + 1, TWO_WORKER_EPOCHS, "run resumed by the driver (--resume)", 2)]
    for path, content in at_kill.items():
        assert path.read_bytes() == content, f"{path} changed after the resume"
    for key in ("mse", "mae"):
        assert resumed["final"]["model"][key] == pytest.approx(straight["final"]["model"][key],
                                                               rel=0.01)
