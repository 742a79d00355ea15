"""Tune --resume after the whole Ray cluster was stopped and a new one started (not only after a
killed driver): the experiment's state lives in storage, so a fresh cluster picks it up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from local_cluster import LocalCluster, cluster_env, short_temp_dir, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["model.translator_channels=16", "model.spatial_channels=8",
        "model.num_translator_blocks=2", "data.batch_size=16", "data.val_batch_size=32",
        "train.max_steps_per_epoch=4", "scaling.cpus_per_worker=1", "train.epochs=2"]


def tune_driver(cluster: LocalCluster, log: Path, *args: str) -> subprocess.Popen:
    env = {**cluster_env(), "RAY_ADDRESS": cluster.address}
    with log.open("w") as out:  # a file, not a pipe: a chatty driver never blocks on it
        return subprocess.Popen([sys.executable, "jobs/tune.py", *args], cwd=REPO_ROOT,
                                env=env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)


def new_cluster() -> LocalCluster:
    cluster = LocalCluster(short_temp_dir())
    cluster.start_head(num_cpus=3)
    return cluster


def end(cluster: LocalCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def trial_ids(experiment: Path) -> set[str]:
    """The trials in Tune's latest saved experiment state: a restored experiment keeps its
    trials' ids, a new experiment under the same name would give them new ones."""
    latest = max(experiment.glob("experiment_state-*.json"))
    return {json.loads(trial)["trial_id"]
            for trial, _ in json.loads(latest.read_text())["trial_data"]}


def test_tune_resumes_on_a_new_cluster_after_ray_was_stopped(small_store, tmp_path):
    runs = tmp_path / "exp" / "runs"
    args = ["--experiment", "variants", "--translators", "gsta,incepu", "--set",
            f"data.url={small_store}", *TINY, "--storage", str(tmp_path), "--name", "exp",
            "--max-concurrent", "1"]
    cluster = new_cluster()
    try:
        driver = tune_driver(cluster, tmp_path / "first.log", *args)
        wait_for(lambda: list(runs.glob("*/result.json")) or driver.poll() is not None,
                 timeout=600, interval=1, what="the first finished trial")
    finally:
        end(cluster)  # the whole cluster stopped, as `ray stop` on a laptop would
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finished = {path.parent.name: path.read_text() for path in runs.glob("*/result.json")}
    assert len(finished) == 1, f"the stop came too late: {sorted(finished)}"
    # a finished run's result.json alone would not tell a restore from a new experiment: the
    # trainable reuses a finished run's result in both
    before = trial_ids(tmp_path / "exp")

    cluster = new_cluster()
    try:
        resumed = tune_driver(cluster, tmp_path / "resumed.log", "--storage", str(tmp_path),
                              "--name", "exp", "--resume")
        resumed.wait(timeout=900)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
        end(cluster)
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    after = {path.parent.name: path.read_text() for path in runs.glob("*/result.json")}
    assert sorted(after) == ["gsta-s0", "incepu-s0"], sorted(after)
    assert before and before <= trial_ids(tmp_path / "exp"), "the experiment was not restored"
    for name, content in finished.items():
        assert after[name] == content, f"{name} finished before the stop but was re-run"
