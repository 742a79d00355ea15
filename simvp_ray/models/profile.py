"""Model cost: parameters, FLOPs per sample (as OpenSTL's tables count them) and samples/s.

FLOPs are counted by `torch.utils.flop_counter` on one (1, T, C, H, W) sample in eval mode on
the meta device (shapes only, no arithmetic), and halved: that counter counts a multiply-add as
2 FLOPs while OpenSTL's tables (fvcore) count multiply-adds. A grid that is not a multiple of
the encoder's down-sampling factor is counted at its padded size (what the model computes).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from simvp_ray.config import ModelConfig
from simvp_ray.models.simvp import build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model_config: ModelConfig) -> int:
    """torch.utils.flop_counter FLOPs of one forward sample (2 per multiply-add)."""
    with torch.device("meta"):
        model = build_model(model_config).eval()
        x = torch.empty(1, model_config.in_frames, model_config.channels, model_config.height,
                        model_config.width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def measure_speed(model: torch.nn.Module, model_config: ModelConfig, batch_size: int,
                  device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    """Median forward (eval, no_grad) and forward+backward (train, MSE) samples/s."""
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
        torch.nn.functional.mse_loss(model(x), target).backward()

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
    flops = count_flops(model_config)
    with torch.device("meta"):
        params = count_parameters(build_model(model_config))
    result: dict[str, Any] = {"params": params, "flops": flops // 2, "flop_counter_flops": flops}
    if measure:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = build_model(model_config).to(device)
        result.update(measure_speed(model, model_config, batch_size, device, iters, warmup))
        result["device"] = str(device)
        result["batch_size"] = batch_size
    return result
