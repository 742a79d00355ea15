"""The model-cost columns of the Tune table and of `jobs/evaluate.py`, measured one way."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from simvp_ray.config import RunConfig
from simvp_ray.models import profile


def measure_cost(config: RunConfig, use_gpu: bool | None = None) -> dict[str, Any]:
    """params, FLOPs per sample and inference samples/s of `config.model`.

    Measured in a Ray task holding one training worker's resources (the device and threads it
    trained with), on batches of data.val_batch_size, 5 timed iterations after 2 warm-up: a
    few seconds. `use_gpu` defaults to the run's own scaling.use_gpu.
    """
    scaling = config.scaling
    use_gpu = scaling.use_gpu if use_gpu is None else use_gpu
    # never more CPUs than the cluster has (a run trained elsewhere would wait forever)
    cpus = min(scaling.cpus_per_worker, ray.cluster_resources().get("CPU", 1.0))
    task = ray.remote(profile).options(
        num_cpus=cpus, num_gpus=1 if use_gpu else 0,
        # outside any placement group of the caller (a Tune trial holds only a sliver of CPU)
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return ray.get(task.remote(config.model, batch_size=config.data.val_batch_size, iters=5,
                               warmup=2))
