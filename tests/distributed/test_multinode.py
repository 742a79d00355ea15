"""Multi-node for real: a head and a second raylet on 127.0.0.1 (`ray start`), the training
job submitted with `ray job submit --working-dir .`, and a node killed mid-training under an
elastic run."""

from __future__ import annotations

import json
import re
import shutil

import psutil
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
        # 3 CPUs a node: one 2-CPU worker each, and a CPU left for Ray Data's reads
        cluster.start_head(num_cpus=3)
        cluster.add_worker_node(num_cpus=3)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_claims_only_its_own_processes(cluster):
    """What the node-loss test kills is found by this cluster's GCS port or temp dir, never
    by name: one raylet per node, and another Ray's command lines are not ours."""
    assert len(cluster.head_raylets) == 1 and len(cluster.worker_raylets) == 1
    ours = " ".join(psutil.Process(next(iter(cluster.worker_raylets))).cmdline())
    assert cluster.ours(ours)
    other_port = cluster.gcs_port + 1 if cluster.gcs_port < 65535 else cluster.gcs_port - 1
    foreign = ours.replace(f":{cluster.gcs_port}", f":{other_port}")
    assert not cluster.ours(foreign.replace(cluster.temp_dir, "/tmp/ray"))


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


def dead(pid: int) -> bool:
    try:  # a killed raylet stays a zombie until pid 1 reaps it
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive_nodes(cluster: LocalCluster) -> int:
    output = cluster.ray("list", "nodes", "--address", cluster.dashboard, "--format", "json")
    return sum(node["state"] == "ALIVE" for node in json.loads(output[output.index("["):]))


def test_elastic_run_goes_on_with_one_worker_after_losing_a_node(cluster, small_store,
                                                                 tmp_path):
    """--num-workers 1-2, each worker 2 of a node's 3 CPUs: one worker per node. SIGKILL the
    second raylet after the first checkpoint: only one worker fits on the head, and the run
    goes on with it from the latest checkpoint and completes every epoch once."""
    epochs = 5
    run = tmp_path / "elastic"
    job_id = submit(cluster, *TRAIN_ARGS, f"data.url={small_store}", f"train.epochs={epochs}",
                    "scaling.cpus_per_worker=2", "train.keep_checkpoints=10",
                    "--num-workers", "1-2", "--storage", str(tmp_path), "--name", "elastic")
    wait_for(lambda: list(run.glob("checkpoint_*/history.json")), timeout=420, interval=0.5,
             what="the first checkpoint")
    assert alive_nodes(cluster) == 2
    cluster.kill_worker_node()
    done = [json.loads(path.read_text())[-1]["epoch"]
            for path in run.glob("checkpoint_*/history.json")]
    assert max(done) < epochs - 1, f"the kill came after the last epoch: {done}"
    wait_for(lambda: all(map(dead, cluster.worker_raylets)), timeout=30, interval=0.5,
             what="the worker node's raylet to die")
    wait_for(lambda: alive_nodes(cluster) == 1, timeout=180, interval=3,
             what="the cluster to see the node gone")
    state = wait_for(lambda: job_status(cluster, job_id), timeout=600, interval=3,
                     what="the job to finish after the node loss")
    logs = job_logs(cluster, job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert [row["epoch"] for row in result["history"]] == list(range(epochs))
    first, *restarts = result["attempts"]
    assert (first["start_epoch"], first["world_size"]) == (0, 2), result["attempts"]
    assert [a["world_size"] for a in restarts] == [1] * len(restarts) and restarts
    assert 1 <= restarts[0]["start_epoch"] <= max(done) + 1, (done, result["attempts"])
    assert restarts[0]["reason"] == "worker group restarted by Ray Train after a failure"
    assert f"resumed from epoch {restarts[0]['start_epoch']} (checkpoint" in logs
    assert result["final"]["model"]["mse"] < result["final"]["persistence"]["mse"]
