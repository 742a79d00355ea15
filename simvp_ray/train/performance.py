"""Speed options for training and inference: channels_last, torch.compile, bf16 autocast.

One place decides how a model and its inputs are prepared, so the training loop, evaluation
and `benchmarks/model_speed.py` measure and use exactly the same options.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False  # NHWC memory format: oneDNN / cuDNN convolutions prefer it
    compile: bool = False  # torch.compile (inductor)
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimiser stay fp32)
    tuned_backends: bool = False  # cudnn.benchmark + TF32 on GPU; flush denormals on CPU


PRECISIONS = ("fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def apply_backend_settings(options: SpeedOptions, device: torch.device) -> None:
    """Process-wide switches; only ever turned on, never off, by this function."""
    if not options.tuned_backends:
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_flush_denormal(True)


def place_model(model: torch.nn.Module, options: SpeedOptions,
                device: torch.device) -> torch.nn.Module:
    """Move to `device` in the chosen memory format, in place (the optimiser keeps its refs)."""
    if options.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {options.precision!r}; valid: {', '.join(PRECISIONS)}")
    apply_backend_settings(options, device)
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compile_if_asked(model: torch.nn.Module, options: SpeedOptions) -> torch.nn.Module:
    # static shapes: training batches keep one shape (drop_last), and dynamic-shape
    # recompiles of a second model in one process fail in inductor ("1 < s92", torch 2.13)
    return torch.compile(model, dynamic=False) if options.compile else model


def prepare_model(model: torch.nn.Module, options: SpeedOptions,
                  device: torch.device) -> torch.nn.Module:
    """place_model, then torch.compile when asked. Returns the module to call."""
    return compile_if_asked(place_model(model, options, device), options)


def autocast(options: SpeedOptions, device: torch.device):
    """The autocast context for forward passes (a no-op for fp32)."""
    if options.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Dense peak TFLOP/s per device (bf16 tensor cores / fp32 without TF32), by device name: the
# denominator of MFU. Devices not listed get no MFU (their TFLOP/s is still reported).
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for `precision`, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks[precision] for key, peaks in PEAK_TFLOPS.items() if key in name), None)
