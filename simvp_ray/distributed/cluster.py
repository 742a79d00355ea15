"""The Ray cluster a driver works on: connect to (or start) it, check it can place a run's
workers, and keep Ray Data's per-execution output quiet."""

from __future__ import annotations

import os

import ray
import ray.data

from simvp_ray.config import RunConfig


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
