"""Multi-node for real: a head and a second raylet on 127.0.0.1 (`ray start`), the training
job submitted with `ray job submit --working-dir .`, and a node killed mid-training."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import REPO_ROOT
from local_cluster import LocalCluster, short_temp_dir, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRAIN_ARGS = ["--set", "model.translator_channels=32", "data.batch_size=16",
              "data.val_batch_size=32", "scaling.cpus_per_worker=0.5"]


@pytest.fixture(scope="module")
def cluster():
    temp_dir = short_temp_dir()
    cluster = LocalCluster(temp_dir)
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_worker_node(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(cluster: LocalCluster, *args: str) -> str:
    output = cluster.ray("job", "submit", "--address", cluster.dashboard, "--working-dir",
                         str(REPO_ROOT), "--no-wait", "--", "python", "jobs/train.py", *args)
    return re.findall(r"raysubmit_[A-Za-z0-9]+", output)[0]


def job_status(cluster: LocalCluster, job_id: str) -> str:
    output = cluster.ray("job", "status", job_id, "--address", cluster.dashboard)
    for state in ("SUCCEEDED", "FAILED", "STOPPED"):
        if state.lower() in output.lower():
            return state
    return ""


def job_logs(cluster: LocalCluster, job_id: str) -> str:
    return cluster.ray("job", "logs", job_id, "--address", cluster.dashboard)


def test_submitted_job_trains_on_both_nodes(cluster, small_store, tmp_path):
    job_id = submit(cluster, *TRAIN_ARGS, f"data.url={small_store}", "train.epochs=2",
                    "--num-workers", "2", "--storage", str(tmp_path), "--name", "two-nodes")
    state = wait_for(lambda: job_status(cluster, job_id), timeout=420, interval=3,
                     what="the submitted job to finish")
    logs = job_logs(cluster, job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    nodes = set(re.findall(r"worker rank \d/2 on node ([0-9a-f]+)", logs))
    assert len(nodes) == 2, logs[-3000:]
    result = json.loads((tmp_path / "two-nodes" / "result.json").read_text())
    assert result["epochs_run"] == 2


def test_run_survives_losing_a_node(cluster, small_store, tmp_path):
    """SIGKILL the second raylet after the first checkpoint: the run restarts its workers
    on the head from the latest checkpoint and completes every epoch once."""
    run = tmp_path / "node-loss"
    job_id = submit(cluster, *TRAIN_ARGS, f"data.url={small_store}", "train.epochs=4",
                    "--num-workers", "2", "--storage", str(tmp_path), "--name", "node-loss")
    wait_for(lambda: list(run.glob("checkpoint_*/checkpoint.pt")), timeout=420, interval=1,
             what="the first checkpoint")
    cluster.kill_worker_node()
    state = wait_for(lambda: job_status(cluster, job_id), timeout=600, interval=3,
                     what="the job to finish after the node loss")
    logs = job_logs(cluster, job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert [row["epoch"] for row in result["history"]] == [0, 1, 2, 3]
    assert result["final"]["model"]["mse"] < result["final"]["persistence"]["mse"]
