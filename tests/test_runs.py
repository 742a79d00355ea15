"""Runs and experiments on storage: the typed records' exact round trips and their errors for
older or foreign files, the resume guard, and the same calls on a local folder and on S3."""

from __future__ import annotations

import json

import pytest

from simvp_ray.config import to_dict
from simvp_ray.presets import get_preset
from simvp_ray.runs import (
    ExperimentManifest,
    RunSummary,
    TrialSpec,
    check_resume,
    check_storage_writable,
    experiment_exists,
    read_manifest,
    read_result,
    run_exists,
    storage_url,
    upload_folder,
    write_manifest,
    write_result,
)

# result.json as launch_run wrote it before the typed record existed (keys and nesting)
RESULT = {
    "name": "run1", "run_url": "/tmp/runs/run1", "epochs_run": 2, "wall_time_s": 12.5,
    "train_samples_per_s": 80.0,
    "final": {"epoch": 1, "model": {"mse": 0.2, "ssim": 0.8},
              "persistence": {"mse": 0.4, "ssim": 0.6}},
    "best": {"epoch": 1, "model": {"mse": 0.2, "ssim": 0.8},
             "persistence": {"mse": 0.4, "ssim": 0.6}},
    "best_checkpoint": "/tmp/runs/run1/checkpoint_000001",
    "latest_checkpoint": "/tmp/runs/run1/checkpoint_000001",
    "history": [{"epoch": 0, "val/mse": 0.3}, {"epoch": 1, "val/mse": 0.2}],
    "attempts": [{"start_epoch": 0, "world_size": 1, "end_epoch": 2}],
    "config": to_dict(get_preset("demo")),
    "artifacts": {"tensorboard": "/tmp/runs/run1/tensorboard",
                  "panel": "/tmp/runs/run1/panel_val.png"},
}
TRIAL_RESULT = {**RESULT, "cost": {"params": 1000, "flops": 2000, "forward_samples_per_s": 9.0},
                "trial": {"name": "gsta-s0", "group": "gsta", "seed": 0,
                          "overrides": {"model.translator": "gsta", "train.seed": 0}}}
STOPPED_RESULT = {**RESULT, "stopped": {"reason": "non-finite loss", "last_good_epoch": 0}}
MANIFEST = {"kind": "variants", "metric": "val/mse", "base": to_dict(get_preset("demo")),
            "trials": [TRIAL_RESULT["trial"]], "space": {}, "num_samples": 1, "runs": "runs"}


@pytest.mark.parametrize("data", [RESULT, TRIAL_RESULT, STOPPED_RESULT],
                         ids=["run", "trial", "stopped"])
def test_run_summary_round_trips_exactly(data):
    summary = RunSummary.from_dict(data)
    assert summary.to_dict() == data
    assert json.loads(json.dumps(summary.to_dict())) == data
    assert summary.final.model["mse"] == 0.2


def test_manifest_round_trips_exactly():
    manifest = ExperimentManifest.from_dict(MANIFEST)
    assert manifest.to_dict() == MANIFEST
    assert manifest.trials == [TrialSpec("gsta-s0", "gsta", 0,
                                         {"model.translator": "gsta", "train.seed": 0})]


@pytest.mark.parametrize("cls, data, field", [
    (RunSummary, RESULT, "best_checkpoint"),
    (RunSummary, TRIAL_RESULT, "history"),
    (ExperimentManifest, MANIFEST, "num_samples"),
])
def test_a_missing_field_is_named_with_the_file(cls, data, field):
    older = {key: value for key, value in data.items() if key != field}
    with pytest.raises(ValueError, match=rf"^runs/x/some.json: missing field '{field}' of "
                                         rf"{cls.__name__}"):
        cls.from_dict(older, "runs/x/some.json")


def test_a_missing_nested_field_and_an_unknown_field_are_named():
    final = {key: value for key, value in RESULT["final"].items() if key != "persistence"}
    with pytest.raises(ValueError, match="result.json final: missing field 'persistence'"):
        RunSummary.from_dict({**RESULT, "final": final}, "result.json")
    with pytest.raises(ValueError, match="result.json: unknown field 'val_mse' of RunSummary"):
        RunSummary.from_dict({**RESULT, "val_mse": 0.1}, "result.json")
    trials = [{"name": "a", "group": "a"}]
    with pytest.raises(ValueError, match="m.json trials: missing field 'seed' of TrialSpec"):
        ExperimentManifest.from_dict({**MANIFEST, "trials": trials}, "m.json")


def test_missing_cost_is_an_error_not_nan():
    summary = RunSummary.from_dict(RESULT)
    with pytest.raises(ValueError, match="r.json: missing field 'cost.params'"):
        summary.cost_value("params", "r.json")
    assert RunSummary.from_dict(TRIAL_RESULT).cost_value("flops") == 2000


def test_the_resume_guard_of_runs_and_experiments():
    check_resume("run", "a", "runs", exists=False, resume=False)
    check_resume("run", "a", "runs", exists=True, resume=True)
    with pytest.raises(ValueError, match="^run 'a' already exists under runs: pass --resume"):
        check_resume("run", "a", "runs", exists=True, resume=False)
    with pytest.raises(ValueError, match=r"^cannot resume: no experiment 'e' under s3://b \(no"):
        check_resume("experiment", "e", "s3://b", exists=False, resume=True, missing=" (no m)")


def storage_roundtrip(storage: str, tmp_path) -> None:
    assert not run_exists(storage, "run1")
    check_storage_writable(storage)
    (tmp_path / "art" / "tensorboard").mkdir(parents=True)
    (tmp_path / "art" / "tensorboard" / "events").write_bytes(b"e")
    (tmp_path / "art" / "panel_val.png").write_bytes(b"p")
    upload_folder(tmp_path / "art", storage, "run1")
    assert run_exists(storage, "run1")
    assert read_result(storage, "run1") is None
    summary = RunSummary.from_dict(RESULT)
    url = write_result(storage, "run1", summary)
    assert url.endswith("run1/result.json")
    assert read_result(storage, "run1") == summary
    experiment = f"{storage.rstrip('/')}/exp"
    assert not experiment_exists(experiment) and read_manifest(experiment) is None
    write_manifest(experiment, ExperimentManifest.from_dict(MANIFEST))
    assert experiment_exists(experiment)
    assert read_manifest(experiment).to_dict() == MANIFEST


def test_storage_on_a_local_folder(tmp_path):
    storage = str(tmp_path / "runs")
    storage_roundtrip(storage, tmp_path)
    assert (tmp_path / "runs" / "run1" / "tensorboard" / "events").read_bytes() == b"e"
    assert storage_url(storage, "/x/y") == "/x/y"


@pytest.mark.s3
def test_storage_on_s3(s3_bucket, tmp_path):
    import fsspec

    storage = f"s3://{s3_bucket}/runs"
    storage_roundtrip(storage, tmp_path)
    fs = fsspec.filesystem("s3")
    assert fs.cat(f"{s3_bucket}/runs/run1/tensorboard/events") == b"e"
    assert storage_url(storage, f"{s3_bucket}/runs/run1") == f"s3://{s3_bucket}/runs/run1"
