"""jobs/tune.py + jobs/analyze.py on a local Ray: variants (killed and resumed), epoch scaling,
and an ASHA search that stops a deliberately bad trial.

Tiny models and capped epochs keep each trial to a Train start-up plus seconds of work.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_job
from local_cluster import kill_driver_when

from simvp_ray.analysis.experiment import FINISHED, STOPPED, load_experiment, summary_table
from simvp_ray.config import RunConfig, from_dict
from simvp_ray.train.optim import build_scheduler

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = ["model.translator_channels=16", "model.spatial_channels=8",
        "model.num_translator_blocks=2", "data.batch_size=16", "data.val_batch_size=32",
        "train.max_steps_per_epoch=4", "scaling.cpus_per_worker=1"]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny(store: str, *extra: str) -> list[str]:
    return ["--set", f"data.url={store}", *TINY, *extra]


def summaries(runs: Path) -> dict[str, tuple[int, str]]:
    """trial -> (mtime_ns, content) of every finished trial's result.json."""
    return {path.parent.name: (path.stat().st_mtime_ns, path.read_text())
            for path in runs.glob("*/result.json")}


def test_killed_variants_experiment_resumes_only_unfinished_trials(local_ray, small_store,
                                                                   tmp_path, capsys):
    args = ["--experiment", "variants", "--translators", "gsta,incepu", "--seeds", "2",
            *tiny(small_store, "train.epochs=2"), "--storage", str(tmp_path), "--name", "var",
            "--max-concurrent", "2"]
    runs = tmp_path / "var" / "runs"
    # the driver runs in its own process with its own Ray, killed once a trial has finished
    kill_driver_when(["jobs/tune.py", *args], lambda: summaries(runs), what="a finished trial")
    before = summaries(runs)
    assert 1 <= len(before) < 4, f"kill came too late: {sorted(before)} had finished"
    checkpoints = {name: sorted(p.name for p in (runs / name).glob("checkpoint_*"))
                   for name in before}

    # a new cluster (this process's Ray) picks it up: only the unfinished trials run
    assert load_job("tune").main(["--storage", str(tmp_path), "--name", "var", "--resume"]) == 0
    after = summaries(runs)
    assert sorted(after) == ["gsta-s0", "gsta-s1", "incepu-s0", "incepu-s1"]
    for name, (mtime, content) in before.items():
        assert after[name] == (mtime, content), f"{name} finished before the kill but was re-run"
        assert sorted(p.name for p in (runs / name).glob("checkpoint_*")) == checkpoints[name]
    results = {name: json.loads(content) for name, (_, content) in after.items()}
    assert all(r["epochs_run"] == 2 for r in results.values())
    assert results["incepu-s1"]["config"]["model"]["translator"] == "incepu"
    assert results["gsta-s1"]["config"]["train"]["seed"] == 1
    assert results["gsta-s0"]["cost"]["params"] > 0 and results["gsta-s0"]["cost"]["flops"] > 0
    assert results["gsta-s0"]["cost"]["forward_samples_per_s"] > 0
    capsys.readouterr()

    out = tmp_path / "report"
    assert load_job("analyze").main([str(tmp_path / "var"), "--out", str(out)]) == 0
    table = summary_table(load_experiment(str(tmp_path / "var")))
    assert list(table.index) == ["gsta", "incepu"]
    gsta = [results[f"gsta-s{seed}"]["final"]["model"]["mse"] for seed in (0, 1)]
    assert table.loc["gsta", ("mse", "mean")] == pytest.approx(np.mean(gsta))
    assert table.loc["gsta", ("mse", "std")] == pytest.approx(np.std(gsta, ddof=1))
    assert list(table[("seeds", "finished")]) == [2, 2]
    for name in ("val_mse_curves.png", "mse_vs_flops.png", "mse_vs_time.png"):
        assert (out / name).read_bytes()[:8] == PNG and (out / name).stat().st_size > 5000
    assert "| gsta | 2 |" in capsys.readouterr().out


def test_epoch_scaling_stretches_the_schedule_to_each_budget(local_ray, small_store, tmp_path):
    args = ["--experiment", "epoch-scaling", "--budgets", "1,2",
            *tiny(small_store, "train.epochs=1"), "--storage", str(tmp_path), "--name", "scale"]
    assert load_job("tune").main(args) == 0
    df = load_experiment(str(tmp_path / "scale"))
    assert list(df["trial"]) == ["x1-s0", "x2-s0"]
    assert list(df["epochs_run"]) == [1, 2] and list(df["status"]) == [FINISHED, FINISHED]
    runs = tmp_path / "scale" / "runs"
    for name, epochs in (("x1-s0", 1), ("x2-s0", 2)):
        result = json.loads((runs / name / "result.json").read_text())
        # each epoch's last learning rate is that of one onecycle over the trial's budget
        optim = from_dict(RunConfig, result["config"]).optim
        optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=optim.lr)
        scheduler = build_scheduler(optimizer, optim, epochs, steps_per_epoch=4)
        for row in result["history"]:
            for _ in range(4):
                last_lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
            assert row["lr"] == pytest.approx(last_lr)
        assert result["history"][-1]["lr"] < optim.lr / 100  # annealed to its end
    out = tmp_path / "report"
    assert load_job("analyze").main([str(tmp_path / "scale"), "--out", str(out)]) == 0
    assert (out / "mse_vs_budget.png").read_bytes()[:8] == PNG
    assert "| x2 | 2 |" in (out / "table.md").read_text()


def test_asha_stops_a_bad_trial_early(local_ray, small_store, tmp_path):
    # one at a time, good first: the bad one meets the good one's MSE at the first rung
    args = ["--experiment", "search", "--space", "optim.lr=grid:3e-3,1e-9", "--samples", "1",
            *tiny(small_store, "train.epochs=3", "optim.schedule=constant"),
            "--storage", str(tmp_path), "--name", "asha", "--max-concurrent", "1"]
    assert load_job("tune").main(args) == 0
    df = load_experiment(str(tmp_path / "asha")).set_index("trial")
    assert list(df.index) == ["trial-000", "trial-001"]
    assert df.loc["trial-000", "config.optim.lr"] == pytest.approx(3e-3)
    assert df.loc["trial-000", "status"] == FINISHED and df.loc["trial-000", "epochs_run"] == 3
    assert df.loc["trial-001", "status"] == STOPPED
    assert df.loc["trial-001", "epochs_run"] < 3
