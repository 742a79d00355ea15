"""Forward+backward samples/s of SimVP and recurrent presets under each speed option.

    python benchmarks/model_speed.py                          # CPU, 2 threads, default presets
    python benchmarks/model_speed.py --presets mmnist_convlstm mmnist_predrnn --options eager
    python benchmarks/model_speed.py --presets taxibj_gsta --options eager channels_last bf16
    python benchmarks/model_speed.py --device cuda --batch 64  # GPU: also TFLOP/s and MFU

Options are timed interleaved (one step of each option per round) so machine noise hits
them alike; the table gives the median samples/s and the ratio to eager in the same run.
The training step is OpenSTL's timing protocol (spec/models.md section 4): train() mode,
MSE loss, zero_grad(set_to_none=True), forward and backward, no optimiser step. A recurrent
preset's step is its training loss on inputs and targets under an all-ones (teacher-forcing)
mask, OpenSTL's own timing dummy (spec/rnn.md section 6).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from simvp_ray.models import build_model
from simvp_ray.models.profile import training_step_loss
from simvp_ray.presets import get_preset
from simvp_ray.train.performance import SpeedOptions, autocast, bf16_supported, prepare_model

OPTIONS = {
    "eager": SpeedOptions(),
    "channels_last": SpeedOptions(channels_last=True),
    "tuned_backends": SpeedOptions(tuned_backends=True),
    "bf16": SpeedOptions(precision="bf16"),
    "bf16+channels_last": SpeedOptions(precision="bf16", channels_last=True),
    "compile": SpeedOptions(compile=True),
    "compile+channels_last": SpeedOptions(compile=True, channels_last=True),
}
# OpenSTL's own model on this kind of machine (spec/models.md section 4: 2-core EPYC,
# 2 threads, fp32 eager; median / best of 5 under load): fwd+bwd samples/s and batch size.
OPENSTL_CPU = {"taxibj_gsta": (5.38, 5.65, 16), "mmnist_gsta": (0.30, 1.02, 2)}
# Dense peak TFLOP/s for MFU (bf16 tensor cores / fp32 without TF32), by device name.
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}
DEFAULT_BATCH = {"taxibj": 16, "mmnist": 2, "weather_t2m": 16, "weather_mv": 16}


def train_step_flops(model: torch.nn.Module, config, x: torch.Tensor,
                     target: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        training_step_loss(model, config, x, target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def make_step(model, config, options: SpeedOptions, device, x, target):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(options, device):
            loss = training_step_loss(model, config, x, target).float()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def run_preset(name: str, option_names: list[str], batch: int, device: torch.device,
               warmup: int, iters: int) -> list[dict]:
    config = get_preset(name).model
    torch.manual_seed(0)
    base = build_model(config).train()
    x = torch.rand(batch, config.in_frames, config.channels, config.height, config.width,
                   device=device)
    target = torch.rand(batch, config.out_frames, *x.shape[2:], device=device)
    flops = train_step_flops(base.to(device), config, x, target)
    steps = {}
    for option in option_names:
        options = OPTIONS[option]
        if options.precision == "bf16" and not bf16_supported(device):
            print(f"# {name}: skipping {option}: no bf16 on {device}", file=sys.stderr)
            continue
        model = build_model(config).train()
        model.load_state_dict(base.state_dict())
        steps[option] = make_step(prepare_model(model, options, device), config, options,
                                  device, x, target)
    for option, step in steps.items():
        start = time.perf_counter()
        for _ in range(warmup):
            step()
        print(f"# {name} {option}: warm-up {time.perf_counter() - start:.1f} s", file=sys.stderr)
    times = {option: [] for option in steps}
    for _ in range(iters):
        for option, step in steps.items():
            start = time.perf_counter()
            step()
            times[option].append(time.perf_counter() - start)
    eager = statistics.median(times["eager"]) if "eager" in times else None
    rows = []
    for option, samples in times.items():
        median = statistics.median(samples)
        rows.append({"preset": name, "option": option, "batch": batch,
                     "samples_per_s": batch / median, "best_samples_per_s": batch / min(samples),
                     "vs_eager": eager / median if eager else None,
                     "tflops": flops / median / 1e12, "precision": OPTIONS[option].precision})
    return rows


def mfu(row: dict, device: torch.device) -> str:
    if device.type != "cuda":
        return "-"
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return f"{100 * row['tflops'] / peaks[row['precision']]:.1f}%"
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+",
                        default=["taxibj_gsta", "taxibj_incepu", "mmnist_gsta", "mmnist_incepu"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--batch", type=int, default=None, help="default: OpenSTL's timing batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# torch {torch.__version__}, device {device}, {args.threads} threads, "
          f"{args.iters} interleaved rounds after {args.warmup} warm-up steps")
    print("| preset | batch | option | samples/s (median) | best | vs eager | TFLOP/s | MFU "
          "| OpenSTL eager samples/s (median / best) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for name in args.presets:
        batch = args.batch or next(size for dataset, size in DEFAULT_BATCH.items()
                                   if name.startswith(f"{dataset}_"))
        for row in run_preset(name, args.options, batch, device, args.warmup, args.iters):
            peer = OPENSTL_CPU.get(name)
            peer_text = (f"{peer[0]:.2f} / {peer[1]:.2f}" if peer and row["option"] == "eager"
                         and device.type == "cpu" and batch == peer[2] else "")
            ratio = f"{row['vs_eager']:.2f}x" if row["vs_eager"] else "-"
            print(f"| {name} | {batch} | {row['option']} | {row['samples_per_s']:.2f} | "
                  f"{row['best_samples_per_s']:.2f} | {ratio} | {row['tflops']:.3f} | "
                  f"{mfu(row, device)} | {peer_text} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
