"""The Ray Train worker: adapts Ray Train's context to the plain training loop's `Runtime`.

Runs on every worker. Ray specifics stop here: the driver's data plan becomes batch iterables,
`prepare_model` wraps DDP, `ray.train.report` carries metrics and checkpoint folders.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.v2._internal.execution import context as train_context
from ray.train.v2._internal.execution import storage as train_storage

from simvp_ray.config import RunConfig, from_dict, to_dict
from simvp_ray.data.ray_data import WindowFeed
from simvp_ray.plan import per_worker_batch_size
from simvp_ray.records import check_fields
from simvp_ray.reporting import data_fault, one_line
from simvp_ray.train.checkpoint import (
    CheckpointPayload,
    load_checkpoint,
    load_run_record,
    save_run_record,
)
from simvp_ray.train.loop import NonFiniteLossError, Runtime, run_training
from simvp_ray.train.metrics import MetricContext

STOPPED = "stopped"  # key of the return value when training stopped on a non-finite loss


@dataclass(frozen=True)
class WorkerPlan:
    """What the driver (`trainer.build_trainer`) hands every training worker. Ray Train passes
    it as `train_loop_config`, a dict: `to_dict` / `from_dict` round-trip exactly."""

    config: RunConfig
    data_plan: dict[str, Any]  # ray_data.plan_data's: the mode, and the resident splits' refs
    metrics: MetricContext
    fit_id: str  # tells a Ray restart within this fit from a --resume
    store: dict[str, Any]  # plan.store_fingerprint of the training store

    def to_dict(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "data_plan": self.data_plan,
                "metrics": self.metrics.to_dict(), "fit_id": self.fit_id, "store": self.store}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerPlan:
        check_fields(cls, data, "train_loop_config")
        return cls(from_dict(RunConfig, data["config"]), data["data_plan"],
                   MetricContext.from_dict(data["metrics"]), data["fit_id"], data["store"])


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


@dataclass(frozen=True, eq=False)
class ResumePoint:
    """Where a (re)started worker group continues: the run's latest checkpoint, the attempts
    its run record lists so far, and the checkpoint's storage path."""

    payload: CheckpointPayload
    attempts: list[dict[str, Any]]
    path: str


def _resume_point() -> ResumePoint | None:
    """The latest checkpoint of this run (None on a fresh start), with its run record and
    where it lies. Non-None also when Ray restarted the worker group after a failure."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return ResumePoint(load_checkpoint(folder), load_run_record(folder)["attempts"],
                           checkpoint.path)


def new_attempt(resume: ResumePoint | None, fit_id: str, world: int,
                data_mode: str) -> list[dict[str, Any]]:
    """The attempts so far plus this one. A checkpoint written under the same `fit_id` means
    Ray restarted the worker group within one fit (a lost worker or node); another fit's
    means the driver was started again with --resume. `data_mode` is the data path the driver
    chose for this attempt (resident or streaming: `data.mode=auto` decides per start)."""
    attempts = list(resume.attempts) if resume else []
    if resume is None:
        reason = "first start"
    elif attempts and attempts[-1].get("fit") == fit_id:
        reason = "worker group restarted by Ray Train after a failure"
    else:
        reason = "run resumed by the driver (--resume)"
    attempts.append({"attempt": len(attempts) + 1, "start_epoch": resume.payload.epoch + 1
                     if resume else 0, "world_size": world, "reason": reason, "fit": fit_id,
                     "data_mode": data_mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return attempts


def quiet_train_logs() -> None:
    """Ray Train logs every report with all its metrics, and every checkpoint upload, at INFO;
    the epoch line says both. (Its report logger is named after its file, not its module.)"""
    for module in (train_context, train_storage):
        module.logger.setLevel(logging.WARNING)


def train_worker(loop_config: dict[str, Any]) -> dict[str, float]:
    """`train_loop_per_worker` of the TorchTrainer; `loop_config` comes from `trainer.py`."""
    plan = WorkerPlan.from_dict(loop_config)
    config = plan.config
    quiet_train_logs()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    batch = per_worker_batch_size(config.data.batch_size, world)
    # the driver chose the data mode (and loaded the resident splits): every worker follows it
    feeds = {split: WindowFeed(plan.data_plan, split, config.data, config.model,
                               rank, world, config.train.seed) for split in ("train", "val")}
    # each worker takes num_train // world windows an epoch
    steps_per_epoch = (feeds["train"].num_windows // world) // batch
    if config.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.train.max_steps_per_epoch)
    device = ray.train.torch.get_device()
    print(f"worker rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()}, "
          f"device {device}, {torch.get_num_threads()} threads, per-worker batch {batch}, "
          f"{plan.data_plan['mode']} data", flush=True)
    resume = _resume_point()
    attempts = new_attempt(resume, plan.fit_id, world, plan.data_plan["mode"])
    if resume is not None and rank == 0:
        print(f"resumed from epoch {attempts[-1]['start_epoch']} (checkpoint {resume.path}):"
              f" attempt {len(attempts)}, {attempts[-1]['reason']}, world size {world}",
              flush=True)

    def train_batches(epoch: int):
        return feeds["train"].train_batches(epoch, batch, config.data.shuffle)

    def val_batches():
        return feeds["val"].eval_batches(config.data.val_batch_size)

    def report(metrics: dict[str, float], folder: Path | None) -> None:
        if folder is not None:  # the run record travels with every checkpoint
            save_run_record(folder, attempts, plan.store)
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        # Ray keeps the headline numbers; every metric is in the checkpoint's history.json
        metrics = {key: value for key, value in metrics.items() if key.count("/") <= 1}
        # every rank reports (it is a barrier); the upload is synchronous, then the local copy goes
        ray.train.report(metrics, checkpoint=checkpoint, delete_local_checkpoint_after_upload=True)

    with tempfile.TemporaryDirectory(prefix="simvp_ckpt_") as checkpoint_dir:
        runtime = Runtime(
            train_batches=train_batches, val_batches=val_batches,
            steps_per_epoch=steps_per_epoch, checkpoint_dir=Path(checkpoint_dir),
            report=report, device=device, metrics=plan.metrics,
            rank=rank,
            world_size=world,
            wrap_model=lambda model: ray.train.torch.prepare_model(model, move_to_device=False),
            all_reduce=_all_reduce_sum, resume=resume.payload if resume else None,
            log=lambda line: print(line, flush=True))  # worker stdout is a file: flush
        try:
            return run_training(config, runtime)
        except NonFiniteLossError as error:
            # a clean return, not a crash: Ray would restart the workers into the same NaN
            return {STOPPED: str(error), "attempts": attempts}
        except Exception as error:
            fault = data_fault(error)  # an unreadable chunk: every restart would meet it again
            if fault is None:
                raise
            return {STOPPED: one_line(fault), "attempts": attempts}
