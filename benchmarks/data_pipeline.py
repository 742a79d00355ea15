"""Windows/s of the data paths on TaxiBJ- and WeatherBench-shaped stores, and bytes read per epoch.

    python benchmarks/data_pipeline.py             # TaxiBJ 22,000 x 2x32x32, WB 50,000 x 1x32x64
    python benchmarks/data_pipeline.py --quick     # small stores, under two minutes

Paths, over one epoch of the training split: (1) numpy fancy-indexing of the normalised array
in memory (the ceiling), (2) `iter_numpy_batches` from the Zarr store, (3) Ray Data
(`build_ray_datasets`) consumed with `iter_torch_batches` in one Ray Train worker, each shuffled
and not; (3s) the span design: Ray Data rows are chunk-aligned spans of frames (each read once,
halo included) and the worker cuts the windows with numpy, shuffling within a buffer of spans.
Bytes read per epoch / stored bytes of the split's chunks: counted through a wrapping
zarr store for (2), by replaying every read task's span through the same store for (3).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zarr.storage import LocalStore, WrapperStore

from simvp_ray.config import DataConfig, ModelConfig
from simvp_ray.data import (
    StoreLayout,
    create_store,
    iter_numpy_batches,
    normalize,
    open_dataset,
    read_windows,
    window_offsets,
    window_starts,
)
from simvp_ray.data.schema import default_splits


@dataclass(frozen=True)
class Shape:
    """A store to generate and the window the matching OpenSTL recipe cuts from it."""

    name: str
    n_frames: int
    channels: int
    height: int
    width: int
    in_frames: int
    out_frames: int


class CountingStore(WrapperStore):
    """Counts the bytes of `frames` chunks fetched through it (metadata reads excluded)."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.frame_bytes = 0

    def _count(self, key: str, buffer) -> None:
        if buffer is not None and key.startswith("frames/c"):
            self.frame_bytes += len(buffer)

    async def get(self, key, prototype, byte_range=None):
        buffer = await super().get(key, prototype, byte_range)
        self._count(key, buffer)
        return buffer

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        buffers = await super().get_partial_values(prototype, key_ranges)
        for (key, _), buffer in zip(key_ranges, buffers):
            self._count(key, buffer)
        return buffers


def write_store(path: Path, shape: Shape, seed: int = 0) -> None:
    """Synthetic frames (random, so zstd cannot shrink them) with a few 2-step gaps."""
    rng = np.random.default_rng(seed)
    n = shape.n_frames
    layout = StoreLayout(
        time=np.arange(n), channels=[f"var_{c}" for c in range(shape.channels)],
        units=["1"] * shape.channels, height=shape.height, width=shape.width,
        splits=default_splits(n),
        metadata={"converter": "benchmark", "converter_version": "1",
                  "source": "benchmarks/data_pipeline.py", "licence": "none",
                  "citation": "none"},
        time_step=1, time_unit="step")
    writer = create_store(path, layout, overwrite=True)
    gaps = rng.choice(np.arange(10, n - 10), max(1, n // 5000), replace=False)
    block = 4096
    for a in range(0, n, block):
        frames = rng.standard_normal((min(block, n - a), shape.channels, shape.height,
                                      shape.width), dtype=np.float32)
        valid = np.ones(len(frames), bool)
        for g in gaps[(gaps >= a) & (gaps < a + len(frames) - 1)]:
            valid[g - a : g - a + 2] = False
        writer.write(a, frames, valid)
    writer.finish("zscore")


def rate(windows: int, seconds: float) -> float:
    return windows / seconds if seconds > 0 else float("nan")


def bench_numpy_memory(dataset, starts, steps, in_frames, batch, shuffle) -> float:
    frames = normalize(dataset.frames[:], dataset.stats)  # (T, C, H, W), in memory
    order = np.random.default_rng(0).permutation(starts) if shuffle else starts
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        windows = frames[order[i : i + batch, None] + steps[None, :]]  # (B, T_in + T_out, ...)
        x, y = windows[:, :in_frames], windows[:, in_frames:]
    del x, y
    return rate(len(order), time.perf_counter() - t0)


def bench_numpy_store(path, shape, batch, shuffle) -> tuple[float, int]:
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = open_dataset(counting)
    t0 = time.perf_counter()
    n = 0
    for b in iter_numpy_batches(dataset, "train", shape.in_frames, shape.out_frames, batch,
                                shuffle=shuffle, seed=0):
        n += len(b["x"])
    return rate(n, time.perf_counter() - t0), counting.frame_bytes


def split_bytes(path, shape) -> int:
    """Stored bytes of the chunks that hold the training split: the 1.0 of the bytes ratio."""
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = open_dataset(counting)
    a, b = dataset.split_range("train")
    dataset.frames[a:b]
    return counting.frame_bytes


def ray_read_bytes(path, data: DataConfig, model: ModelConfig) -> int:
    """Replays every read task's span (the datasource's groups) through a counting store."""
    from simvp_ray.data.ray_data import ZarrWindowDatasource

    source = ZarrWindowDatasource(str(path), "train", data, model)
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = open_dataset(counting)
    for group in source.groups:
        read_windows(dataset, group, model.in_frames, model.out_frames)
    return counting.frame_bytes


def span_dataset(path: Path, shape: Shape, data: DataConfig, model: ModelConfig):
    """(3s): one row per read group of the window datasource: its frames, read once with the
    halo, and the window starts relative to the span's first frame."""
    import ray

    from simvp_ray.data.ray_data import ZarrWindowDatasource

    groups = ZarrWindowDatasource(str(path), "train", data, model).groups
    extent = shape.in_frames + shape.out_frames
    url = str(path)

    def read(batch: dict) -> dict:
        dataset = open_dataset(url)
        group = groups[int(batch["group"][0])]
        a, b = int(group[0]), int(group[-1]) + extent
        frames = normalize(dataset.frames[a:b], dataset.stats)  # (L, C, H, W)
        return {"frames": frames[None], "starts": (group - a)[None]}

    return ray.data.range(len(groups), override_num_blocks=len(groups)).map_batches(
        lambda b: {"group": b["id"]}, batch_size=1).map_batches(read, batch_size=1)


def iter_span_batches(shard, batch: int, steps: np.ndarray, in_frames: int, shuffle: bool,
                      seed: int, buffer_spans: int = 2):
    """Worker side of (3s): cut windows from the spans, shuffle within buffer_spans spans."""
    import torch

    rng = np.random.default_rng(seed)
    pending: list[np.ndarray] = []

    def emit(windows: np.ndarray):
        windows = windows[rng.permutation(len(windows))] if shuffle else windows
        x, y = torch.from_numpy(windows[:, :in_frames]), torch.from_numpy(windows[:, in_frames:])
        for i in range(0, len(windows) - batch + 1, batch):
            yield {"x": x[i:i + batch], "y": y[i:i + batch]}

    for block in shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for frames, local in zip(block["frames"], block["starts"]):
            pending.append(frames[local[:, None] + steps[None, :]])  # (n, T_in + T_out, ...)
        if len(pending) >= buffer_spans:
            yield from emit(np.concatenate(pending))
            pending = []
    if pending:
        yield from emit(np.concatenate(pending))


def consume_shards(config: dict) -> dict[str, list[tuple[int, float, float]]]:
    """Train loop of the 1-worker run: iterate each shard, nothing else.

    Returns {name: [(windows, seconds, seconds to the first batch) per epoch]}."""
    import ray.train
    import torch

    out = {}
    for name in config["names"]:
        shard = ray.train.get_dataset_shard(name)
        epochs = []
        for epoch in range(config["epochs"]):
            t0, n, first = time.perf_counter(), 0, None
            shuffled = "shuffled" in name
            if name.startswith("spans_"):
                spec = config["spans"][name]
                batches = iter_span_batches(shard, config["batch"], np.asarray(spec["steps"]),
                                            spec["in_frames"], shuffled, epoch)
            else:
                batches = shard.iter_torch_batches(
                    batch_size=config["batch"], dtypes=torch.float32, prefetch_batches=2,
                    local_shuffle_buffer_size=config["buffer"] if shuffled else None,
                    local_shuffle_seed=epoch)
            for batch in batches:
                first = time.perf_counter() - t0 if first is None else first
                n += len(batch["x"])
            epochs.append((n, time.perf_counter() - t0, first))
        out[name] = epochs
    ray.train.report({"done": 1})
    return out


def bench_ray(stores: list[tuple[Shape, Path]], batch: int, epochs: int,
              windows_per_read: int) -> dict[tuple[str, bool], tuple[float, float]]:
    """{(store, shuffle, design): (windows/s of the first epoch, of the best)}: one 1-worker
    TorchTrainer iterates every dataset in turn (one worker start-up for all)."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from simvp_ray.data.ray_data import build_ray_datasets

    datasets, keys, spans = {}, {}, {}
    for shape, path in stores:
        model = ModelConfig(in_frames=shape.in_frames, out_frames=shape.out_frames,
                            channels=shape.channels, height=shape.height, width=shape.width)
        for shuffle in (False, True):
            data = DataConfig(url=str(path), shuffle=shuffle, batch_size=batch,
                              windows_per_read=windows_per_read)
            name = f"{path.stem}_{'shuffled' if shuffle else 'ordered'}"
            datasets[name] = build_ray_datasets(data, model)["train"]
            keys[name] = (shape.name, shuffle, "windows")
            datasets[f"spans_{name}"] = span_dataset(path, shape, data, model)
            keys[f"spans_{name}"] = (shape.name, shuffle, "spans")
            spans[f"spans_{name}"] = {"in_frames": shape.in_frames, "steps": window_offsets(
                shape.in_frames, shape.out_frames).tolist()}
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as storage:
        result = TorchTrainer(
            consume_shards,
            train_loop_config={"batch": batch, "epochs": epochs, "names": list(datasets),
                               "buffer": DataConfig.shuffle_buffer, "spans": spans},
            scaling_config=ray.train.ScalingConfig(num_workers=1,
                                                   resources_per_worker={"CPU": 1}),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(
                datasets_to_split=list(datasets),
                execution_options=ExecutionOptions(preserve_order=True)),
            run_config=ray.train.RunConfig(name="bench", storage_path=storage),
        ).fit()
    rates = {}
    for name, per_epoch in result.return_value.items():
        for n, seconds, first in per_epoch:
            print(f"# {name}: {n} windows in {seconds:.2f} s (first batch after {first:.2f} s)",
                  file=sys.stderr)
        rates[keys[name]] = (rate(*per_epoch[0][:2]), max(rate(n, s) for n, s, _ in per_epoch))
    return rates


def model_rate(batch: int, steps: int) -> float:
    """Training windows/s of the TaxiBJ gSTA preset (fwd + bwd + Adam step) on this CPU."""
    import torch

    from simvp_ray.models import build_model
    from simvp_ray.presets import get_preset

    config = get_preset("taxibj_gsta").model
    model = build_model(config).train()
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(batch, config.in_frames, config.channels, config.height, config.width)
    y = torch.randn(batch, config.out_frames, config.channels, config.height, config.width)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small stores, 2 Ray epochs")
    parser.add_argument("--taxibj-frames", type=int, default=22_000)
    parser.add_argument("--weather-frames", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="Ray epochs (the best is reported)")
    parser.add_argument("--windows-per-read", type=int, default=DataConfig.windows_per_read)
    parser.add_argument("--model-steps", type=int, default=3, help="0 skips the model rate")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a tmp dir)")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.taxibj_frames, args.weather_frames = 4_000, 6_000
        args.epochs, args.model_steps = 2, min(args.model_steps, 2)
    shapes = [Shape("TaxiBJ", args.taxibj_frames, 2, 32, 32, 4, 4),
              Shape("WeatherBench t2m", args.weather_frames, 1, 32, 64, 12, 12)]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
    if not args.skip_ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # logical CPUs above the cores leave Ray Data's read tasks room next to the worker
        ray.init(num_cpus=4, dashboard_host="127.0.0.1", log_to_driver=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False

    stores = []
    for shape in shapes:
        path = workdir / f"{shape.name.split()[0].lower()}.zarr"
        t0 = time.perf_counter()
        write_store(path, shape)
        print(f"# {shape.name}: {shape.n_frames} frames of {shape.channels}x{shape.height}x"
              f"{shape.width} written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        stores.append((shape, path))
    ray_rates = {} if args.skip_ray else bench_ray(stores, args.batch, args.epochs,
                                                   args.windows_per_read)

    rows, ratio_lines = [], []
    for shape, path in stores:
        dataset = open_dataset(str(path))
        steps = window_offsets(shape.in_frames, shape.out_frames)
        starts = window_starts(dataset, "train", shape.in_frames, shape.out_frames)
        total = split_bytes(path, shape)
        data = DataConfig(url=str(path), windows_per_read=args.windows_per_read)
        model = ModelConfig(in_frames=shape.in_frames, out_frames=shape.out_frames,
                            channels=shape.channels, height=shape.height, width=shape.width)
        ray_bytes = ray_read_bytes(path, data, model)
        for shuffle in (False, True):
            mode = "shuffled" if shuffle else "in order"
            ceiling = bench_numpy_memory(dataset, starts, steps, shape.in_frames, args.batch,
                                         shuffle)
            plain, plain_bytes = bench_numpy_store(path, shape, args.batch, shuffle)
            label = f"{shape.name} ({len(starts)} windows of {shape.in_frames}+"
            label += f"{shape.out_frames}), {mode}"
            rows.append((label, "(1) numpy, in memory", ceiling, 1.0, ceiling / plain, None))
            rows.append((label, "(2) iter_numpy_batches", plain, plain / ceiling, 1.0,
                         plain_bytes / total))
            ratio_lines.append(f"{shape.name} {mode}: (2)/(1) = {plain / ceiling:.3f}")
            ratio_lines.append(f"{shape.name} {mode}: bytes (2) = {plain_bytes / total:.3f}")
            for design, tag, title in (("windows", "(3)", "Ray Data, 1 Train worker"),
                                       ("spans", "(3s)", "Ray Data spans, cut in worker")):
                if (shape.name, shuffle, design) not in ray_rates:
                    continue
                first, best = ray_rates[shape.name, shuffle, design]
                rows.append((label, f"{tag} {title}", best, best / ceiling, best / plain,
                             ray_bytes / total))
                ratio_lines.append(f"{shape.name} {mode}: {tag}/(1) = {best / ceiling:.3f}")
                ratio_lines.append(f"{shape.name} {mode}: {tag}/(2) = {best / plain:.3f}")
                ratio_lines.append(f"{shape.name} {mode}: bytes {tag} = {ray_bytes / total:.3f}")
                ratio_lines.append(f"{shape.name} {mode}: {tag} first epoch = {first:,.0f} "
                                   "windows/s")

    print(f"\nbatch {args.batch}, windows_per_read {args.windows_per_read}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}\n")
    print("| store, order | path | windows/s | vs (1) | vs (2) | bytes read / split size |")
    print("|---|---|---:|---:|---:|---:|")
    for label, path_name, value, vs1, vs2, ratio in rows:
        read = "-" if ratio is None else f"{ratio:.3f}"
        print(f"| {label} | {path_name} | {value:,.0f} | {vs1:.3f} | {vs2:.2f} | {read} |")
    print()
    for line in ratio_lines:
        print(line)
    if args.model_steps:
        consume = model_rate(args.batch, args.model_steps)
        print(f"TaxiBJ gSTA training consumes {consume:.1f} windows/s on this CPU")
        ray_rates = [r[2] for r in rows if r[0].startswith("TaxiBJ") and r[1].startswith("(3) ")]
        if ray_rates:
            print(f"TaxiBJ: (3) / training consumption = {min(ray_rates) / consume:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
