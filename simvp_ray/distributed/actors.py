"""The model actors of evaluation and prediction (Ray Data `map_batches`): what they are sent
of a checkpoint, the model each builds on its device, and the pool options placing them on CPUs
or GPUs.
"""

from __future__ import annotations

from typing import Any

import ray.data
import torch

from simvp_ray.train.checkpoint import CheckpointPayload, ModelState
from simvp_ray.train.inference import model_from_checkpoint


def model_state(payload: CheckpointPayload) -> ModelState:
    """What a model actor needs from a checkpoint (no optimiser state): small to ship."""
    return ModelState(payload.config, payload.model)


def actor_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def load_model(state: ModelState, use_gpu: bool) -> torch.nn.Module:
    return model_from_checkpoint(state, actor_device(use_gpu))


def actor_options(num_actors: int, use_gpu: bool) -> dict[str, Any]:
    """map_batches keyword arguments for a fixed pool of model actors."""
    if num_actors < 1:
        raise ValueError(f"num_actors={num_actors}: must be >= 1")
    return {"compute": ray.data.ActorPoolStrategy(size=num_actors),
            **({"num_gpus": 1} if use_gpu else {"num_cpus": 1})}
