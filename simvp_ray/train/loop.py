"""The training loop: plain PyTorch, one readable path, no Ray.

`run_training(config, runtime)` trains `config.model` on the batches `runtime` provides and
reports per-epoch metrics (and checkpoint folders) through `runtime.report`. A unit test or a
notebook passes plain iterables; `simvp_ray.distributed` passes Ray Train's dataset shards, DDP
wrapping, all-reduce and `ray.train.report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simvp_ray.config import RunConfig
from simvp_ray.metric_keys import EPOCH_KEYS  # reported each epoch, per lead time too
from simvp_ray.models import build_model, to_openstl_state_dict
from simvp_ray.models.openstl import load_checked
from simvp_ray.models.profile import count_flops
from simvp_ray.train.checkpoint import CheckpointPayload, save_checkpoint, set_rng_state
from simvp_ray.train.methods import build_method
from simvp_ray.train.metrics import MetricAccumulator, MetricContext, persistence_forecast
from simvp_ray.train.optim import build_optimizer, build_scheduler
from simvp_ray.train.performance import (
    SpeedOptions,
    autocast,
    bf16_supported,
    compile_if_asked,
    peak_tflops,
    place_model,
)

Batch = Mapping[str, Any]  # {"x": (B, T_in, C, H, W), "y": (B, T_out, C, H, W)} arrays/tensors
# Steps between non-finite loss checks: each check is a host sync and an all-reduce, so it is
# amortised; every worker checks at the same steps and again before any checkpoint is written.
FINITE_CHECK_EVERY = 32


def _no_op_reduce(tensor: torch.Tensor) -> None:
    return None


@dataclass
class Runtime:
    """Everything the loop needs from its caller."""

    train_batches: Callable[[int], Iterable[Batch]]  # epoch -> this worker's training batches
    val_batches: Callable[[], Iterable[Batch]]  # this worker's share of the validation split
    steps_per_epoch: int  # optimiser steps per epoch, equal on every worker
    checkpoint_dir: Path  # where this worker may write checkpoint folders before reporting
    report: Callable[[dict[str, float], Path | None], None]  # every worker, every epoch
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # normalisation, channel names, latitudes; None: metrics in normalised units only
    metrics: MetricContext | None = None
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model  # e.g. DDP
    all_reduce: Callable[[torch.Tensor], None] = _no_op_reduce  # in-place SUM over workers
    resume: CheckpointPayload | None = None  # the checkpoint to continue from
    log: Callable[[str], None] = print


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; earlier checkpoints are untouched."""


def speed_options(config: RunConfig) -> SpeedOptions:
    return SpeedOptions(channels_last=config.train.channels_last, compile=config.train.compile,
                        precision=config.train.precision)


def _as_tensor(value: Any, device: torch.device) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return tensor.to(device=device, dtype=torch.float32, non_blocking=True)


def _timed(batches: Iterable[Batch], waited: list[float]) -> Iterator[Batch]:
    """The batches, adding the seconds spent waiting for each to waited[0]."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        batch = next(iterator, None)
        waited[0] += time.perf_counter() - start
        if batch is None:
            return
        yield batch


def _check_finite(bad: torch.Tensor, runtime: Runtime, epoch: int, global_step: int) -> None:
    """One host sync: bad = (non-finite losses, first bad step, its loss) of this worker since
    the last check; all workers raise together when any saw one."""
    flags = bad[:1].clone()
    runtime.all_reduce(flags)
    if flags.item() > 0:
        where = (f"loss is {bad[2].item()} on this worker at epoch {epoch} step "
                 f"{int(bad[1].item())}" if bad[0].item() > 0 else
                 f"loss is non-finite on another worker at epoch {epoch}")
        raise NonFiniteLossError(f"{where} (global step {global_step}); training stopped, "
                                 "earlier checkpoints are kept")


def evaluate(model: torch.nn.Module, batches: Iterable[Batch], runtime: Runtime,
             options: SpeedOptions, out_frames: int, channels: int) -> dict[str, float]:
    """Validation metrics of the model and of persistence, reduced exactly over workers."""
    model.eval()
    accumulators = {
        name: MetricAccumulator(out_frames, channels, device=runtime.device)
        if runtime.metrics is None else
        runtime.metrics.accumulator(out_frames, channels, runtime.device)
        for name in ("val", "val_persistence")
    }
    with torch.no_grad():
        for batch in batches:
            x, y = _as_tensor(batch["x"], runtime.device), _as_tensor(batch["y"], runtime.device)
            with autocast(options, runtime.device):
                pred = model(x)
            accumulators["val"].update(pred.float(), y)
            accumulators["val_persistence"].update(persistence_forecast(x, out_frames), y)
    metrics = {}
    for prefix, accumulator in accumulators.items():
        state = accumulator.state().to(runtime.device)
        runtime.all_reduce(state)
        accumulator.load_state(state)
        values = accumulator.compute()
        metrics.update({f"{prefix}/{key}": value for key, value in values.items()
                        if key.split("/")[0] in EPOCH_KEYS})
    return metrics


def run_training(config: RunConfig, runtime: Runtime) -> dict[str, float]:
    """Train for config.train.epochs (from the resume point); returns the last epoch's metrics."""
    options = speed_options(config)
    if options.precision == "bf16" and not bf16_supported(runtime.device):
        raise ValueError(f"train.precision=bf16 but {runtime.device} has no bf16 support; "
                         "use train.precision=fp32")
    torch.manual_seed(config.train.seed)
    # `plain` owns the parameters (optimiser, checkpoints); `model` is what we call (DDP, compile)
    plain = place_model(build_model(config.model), options, runtime.device)
    optimizer = build_optimizer(plain, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.train.epochs,
                                runtime.steps_per_epoch)
    method = build_method(config, runtime.rank)  # the training step: SimVP's or an RNN's
    start_epoch, global_step, history = 0, 0, []
    if runtime.resume is not None:
        if runtime.resume.config.model != config.model:
            raise ValueError(
                "cannot resume: the checkpoint's model config differs from this run's: "
                f"checkpoint {runtime.resume.config.model}, run {config.model}")
        load_checked(plain, runtime.resume.model)
        optimizer.load_state_dict(runtime.resume.optimizer)
        scheduler.load_state_dict(runtime.resume.scheduler)
        set_rng_state(runtime.resume.rng)
        method.load_state_dict(runtime.resume.method)  # the sampler's state (eta)
        start_epoch = runtime.resume.epoch + 1
        global_step = runtime.resume.global_step
        history = list(runtime.resume.history)
    model = compile_if_asked(runtime.wrap_model(method.wrap(plain)), options)
    # evaluation needs no gradient sync, and DDP's forward would sync buffers with the other
    # ranks, which score different numbers of batches: each scores its share locally
    eval_model = plain if runtime.world_size > 1 else model
    # FLOPs (2 per multiply-add, as MFU counts them) of forward + backward (2 x forward)
    flops_per_sample = 3 * count_flops(config.model)[0]
    peak = peak_tflops(runtime.device, options.precision)
    metrics: dict[str, float] = {}
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config.train.epochs):
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # (sum, count)
        waited = [0.0]  # seconds this epoch waited for its next batch
        batches = _timed(runtime.train_batches(epoch), waited)
        # (non-finite losses, first bad step, its loss) since the last check, kept on device
        bad = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64, device=runtime.device)
        last_lr = optimizer.param_groups[0]["lr"]
        next_line = epoch_start + config.train.log_every_s  # in-epoch progress (rank 0)
        for step, batch in zip(range(runtime.steps_per_epoch), batches):
            x, y = _as_tensor(batch["x"], runtime.device), _as_tensor(batch["y"], runtime.device)
            with autocast(options, runtime.device):
                loss = method.training_loss(model, x, y, global_step, epoch)
            # no host sync here: the check reads `bad` every FINITE_CHECK_EVERY steps, at the
            # same step on every worker (a lone raise would hang DDP's all-reduce)
            non_finite = ~torch.isfinite(loss.detach())
            first = non_finite & (bad[0] == 0)
            bad[1].masked_fill_(first, step)
            bad[2] = torch.where(first, loss.detach().double(), bad[2])
            bad[0] += non_finite.double()
            if (step + 1) % FINITE_CHECK_EVERY == 0:
                _check_finite(bad, runtime, epoch, global_step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            # logged: the rate this epoch's last step used (after the run's final step a
            # OneCycle schedule is past its end, and its next value means nothing)
            last_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            global_step += 1
            loss_sum[0] += loss.detach().double() * x.shape[0]
            loss_sum[1] += x.shape[0]  # a Python number: no host-to-device copy
            now = time.perf_counter()
            if config.train.log_every_s and runtime.rank == 0 and now >= next_line:
                next_line = now + config.train.log_every_s  # the loss is read only now
                runtime.log(step_line(epoch, config.train.epochs, step + 1,
                                      runtime.steps_per_epoch, x.shape[0] * runtime.world_size,
                                      loss.item(), now - epoch_start))
        _check_finite(bad, runtime, epoch, global_step)  # before evaluation and checkpoints
        train_time = time.perf_counter() - epoch_start
        runtime.all_reduce(loss_sum)
        metrics = evaluate(eval_model, runtime.val_batches(), runtime, options,
                           config.model.out_frames, config.model.channels)
        epoch_time = time.perf_counter() - epoch_start
        samples = loss_sum[1].item()
        metrics.update({
            "epoch": epoch,
            "train/loss": loss_sum[0].item() / max(samples, 1.0),
            "train/samples": samples,
            "train/samples_per_s": samples / train_time,
            "train/epoch_time_s": train_time,
            # waiting for the next batch / training time: near 0 when the model is the limit
            "train/data_wait_frac": waited[0] / train_time,
            "train/tflops": flops_per_sample * samples / train_time / 1e12,  # all workers
            "epoch_time_s": epoch_time,
            "lr": last_lr,
        })
        if peak is not None:  # MFU: each worker's share of the achieved rate / its peak
            metrics["train/mfu"] = metrics["train/tflops"] / runtime.world_size / peak
        if not math.isfinite(metrics["val/mse"]):
            raise NonFiniteLossError(f"validation MSE is {metrics['val/mse']} after epoch "
                                     f"{epoch}; stopped, earlier checkpoints are kept")
        history.append(metrics)
        last = epoch == config.train.epochs - 1
        checkpoint = None
        if runtime.rank == 0 and (last or (epoch + 1) % config.train.checkpoint_every == 0):
            checkpoint = save_checkpoint(
                runtime.checkpoint_dir / f"epoch_{epoch:04d}",
                model_state=to_openstl_state_dict(plain), optimizer=optimizer,
                scheduler=scheduler, epoch=epoch, global_step=global_step, config=config,
                history=history, method_state=method.state_dict())
        if runtime.rank == 0:
            runtime.log(progress_line(metrics, epoch, config.train.epochs, start_epoch,
                                      time.perf_counter() - run_start))
        runtime.report(metrics, checkpoint)
    return metrics


def step_line(epoch: int, epochs: int, steps_done: int, steps: int, global_batch: int,
              loss: float, elapsed: float) -> str:
    """The in-epoch line every train.log_every_s: how far, how fast, how long to go."""
    eta = elapsed / steps_done * (steps - steps_done)
    return (f"epoch {epoch + 1}/{epochs}  step {steps_done}/{steps}  "
            f"{steps_done * global_batch / elapsed:.1f} samples/s  loss {loss:.5f}  "
            f"epoch eta {eta:.0f}s")


def progress_line(metrics: dict[str, float], epoch: int, epochs: int, start_epoch: int,
                  elapsed: float) -> str:
    done = epoch + 1 - start_epoch
    eta = elapsed / done * (epochs - epoch - 1)
    return (f"epoch {epoch + 1}/{epochs}  loss {metrics['train/loss']:.5f}  "
            f"val mse {metrics['val/mse']:.5f} (persistence {metrics['val_persistence/mse']:.5f})"
            f"  mae {metrics['val/mae']:.4f}  ssim {metrics['val/ssim']:.4f}  "
            f"{metrics['train/samples_per_s']:.1f} samples/s  "
            f"data wait {metrics.get('train/data_wait_frac', 0.0):.0%}  "
            f"{metrics.get('train/tflops', 0.0):.3g} TFLOP/s"
            + (f" (MFU {metrics['train/mfu']:.1%})" if "train/mfu" in metrics else "")
            + f"  eta {eta:.0f}s")
