"""Launch a training run on Ray Train's TorchTrainer and summarise it in `result.json`.

`launch_run(config, storage=..., name=...)` connects to (or starts) Ray, holds the store's
splits in the object store or streams them through Ray Data (`data.mode`), trains with
`worker.train_worker` on every worker, and writes
`<storage>/<name>/result.json`. `build_trainer` is the one place a TorchTrainer is built: the
Tune trials of `tune.py` fit the same trainer.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer

from simvp_ray.analysis.panels import plot_forecast_panel
from simvp_ray.analysis.tensorboard import write_tensorboard
from simvp_ray.config import RunConfig, override, to_dict
from simvp_ray.data import open_dataset
from simvp_ray.data.ray_data import check_windows, plan_data
from simvp_ray.data.synthetic import ensure_synthetic_store
from simvp_ray.distributed.cluster import check_resources, ensure_ray, quiet_ray_data
from simvp_ray.distributed.worker import STOPPED, WorkerPlan, train_worker
from simvp_ray.metric_keys import SUMMARY_KEYS
from simvp_ray.plan import check_frames, check_plan, check_resume_config, store_fingerprint
from simvp_ray.runs import (
    EpochMetrics,
    RunSummary,
    check_resume,
    check_storage_writable,
    run_exists,
    storage_root,
    storage_url,
    upload_folder,
    with_end_epochs,
    write_result,
)
from simvp_ray.train.checkpoint import (
    HISTORY_FILE,
    CheckpointPayload,
    load_checkpoint,
    load_run_record,
)
from simvp_ray.train.inference import forecast_window
from simvp_ray.train.methods import check_method
from simvp_ray.train.metrics import MetricContext


def resolve_data(config: RunConfig) -> RunConfig:
    """Fill in the synthetic default and check the store matches the model's frames."""
    if not config.data.url:
        config = override(config, {"data.url": ensure_synthetic_store()})
    check_frames(config, open_dataset(config.data.url))
    return config


def scaling_config(config: RunConfig) -> ray.train.ScalingConfig:
    scaling = config.scaling
    workers: int | tuple[int, int] = scaling.num_workers
    if scaling.min_workers and scaling.min_workers < scaling.num_workers:
        workers = (scaling.min_workers, scaling.num_workers)
    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=scaling.use_gpu,
        resources_per_worker={"CPU": scaling.cpus_per_worker, **(
            {"GPU": 1} if scaling.use_gpu else {})},
        placement_strategy="SPREAD" if scaling.num_workers > 1 else "PACK")


def build_trainer(config: RunConfig, *, storage: str, name: str,
                  callbacks: Sequence[ray.train.UserCallback] = ()) -> TorchTrainer:
    """The TorchTrainer of one run (`config` resolved, Ray connected): the data plan (resident
    or streaming) of the store, `train_worker` on every worker, checkpoints under
    `<storage>/<name>`. A run name that exists in storage resumes from its latest checkpoint
    (Train V2's behaviour)."""
    quiet_ray_data()
    counts = check_windows(config.data, config.model)
    if "val" not in counts:
        raise ValueError(f"the store {config.data.url} has no val split")
    # resident or streaming, decided (and the resident splits loaded) here, before any worker
    data_plan = plan_data(config.data, config.model)
    print(f"data: {data_plan['mode']} ({data_plan['why']})", flush=True)
    dataset = open_dataset(config.data.url)
    plan = WorkerPlan(config, data_plan,  # holds the resident splits' refs: alive while we are
                      MetricContext.from_dataset(dataset, config.data.channels),
                      fit_id=uuid.uuid4().hex, store=store_fingerprint(dataset))
    return TorchTrainer(
        train_worker,
        train_loop_config=plan.to_dict(),
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_root(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.train.keep_checkpoints,
                checkpoint_score_attribute="val/mse", checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=config.scaling.max_failures),
            # Train's print patch sends each print to the console twice (logger + stream)
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            callbacks=list(callbacks)),
    )


def launch_run(config: RunConfig, *, storage: str = "runs",
               name: str | None = None, resume: bool = False) -> RunSummary:
    """Train `config` on Ray; returns the `RunSummary` it wrote to
    `<storage>/<name>/result.json`."""
    start = time.time()
    name = name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_resume("run", name, storage, run_exists(storage, name), resume)
    check_storage_writable(storage)
    check_method(config.model)  # a config the model / method cannot run fails before Ray
    config = resolve_data(config)
    plan = check_plan(config)  # every config error here, in seconds, before Ray starts
    if resume:
        check_resume_config(storage, name, config, plan.fingerprint)
    scaling = config.scaling
    ensure_ray(scaling.num_workers * scaling.cpus_per_worker)
    check_resources(config)
    trainer = build_trainer(config, storage=storage, name=name)
    result = trainer.fit()
    try:
        summary = summarize(result, config, storage, name, wall_time=time.time() - start)
    except TrainingStopped as stopped:
        if stopped.summary is not None:  # where and why it stopped, beside its checkpoints
            write_result(storage, name, stopped.summary)
        raise
    summary = replace(summary, artifacts=publish_artifacts(result, config, storage, name,
                                                           summary.history))
    write_result(storage, name, summary)
    return summary


def publish_artifacts(result: ray.train.Result, config: RunConfig, storage: str,
                      name: str, history: list[dict[str, float]]) -> dict[str, str]:
    """TensorBoard events and a validation panel of the best checkpoint, into the run folder."""
    best = result.get_best_checkpoint("val/mse", "min") or result.checkpoint
    with tempfile.TemporaryDirectory(prefix="simvp_artifacts_") as local:
        write_tensorboard(history, Path(local) / "tensorboard")
        with best.as_directory() as folder:
            payload = load_checkpoint(folder)
        save_validation_panel(payload, config, Path(local) / "panel_val.png")
        upload_folder(local, storage, name)
    # URLs of a remote storage; absolute paths of a local one (as the run folder is named)
    run = f"{storage_root(storage)}/{name}"
    return {"tensorboard": f"{run}/tensorboard", "panel": f"{run}/panel_val.png"}


def save_validation_panel(payload: CheckpointPayload, config: RunConfig,
                          path: Path) -> Path:
    """Inputs / targets / predictions / error of one validation window, physical units."""
    dataset = open_dataset(config.data.url)
    names = list(config.data.channels) or dataset.channels
    sample = forecast_window(payload, config, dataset, names, "val")
    picked, _ = dataset.select(names)
    return plot_forecast_panel(
        sample["x"], sample["y"], sample["pred"], path, channel_name=names[0],
        units=dataset.units[picked[0]],
        title=f"{config.name}: validation window, epoch {payload.epoch + 1}, {names[0]}")


def read_history(checkpoint: ray.train.Checkpoint) -> list[dict[str, float]]:
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / HISTORY_FILE).read_text())


class TrainingStopped(RuntimeError):
    """Training stopped itself (a non-finite loss); its checkpoints are kept. `summary` is the
    run's result.json up to its last good checkpoint, with a "stopped" entry."""

    def __init__(self, message: str, summary: RunSummary | None = None):
        super().__init__(message)
        self.summary = summary


def read_attempts(checkpoint: ray.train.Checkpoint | None) -> list[dict[str, Any]]:
    """The checkpoint's attempt records, each with the epochs it ran ([start, end))."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return load_run_record(folder)["attempts"]


def summarize(result: ray.train.Result, config: RunConfig, storage: str, name: str,
              wall_time: float) -> RunSummary:
    """The run's `RunSummary` from Ray's result (TrainingStopped when it stopped itself)."""
    if result.error is not None:
        raise result.error
    returned = result.return_value if isinstance(result.return_value, dict) else {}
    if STOPPED in returned and result.checkpoint is None:
        raise TrainingStopped(returned[STOPPED])
    history = read_history(result.checkpoint)
    final = history[-1]
    best = min(history, key=lambda row: row["val/mse"])
    best_checkpoint = result.get_best_checkpoint("val/mse", "min") or result.checkpoint
    headline = SUMMARY_KEYS

    def pick(row: dict[str, float], prefix: str) -> dict[str, float]:
        return {key: row[f"{prefix}/{key}"] for key in headline if f"{prefix}/{key}" in row}

    def epoch_metrics(row: dict[str, float]) -> EpochMetrics:
        return EpochMetrics(epoch=row["epoch"], model=pick(row, "val"),
                            persistence=pick(row, "val_persistence"))

    summary = RunSummary(
        name=name,
        run_url=storage_url(storage, result.path),
        epochs_run=len(history),
        wall_time_s=wall_time,
        train_samples_per_s=sum(r["train/samples_per_s"] for r in history) / len(history),
        final=epoch_metrics(final),
        best=epoch_metrics(best),
        best_checkpoint=storage_url(storage, best_checkpoint.path),
        latest_checkpoint=storage_url(storage, result.checkpoint.path),
        history=history,
        attempts=with_end_epochs(returned.get("attempts") or read_attempts(result.checkpoint),
                                 len(history)),
        config=to_dict(config),
    )
    if STOPPED in returned:
        # result.json says where and why; the latest (last good) and best checkpoints are kept
        last_good = int(final["epoch"])
        summary = replace(summary, stopped={"reason": returned[STOPPED],
                                            "last_good_epoch": last_good})
        raise TrainingStopped(f"{returned[STOPPED]}; last good epoch {last_good}, "
                              f"checkpoints kept under {storage_url(storage, result.path)}",
                              summary)
    return summary
