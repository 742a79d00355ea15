"""The driver-side plan check: every config error is one line, exit code 2, before Ray starts.

The job cases run in one fresh Python process (no Ray of the test session around it), which
reports each job's exit code, its stderr and whether Ray was ever initialised.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from simvp_ray.config import override
from simvp_ray.plan import check_plan, per_worker_batch_size, world_sizes
from simvp_ray.presets import get_preset

RUNNER = """
import contextlib, io, json, sys
sys.path.insert(0, "tests")
from helpers import load_job
import ray
out = []
for job, args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = load_job(job).main(args)
    out.append({"code": code, "err": err.getvalue(), "ray": ray.is_initialized()})
print(json.dumps(out))
"""

TRAIN_CASES = [
    (["model.translator=foo"], "unknown translator 'foo'; valid: incepu, gsta"),
    (["train.epochs=-1"], "train.epochs=-1: must be >= 1"),
    (["data.batch_size=0"], "data.batch_size=0: must be >= 1"),
    (["scaling.num_workers=3", "scaling.cpus_per_worker=0.1"],
     "data.batch_size=16 does not divide over 3 workers"),
    (["optim.schedule=linear"], "unknown schedule 'linear'; valid: onecycle, cosine, constant"),
    (["train.loss=l1"], "unknown loss 'l1'"),
    (["model.in_frames=500"], "split 'train' (steps [0, 420)) has no valid window"),
    (["model.method=mau", "model.recurrent.patch_size=4"],
     "model.recurrent.patch_size=4: mau runs on unpatched frames; valid: 1"),
    (["model.method=mim", "model.recurrent.num_hidden=8,8"],  # demo: val batch 32, batch 16
     "data.val_batch_size=32 != training batch 16"),
]
TUNE_CASES = [  # extra --set entries, other arguments
    (["scaling.num_workers=6", "scaling.cpus_per_worker=0.1"], ["--translators", "gsta"],
     "gsta-s0: data.batch_size=16 does not divide over 6 workers"),
    ([], ["--experiment", "search", "--space", "train.epochs=randint:0:3"],
     "search space train.epochs=0: train.epochs=0: must be >= 1"),
    (["optim.lr=-1"], ["--experiment", "epoch-scaling", "--budgets", "1,2"],
     "x1-s0: optim.lr=-1: must be > 0"),
]


@pytest.fixture(scope="module")
def job_runs(small_store, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    cases = [("train", ["--set", f"data.url={small_store}", *sets, "--storage", storage])
             for sets, _ in TRAIN_CASES]
    cases += [("tune", ["--set", f"data.url={small_store}", *sets, *args, "--storage", storage])
              for sets, args, _ in TUNE_CASES]
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(TRAIN_CASES) + len(TUNE_CASES)))
def test_config_errors_are_one_line_exit_2_before_ray_starts(job_runs, index):
    message = [case[-1] for case in TRAIN_CASES + TUNE_CASES][index]
    run = job_runs[index]
    lines = run["err"].splitlines()
    assert run["code"] == 2, run
    assert len(lines) == 1 and lines[0].startswith("error: "), run["err"]
    assert message in lines[0]
    assert not run["ray"], "Ray was started before the error"


def test_a_valid_plan_counts_windows_and_fingerprints_the_store(small_store):
    config = override(get_preset("demo"), {"data.url": small_store})
    plan = check_plan(config)
    assert plan.windows["train"] > plan.windows["val"] > 0 and plan.world_sizes == (1,)
    assert plan.fingerprint["url"] == small_store and plan.fingerprint["schema_version"] == 1
    assert len(plan.fingerprint["normalization"]["mean"]) == 2


def test_the_batch_must_divide_over_every_world_size_of_an_elastic_run(small_store):
    config = override(get_preset("demo"), {"data.url": small_store, "data.batch_size": 18,
                                           "scaling.num_workers": 4, "scaling.min_workers": 2})
    assert world_sizes(config) == (2, 3, 4)
    with pytest.raises(ValueError, match=r"over 4 workers .*this run may have 2-4 workers"):
        check_plan(config)
    assert per_worker_batch_size(12, 3) == 4
    with pytest.raises(ValueError, match="16 / 3 is not a whole number"):
        per_worker_batch_size(16, 3)
    check_plan(override(config, {"data.batch_size": 24}))


def test_mim_needs_full_validation_batches_of_the_training_size(small_store):
    config = override(get_preset("demo"), {
        "data.url": small_store, "model.method": "mim", "model.recurrent.num_hidden": "8,8",
        "data.batch_size": 8, "data.val_batch_size": 8})
    val = check_plan(override(config, {"model.recurrent.openstl_quirks": False})).windows["val"]
    batch = next(size for size in range(7, 1, -1) if val % size)  # one that leaves a remainder
    uneven = override(config, {"data.batch_size": batch, "data.val_batch_size": batch})
    with pytest.raises(ValueError, match=f"the {val} validation windows leave a last batch"):
        check_plan(uneven)
    check_plan(override(uneven, {"model.recurrent.openstl_quirks": False}))


def test_the_script_itself_fails_in_one_line(small_store, tmp_path):
    """As a user runs it: jobs/ is on sys.path (its profile.py must not shadow the standard
    library's when the plan check builds the model on the meta device)."""
    done = subprocess.run([sys.executable, "jobs/train.py", "--set", f"data.url={small_store}",
                           "--num-workers", "2-3", "--storage", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [
        "error: data.batch_size=16 does not divide over 3 workers (16 / 3 is not a whole "
        "number): choose a multiple of every world size the run may have; this run may have "
        "2-3 workers (elastic)"]
