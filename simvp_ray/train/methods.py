"""Training methods: what one training step computes, per model family (OpenSTL's methods).

- SimVP: the loss (`mse` or `tau`) of the forecast against the targets.
- The recurrent baselines: the model's `training_loss` on inputs and targets under a sampling
  mask drawn from the global step (spec/rnn.md section 2): scheduled sampling (SS), reverse
  scheduled sampling (RSS), MAU's stuck eta, PhyDNet's per-epoch teacher forcing.

The loop calls `method.training_loss(model, x, y, global_step, epoch)`; the forecast for
validation is the model's own `model(x)` for every family. Mask draws come from a numpy
generator seeded by (seed, rank, global step), and the only other sampler state, SS's `eta`
(accumulated in float as OpenSTL does), is in `state_dict()`: a resumed run draws exactly the
masks an uninterrupted one draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from simvp_ray.config import DataConfig, ModelConfig, RecurrentConfig, RunConfig
from simvp_ray.models import build_model
from simvp_ray.models.recurrent.build import (
    CARRIED_STATE_METHODS,
    NO_RSS_METHODS,
    TEACHER_FORCING_METHODS,
    training_mask_shape,
)
from simvp_ray.train.losses import build_loss

PHYDNET_TF_DECAY = 0.003  # teacher-forcing ratio = max(0, 1 - 0.003 * epoch)


# ---------------------------------------------------------------------------------------
# OpenSTL's samplers, as functions of a numpy RandomState (spec/rnn.md 2.1, 2.2)


def ss_step(eta: float, global_step: int, rnn: RecurrentConfig) -> float:
    """SS bookkeeping of one training step: eta - rate before the stop iteration, else 0."""
    if global_step < rnn.sampling_stop_iter:
        return eta - rnn.sampling_changing_rate
    return 0.0


def ss_flags(rng: np.random.RandomState, batch: int, out_frames: int,
             eta: float) -> np.ndarray:
    """(B, aft-1) flags, 1 = feed the true future frame, with probability eta."""
    return (rng.random_sample((batch, out_frames - 1)) < eta).astype(np.float32)


def rss_probabilities(global_step: int, rnn: RecurrentConfig) -> tuple[float, float]:
    """(r_eta, eta): probabilities of a true input frame and of a true future frame."""
    step_1, step_2 = rnn.r_sampling_step_1, rnn.r_sampling_step_2
    if global_step < step_1:
        return 0.5, 0.5
    if global_step < step_2:
        r_eta = 1.0 - 0.5 * math.exp(-float(global_step - step_1) / rnn.r_exp_alpha)
        eta = 0.5 - (0.5 / (step_2 - step_1)) * (global_step - step_1)
        return r_eta, eta
    return 1.0, 0.0


def rss_flags(rng: np.random.RandomState, batch: int, in_frames: int, out_frames: int,
              r_eta: float, eta: float) -> np.ndarray:
    """(B, total-2) flags: pre-1 input slots ~ Bernoulli(r_eta), then aft-1 future slots."""
    inputs = rng.random_sample((batch, in_frames - 1)) < r_eta
    future = rng.random_sample((batch, out_frames - 1)) < eta
    return np.concatenate([inputs, future], axis=1).astype(np.float32)


def teacher_forcing_ratio(epoch: int) -> float:
    return max(0.0, 1.0 - PHYDNET_TF_DECAY * epoch)


# ---------------------------------------------------------------------------------------
# The methods


class SimVPMethod:
    """SimVP / SimVPv2: plain MSE, or TAU's MSE + differential divergence."""

    def __init__(self, config: RunConfig):
        self.loss_fn = build_loss(config.train.loss, config.train.tau_alpha)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      global_step: int, epoch: int) -> torch.Tensor:
        return self.loss_fn(model(x).float(), y)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TrainingForward(nn.Module):
    """One forward for DDP: `(x)` -> the forecast, `(x, y, mask)` -> the training loss.

    DDP synchronises gradients only of calls through its own forward, so the recurrent
    training loss must be reached through `forward`, not `model.training_loss` directly.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                mask_true: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return self.model(x)
        return self.model.training_loss(x, y, mask_true)


class RecurrentMethod:
    """OpenSTL's RNN methods: a sampling mask per step, the model's own training loss."""

    def __init__(self, config: RunConfig, rank: int = 0):
        check_method(config.model, config.data)
        self.model_config = config.model
        self.rnn = config.model.recurrent
        self.method = config.model.method
        self.seed, self.rank = config.train.seed, rank
        self.eta = 1.0  # OpenSTL's initial eta (sampling_start_value is never read)

    def wrap(self, model: nn.Module) -> nn.Module:
        return TrainingForward(model)

    def generator(self, global_step: int) -> np.random.RandomState:
        # stateless in the step: every worker draws its own masks, and a resume draws the same
        return np.random.RandomState([self.seed, self.rank, global_step])

    def mask(self, batch: int, global_step: int, epoch: int) -> np.ndarray:
        """This step's flags (B, Tm); PhyDNet: one teacher-forcing flag (shape ())."""
        rng, model, rnn = self.generator(global_step), self.model_config, self.rnn
        if self.method in TEACHER_FORCING_METHODS:
            return np.float32(rng.random_sample() < teacher_forcing_ratio(epoch))
        if rnn.reverse_scheduled_sampling:
            r_eta, eta = rss_probabilities(global_step, rnn)
            return rss_flags(rng, batch, model.in_frames, model.out_frames, r_eta, eta)
        eta = ss_step(self.eta, global_step, rnn)
        if self.method == "mau" and rnn.openstl_quirks:
            # OpenSTL's MAU computes the new eta and never stores it (spec/rnn.md 2.1)
            return ss_flags(rng, batch, model.out_frames, eta)
        self.eta = eta
        return ss_flags(rng, batch, model.out_frames, eta)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      global_step: int, epoch: int) -> torch.Tensor:
        flags = torch.from_numpy(np.asarray(self.mask(x.shape[0], global_step, epoch)))
        shape = training_mask_shape(self.model_config, x.shape[0])
        mask = flags.reshape(flags.shape + (1,) * (len(shape) - flags.dim())).expand(shape)
        return model(x, y, mask.to(device=x.device, dtype=x.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"eta": self.eta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eta = float(state["eta"])


def check_method(model: ModelConfig, data: DataConfig | None = None, *,
                 world_sizes: tuple[int, ...] = (1,), val_windows: int | None = None) -> None:
    """ValueError, before any training, for a method / config combination that cannot run.

    With the data settings (and the world sizes and validation windows the plan check knows),
    also MIM's constant batch: its carried cell state fits one batch size only."""
    if model.method != "simvp":
        rnn = model.recurrent
        if rnn.reverse_scheduled_sampling and model.method in NO_RSS_METHODS:
            raise ValueError(f"model.method={model.method} has no reverse scheduled sampling; "
                             "set model.recurrent.reverse_scheduled_sampling=false")
        if model.method == "mau" and rnn.patch_size != 1:
            raise ValueError(f"model.recurrent.patch_size={rnn.patch_size}: mau runs on "
                             "unpatched frames; valid: 1")
        if model.method in CARRIED_STATE_METHODS and rnn.openstl_quirks and data is not None:
            check_constant_batch(model.method, data, world_sizes, val_windows)
    with torch.device("meta"):
        build_model(model)  # the model's own checks: widths, layers, patch size, frames


def check_constant_batch(method: str, data: DataConfig, world_sizes: tuple[int, ...],
                         val_windows: int | None) -> None:
    """Every batch a worker sees (training: data.batch_size / world, drop_last; validation:
    data.val_batch_size, the last one short unless it divides the split) has one size."""
    fix = "or model.recurrent.openstl_quirks=false (no state carried across batches)"
    why = (f"model.method={method} carries its cell state across batches "
           "(model.recurrent.openstl_quirks=true), so every batch needs one size")
    for world in world_sizes:
        train_batch = data.batch_size // world
        if train_batch != data.val_batch_size:
            workers = f" on {world} workers" if world > 1 else ""
            raise ValueError(f"{why}: data.val_batch_size={data.val_batch_size} != training "
                             f"batch {train_batch}{workers}; set data.val_batch_size="
                             f"{train_batch} {fix}")
    if val_windows is not None and val_windows % data.val_batch_size:
        raise ValueError(f"{why}: the {val_windows} validation windows leave a last batch of "
                         f"{val_windows % data.val_batch_size} at data.val_batch_size="
                         f"{data.val_batch_size}; choose a divisor of {val_windows} {fix}")


METHODS: dict[str, Callable[..., Any]] = {"simvp": lambda config, rank: SimVPMethod(config)}


def build_method(config: RunConfig, rank: int = 0) -> SimVPMethod | RecurrentMethod:
    """The training method `config.model.method` names (every recurrent one shares one)."""
    factory = METHODS.get(config.model.method, RecurrentMethod)
    return factory(config, rank)
