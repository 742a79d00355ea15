"""Model cost: parameters, FLOPs per sample (as OpenSTL's tables count them) and samples/s.

FLOPs are counted by `torch.utils.flop_counter` on one sample on the meta device (shapes only,
no arithmetic), and halved: that counter counts a multiply-add as 2 FLOPs while OpenSTL's
tables (fvcore) count multiply-adds. fvcore also counts LayerNorm / GroupNorm (4 per element,
5 with affine parameters), which the torch counter skips: we add them the same way.
What is counted is OpenSTL's dummy call: SimVP's eval forward of (1, T, C, H, W); for the
recurrent methods their training forward with loss on all-ones frames and an all-ones
(teacher-forcing) mask, as OpenSTL's `display_method_info` builds it (spec/rnn.md section 6).
A SimVP grid that is not a multiple of the encoder's down-sampling factor is counted at its
padded size (what the model computes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from simvp_ray.config import ModelConfig
from simvp_ray.models.recurrent.build import training_mask_shape
from simvp_ray.models.simvp import build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class NormFlopCounter(TorchDispatchMode):
    """fvcore's count for LayerNorm / GroupNorm: 5 per input element with affine, else 4."""

    OPS = {torch.ops.aten.native_layer_norm.default: 2,  # op -> index of the weight argument
           torch.ops.aten.native_group_norm.default: 1}

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            weight_index = self.OPS[func]
            affine = len(args) > weight_index and args[weight_index] is not None
            self.flops += args[0].numel() * (5 if affine else 4)
        return func(*args, **(kwargs or {}))


def cost_call(model: torch.nn.Module, model_config: ModelConfig, batch_size: int = 1,
              device: str | torch.device | None = None) -> Callable[[], torch.Tensor]:
    """OpenSTL's FLOPs dummy call on all-ones inputs: SimVP's forward, a recurrent method's
    teacher-forced training forward with its loss."""
    shape = (model_config.channels, model_config.height, model_config.width)
    x = torch.ones(batch_size, model_config.in_frames, *shape, device=device)
    if model_config.method == "simvp":
        return lambda: model(x)
    y = torch.ones(batch_size, model_config.out_frames, *shape, device=device)
    mask = torch.ones(training_mask_shape(model_config, batch_size), device=device)
    return lambda: model.training_loss(x, y, mask)


def training_step_loss(model: torch.nn.Module, model_config: ModelConfig, x: torch.Tensor,
                       target: torch.Tensor) -> torch.Tensor:
    """The loss one timed training step back-propagates (OpenSTL's timing protocol)."""
    if model_config.method == "simvp":
        return torch.nn.functional.mse_loss(model(x), target)
    mask = torch.ones(training_mask_shape(model_config, x.shape[0]), device=x.device)
    return model.training_loss(x, target, mask)


def fvcore_einsum_flops(a_shape, b_shape, *args, **kwargs) -> int:
    """E3D-LSTM's two einsums run as bmm. fvcore counts an einsum from numpy's einsum_path
    report, which prints the FLOPs (2 per multiply-add) as '%.3e': its count is that rounded
    number / 2. Returned x2, like the torch counter's own formulas."""
    batch, n, k = a_shape
    return 2 * int(float(f"{2 * batch * n * k * b_shape[2]:.3e}") // 2)


# Methods whose bmm calls OpenSTL's fvcore count as einsums (only E3D-LSTM's recall uses one).
FVCORE_FLOP_MAPPINGS = {"e3dlstm": {torch.ops.aten.bmm: fvcore_einsum_flops}}


def count_flops(model_config: ModelConfig) -> tuple[int, int]:
    """(torch.utils.flop_counter FLOPs (2 per multiply-add), fvcore's norm FLOPs) of the
    dummy call on one sample."""
    with torch.device("meta"):
        model = build_model(model_config).eval()
        call = cost_call(model, model_config)
    counter = FlopCounterMode(display=False,
                              custom_mapping=FVCORE_FLOP_MAPPINGS.get(model_config.method))
    norms = NormFlopCounter()
    with counter, norms, torch.no_grad():
        call()
    return counter.get_total_flops(), norms.flops


def measure_speed(model: torch.nn.Module, model_config: ModelConfig, batch_size: int,
                  device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    """Median forward (eval, no_grad) and forward+backward (train: MSE, or a recurrent
    method's training loss under a teacher-forcing mask) samples/s."""
    shape = (batch_size, model_config.in_frames, model_config.channels, model_config.height,
             model_config.width)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=generator).to(device)
    target = torch.rand((batch_size, model_config.out_frames, *shape[2:]),
                        generator=generator).to(device)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        training_step_loss(model, model_config, x, target).backward()

    model.eval()
    fwd = _median_seconds(forward, device, iters, warmup)
    model.train()
    fwd_bwd = _median_seconds(forward_backward, device, iters, warmup)
    return {"forward_samples_per_s": batch_size / fwd,
            "train_samples_per_s": batch_size / fwd_bwd}


def _median_seconds(step, device: torch.device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(model_config: ModelConfig, device: str | torch.device | None = None, *,
            batch_size: int = 4, iters: int = 3, warmup: int = 1,
            measure: bool = True) -> dict[str, Any]:
    """params, flops (multiply-adds per sample), flop_counter_flops, and measured samples/s.

    `measure=False` skips the timing (params and FLOPs come from the meta device, instantly).
    """
    flops, norm_flops = count_flops(model_config)
    with torch.device("meta"):
        params = count_parameters(build_model(model_config))
    result: dict[str, Any] = {"params": params, "flops": flops // 2 + norm_flops,
                              "flop_counter_flops": flops}
    if measure:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_model(model_config).to(device)
        result.update(measure_speed(model, model_config, batch_size, device, iters, warmup))
        result["device"] = str(device)
        result["batch_size"] = batch_size
    return result
