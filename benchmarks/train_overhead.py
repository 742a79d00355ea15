"""Epoch time of the Ray path (jobs/train.py: Ray Train + resident data) vs a plain loop.

    python benchmarks/train_overhead.py                    # demo preset, synthetic data, CPU
    python benchmarks/train_overhead.py --epochs 4 --threads 2

Both run the same training loop (`run_training`) on the same preset, data and seed: the
plain loop over in-memory tensors in this process, the Ray path through `launch_run`
with one worker, its data in `data.mode` (default resident: the splits in the object store,
batches cut by numpy in a background thread; `--mode streaming` for the streamed path).
Epoch times exclude start-up, which is reported separately; the first epoch is dropped as
warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from simvp_ray.config import override
from simvp_ray.data import open_dataset, read_windows, window_starts
from simvp_ray.data.synthetic import ensure_synthetic_store
from simvp_ray.distributed.trainer import launch_run
from simvp_ray.presets import get_preset
from simvp_ray.train.loop import Runtime, run_training
from simvp_ray.train.metrics import MetricContext


def plain_epoch_times(config, threads: int, folder: Path) -> list[dict[str, float]]:
    torch.set_num_threads(threads)
    dataset = open_dataset(config.data.url)
    model = config.model
    windows = {split: read_windows(dataset, window_starts(dataset, split, model.in_frames,
                                                          model.out_frames),
                                   model.in_frames, model.out_frames)
               for split in ("train", "val")}
    train = {key: torch.from_numpy(value) for key, value in windows["train"].items()}
    batch = config.data.batch_size

    def train_batches(epoch: int):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(train["x"])))
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch]
            yield {"x": train["x"][index], "y": train["y"][index]}

    def val_batches():
        size = config.data.val_batch_size
        for start in range(0, len(windows["val"]["x"]), size):
            yield {key: value[start:start + size] for key, value in windows["val"].items()}

    reports = []
    runtime = Runtime(train_batches=train_batches, val_batches=val_batches,
                      steps_per_epoch=len(train["x"]) // batch, checkpoint_dir=folder,
                      report=lambda metrics, ckpt: reports.append(metrics),
                      metrics=MetricContext(dataset.stats.offset, dataset.stats.scale, "zscore"),
                      log=lambda line: None)
    run_training(config, runtime)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both paths")
    parser.add_argument("--mode", default="resident", help="data.mode of the Ray path")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = override(get_preset(args.preset), [*args.set, f"train.epochs={args.epochs}",
                                                f"scaling.cpus_per_worker={args.threads}",
                                                f"data.mode={args.mode}"])
    if not config.data.url:
        config = override(config, {"data.url": ensure_synthetic_store()})
    with tempfile.TemporaryDirectory() as folder:
        plain = plain_epoch_times(config, args.threads, Path(folder) / "plain")
        start = time.time()
        result = launch_run(config, storage=str(Path(folder) / "runs"), name="overhead")
        ray_wall = time.time() - start
    ray_rows = result.history
    rows = []
    for key, label in (("train/epoch_time_s", "training part"),
                       ("epoch_time_s", "epoch incl. validation")):
        plain_s = statistics.median(r[key] for r in plain[1:])
        ray_s = statistics.median(r[key] for r in ray_rows[1:])
        rows.append((label, plain_s, ray_s, ray_s / plain_s))
    startup = ray_wall - sum(r["epoch_time_s"] for r in ray_rows)
    print(f"# preset {config.name}, {args.epochs} epochs (first dropped), {args.threads} "
          f"threads, torch {torch.__version__}")
    print(f"| per epoch (median) | plain loop, in-memory tensors (s) | Ray Train + {args.mode} "
          "data (s) | Ray / plain |")
    print("|---|---:|---:|---:|")
    for label, plain_s, ray_s, ratio in rows:
        print(f"| {label} | {plain_s:.2f} | {ray_s:.2f} | {ratio:.3f}x |")
    print(f"\nRay path start-up and shutdown (cluster, workers, datasets, artifacts): "
          f"{startup:.1f} s of {ray_wall:.1f} s wall")
    wait = statistics.median(r["train/data_wait_frac"] for r in ray_rows[1:])
    print(f"Ray path data-wait fraction (median): {wait:.3%}")
    print(f"final val/mse: plain {plain[-1]['val/mse']:.5f}, ray {ray_rows[-1]['val/mse']:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
