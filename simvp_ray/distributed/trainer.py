"""Launch a training run on Ray Train's TorchTrainer and summarise it in `result.json`.

`launch_run(config, storage=..., name=...)` connects to (or starts) Ray, holds the store's
splits in the object store or streams them through Ray Data (`data.mode`), trains with
`worker.train_worker` on every worker, and writes
`<storage>/<name>/result.json`. `build_trainer` is the one place a TorchTrainer is built: the
Tune trials of `tune.py` fit the same trainer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchTrainer

from simvp_ray.analysis.panels import plot_forecast_panel
from simvp_ray.analysis.tensorboard import write_tensorboard
from simvp_ray.config import RunConfig, from_dict, override, to_dict
from simvp_ray.data import open_dataset
from simvp_ray.data.ray_data import check_windows, plan_data
from simvp_ray.data.synthetic import write_synthetic
from simvp_ray.distributed.worker import STOPPED, train_worker
from simvp_ray.metric_keys import SUMMARY_KEYS
from simvp_ray.plan import check_plan, store_fingerprint
from simvp_ray.train.checkpoint import (
    STORE_FILE,
    CheckpointPayload,
    load_checkpoint,
    load_run_record,
)
from simvp_ray.train.inference import forecast_window
from simvp_ray.train.methods import check_method
from simvp_ray.train.metrics import MetricContext

RESULT_FILE = "result.json"
SYNTHETIC_VERSION = "v1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIMVP_CACHE_DIR", Path.home() / ".cache" / "simvp_ray"))


def ensure_synthetic_store() -> str:
    """The embedded default dataset, written once to the local cache (atomically)."""
    path = default_cache_dir() / f"synthetic-{SYNTHETIC_VERSION}.zarr"
    if not path.exists():
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        write_synthetic(partial)
        try:
            partial.rename(path)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(partial, ignore_errors=True)
    return str(path)


def resolve_data(config: RunConfig) -> RunConfig:
    """Fill in the synthetic default and check the store matches the model's frames."""
    url = config.data.url or ensure_synthetic_store()
    dataset = open_dataset(url)
    channels = len(config.data.channels) or dataset.frames.shape[1]
    grid = tuple(dataset.frames.shape[2:])
    model = config.model
    if (channels, *grid) != (model.channels, model.height, model.width):
        raise ValueError(
            f"the store {url} holds frames of {channels} channels x {grid[0]} x {grid[1]} but "
            f"the model expects {model.channels} x {model.height} x {model.width}: set "
            "model.channels / model.height / model.width (or data.channels) to match")
    return config if config.data.url else override(config, {"data.url": url})


def storage_filesystem(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage).resolve())


def run_exists(storage: str, name: str) -> bool:
    fs, root = storage_filesystem(storage)
    info = fs.get_file_info(f"{root}/{name}")
    return info.type != pyarrow.fs.FileType.NotFound


def check_storage_writable(storage: str) -> None:
    """Fail before any work when the run could not save its checkpoints."""
    try:
        fs, root = storage_filesystem(storage)
        fs.create_dir(root, recursive=True)
        probe = f"{root}/.simvp_write_probe_{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot write to storage {storage!r}: {error}") from error


def check_resume_config(storage: str, name: str, config: RunConfig,
                        fingerprint: dict[str, Any] | None = None) -> None:
    """A run resumes only with the model it was started with, on the store it trained on."""
    fs, root = storage_filesystem(storage)
    selector = pyarrow.fs.FileSelector(f"{root}/{name}")
    folders = sorted(info.path for info in fs.get_file_info(selector)
                     if info.type == pyarrow.fs.FileType.Directory
                     and info.base_name.startswith("checkpoint_"))
    if not folders:
        return  # stopped before its first checkpoint: Ray starts it from scratch
    with fs.open_input_stream(f"{folders[-1]}/config.json") as stream:
        saved = from_dict(RunConfig, json.loads(stream.read()))
    if saved.model != config.model:
        raise ValueError(f"cannot resume {name!r}: its checkpoints hold a different model "
                         f"({saved.model}) than this run's ({config.model})")
    store_file = f"{folders[-1]}/{STORE_FILE}"
    if fingerprint is None or fs.get_file_info(store_file).type != pyarrow.fs.FileType.File:
        return
    with fs.open_input_stream(store_file) as stream:
        trained_on = json.loads(stream.read())
    now = json.loads(json.dumps(fingerprint))  # the same JSON types as the stored one
    changed = [key for key in sorted(set(trained_on) | set(now))
               if trained_on.get(key) != now.get(key)]
    if changed:
        stored = ", ".join(f"{key}={trained_on.get(key)}" for key in changed)
        raise ValueError(
            f"cannot resume {name!r}: its checkpoints were trained on the store "
            f"{trained_on.get('url')} and data.url {now.get('url')} differs in "
            f"{', '.join(changed)} (stored {stored}): resume on the same store, or start a new "
            "run under another --name")


def ensure_ray(num_cpus_needed: float) -> None:
    """Connect to RAY_ADDRESS / a running cluster, or start a local one big enough."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    # Ray Data logs a line per dataset execution (two per epoch) at INFO in every process
    # that runs one; the local cluster's processes inherit this environment
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    # logical CPUs beyond the cores leave room for Ray Data's read tasks (spec/ray.md 3.4)
    # the dashboard (on 127.0.0.1) serves the State API that Train's controller polls
    ray.init(num_cpus=max(os.cpu_count() or 1, int(num_cpus_needed) + 2),
             dashboard_host="127.0.0.1")


def check_resources(config: RunConfig) -> None:
    """Fail fast when the cluster cannot place the workers (Ray Train would wait forever)."""
    scaling = config.scaling
    if scaling.wait_for_resources:
        return
    needed_workers = scaling.min_workers or scaling.num_workers
    available = ray.cluster_resources()
    cpus = available.get("CPU", 0.0)
    gpus = available.get("GPU", 0.0)
    problems = []
    if needed_workers * scaling.cpus_per_worker > cpus:
        problems.append(f"{needed_workers} workers x {scaling.cpus_per_worker:g} CPU need "
                        f"{needed_workers * scaling.cpus_per_worker:g} CPUs, the cluster has "
                        f"{cpus:g}")
    if scaling.use_gpu and needed_workers > gpus:
        problems.append(f"{needed_workers} GPU workers, the cluster has {gpus:g} GPUs")
    if problems:
        raise ValueError("cannot place the training workers: " + "; ".join(problems) +
                         ". Use fewer workers (--num-workers) or set "
                         "scaling.wait_for_resources=true on an autoscaling cluster")


def quiet_ray_data() -> None:
    """No per-execution banners or progress bars: one epoch line per epoch is the output."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


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
    loop_config = {
        "config": to_dict(config),
        "data_plan": data_plan,  # holds the resident splits' object refs: alive while we are
        "metrics": MetricContext.from_dataset(dataset, config.data.channels).to_dict(),
        "fit_id": uuid.uuid4().hex,  # tells a Ray restart within this fit from a --resume
        "store": store_fingerprint(dataset),
    }
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=name, storage_path=_ray_storage(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.train.keep_checkpoints,
                checkpoint_score_attribute="val/mse", checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=config.scaling.max_failures),
            # Train's print patch sends each print to the console twice (logger + stream)
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
            callbacks=list(callbacks)),
    )


def launch_run(config: RunConfig, *, storage: str = "runs",
                   name: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train `config` on Ray; returns the content of `<storage>/<name>/result.json`."""
    start = time.time()
    name = name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exists = run_exists(storage, name)
    if exists and not resume:
        raise ValueError(f"run {name!r} already exists under {storage}: pass --resume to "
                         "continue it, or choose another --name (nothing was overwritten)")
    if resume and not exists:
        raise ValueError(f"cannot resume: no run {name!r} under {storage}")
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
    summary["artifacts"] = publish_artifacts(result, config, storage, name, summary["history"])
    write_result(storage, name, summary)
    return summary


def publish_artifacts(result: ray.train.Result, config: RunConfig, storage: str,
                      name: str, history: list[dict[str, float]]) -> dict[str, str]:
    """TensorBoard events and a validation panel of the best checkpoint, into the run folder."""
    fs, root = storage_filesystem(storage)
    best = result.get_best_checkpoint("val/mse", "min") or result.checkpoint
    with tempfile.TemporaryDirectory(prefix="simvp_artifacts_") as local:
        write_tensorboard(history, Path(local) / "tensorboard")
        with best.as_directory() as folder:
            payload = load_checkpoint(folder)
        save_validation_panel(payload, config, Path(local) / "panel_val.png")
        pyarrow.fs.copy_files(local, f"{root}/{name}", destination_filesystem=fs,
                              source_filesystem=pyarrow.fs.LocalFileSystem())
    return {"tensorboard": _url(storage, f"{root}/{name}/tensorboard"),
            "panel": _url(storage, f"{root}/{name}/panel_val.png")}


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


def _ray_storage(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).resolve())


def _url(storage: str, path: str) -> str:
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    return scheme + path


def read_history(checkpoint: ray.train.Checkpoint) -> list[dict[str, float]]:
    with checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / "history.json").read_text())


class TrainingStopped(RuntimeError):
    """Training stopped itself (a non-finite loss); its checkpoints are kept. `summary` is the
    run's result.json up to its last good checkpoint, with a "stopped" entry."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary


def read_attempts(checkpoint: ray.train.Checkpoint | None) -> list[dict[str, Any]]:
    """The checkpoint's attempt records, each with the epochs it ran ([start, end))."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as folder:
        return load_run_record(folder)["attempts"]


def with_end_epochs(attempts: list[dict[str, Any]], epochs_done: int) -> list[dict[str, Any]]:
    ends = [a["start_epoch"] for a in attempts[1:]] + [epochs_done]
    return [{**attempt, "end_epoch": end} for attempt, end in zip(attempts, ends, strict=True)]


def summarize(result: ray.train.Result, config: RunConfig, storage: str, name: str,
              wall_time: float) -> dict[str, Any]:
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

    summary = {
        "name": name,
        "run_url": _url(storage, result.path),
        "epochs_run": len(history),
        "wall_time_s": wall_time,
        "train_samples_per_s": sum(r["train/samples_per_s"] for r in history) / len(history),
        "final": {"epoch": final["epoch"], "model": pick(final, "val"),
                  "persistence": pick(final, "val_persistence")},
        "best": {"epoch": best["epoch"], "model": pick(best, "val"),
                 "persistence": pick(best, "val_persistence")},
        "best_checkpoint": _url(storage, best_checkpoint.path),
        "latest_checkpoint": _url(storage, result.checkpoint.path),
        "history": history,
        "attempts": with_end_epochs(returned.get("attempts") or read_attempts(result.checkpoint),
                                    len(history)),
        "config": to_dict(config),
    }
    if STOPPED in returned:
        # result.json says where and why; the latest (last good) and best checkpoints are kept
        last_good = int(final["epoch"])
        summary["stopped"] = {"reason": returned[STOPPED], "last_good_epoch": last_good}
        raise TrainingStopped(f"{returned[STOPPED]}; last good epoch {last_good}, "
                              f"checkpoints kept under {_url(storage, result.path)}",
                              summary)
    return summary


def write_result(storage: str, name: str, summary: dict[str, Any]) -> str:
    fs, root = storage_filesystem(storage)
    path = f"{root}/{name}/{RESULT_FILE}"
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(summary, indent=2).encode())
    return _url(storage, path) if "://" in storage else path
