"""Windows/s and shuffle quality of the data paths on TaxiBJ- and WeatherBench-shaped stores.

    python benchmarks/data_pipeline.py             # TaxiBJ 22,000 x 2x32x32, WB 50,000 x 1x32x64
    python benchmarks/data_pipeline.py --quick     # small stores

Training split, shuffled, batch 16, one run, side by side: (1) numpy fancy-indexing of the
normalised array in memory in a shuffled order (the ceiling); (2) `iter_numpy_batches` from
Zarr; a torch DataLoader over a map-style in-memory dataset with default collation
(OpenSTL's feed), num_workers 0 and 2; in one Ray Train worker whose consumer does nothing:
the streaming path before issue 13 (Train's dataset shard, 256-window local shuffle buffer),
the streaming `WindowFeed` and the resident `WindowFeed`. For each path the shuffle line
(batch_spread, epoch_corr as issue 13 defines them); the USS of 2 resident workers vs 1; the
bytes read for validation per epoch with 2 workers (replayed through a counting store).
"""

from __future__ import annotations

import argparse
import json
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


def shuffle_quality(epochs: list[list[np.ndarray]], split_t0: np.ndarray) -> tuple[float, float]:
    """(batch_spread, epoch_corr) of per-epoch lists of batch t0s (issue 13's definitions):
    the mean sample std (ddof=1) of t0 within a batch / the std of t0 over the split, and the
    Spearman correlation of the windows' positions in epochs 1 and 2."""
    spread = np.mean([np.std(b, ddof=1) for b in epochs[0] if len(b) > 1]) / np.std(split_t0)
    first, second = (np.concatenate(epoch) for epoch in epochs[:2])
    common = np.intersect1d(first, second)
    rank_a = np.searchsorted(np.sort(common), first[np.isin(first, common)])
    rank_b = np.searchsorted(np.sort(common), second[np.isin(second, common)])
    position_a, position_b = np.empty(len(common)), np.empty(len(common))
    position_a[rank_a] = np.arange(len(rank_a))
    position_b[rank_b] = np.arange(len(rank_b))
    return float(spread), float(np.corrcoef(position_a, position_b)[0, 1])


def consume_feeds(config: dict) -> dict[str, dict]:
    """Train loop of the 1-worker run: each path's batches for a few epochs into a consumer
    that does nothing but count them (and keep their t0s for the shuffle measures).

    Returns {path: {"epochs": [(windows, seconds, seconds to the first batch)], "t0": [[batch
    t0s] per epoch for the first two]}}."""
    import psutil
    import ray.train
    import torch

    from simvp_ray.data.ray_data import WindowFeed

    out = {}
    for name, spec in config["paths"].items():
        if spec["kind"] == "numpy":  # (1) in this worker: fancy indexing, shuffled order
            store = open_dataset(spec["url"])
            frames = normalize(store.frames[:], store.stats)  # (T, C, H, W)
            steps, starts = np.asarray(spec["steps"]), np.asarray(spec["starts"])

            def batches(epoch, frames=frames, steps=steps, starts=starts,
                        t_in=spec["in_frames"]):
                order = np.random.default_rng(epoch).permutation(starts)
                for i in range(0, len(order) - config["batch"] + 1, config["batch"]):
                    at = order[i : i + config["batch"]]
                    windows = frames[at[:, None] + steps[None, :]]
                    yield {"x": windows[:, :t_in], "y": windows[:, t_in:],
                           "t0": at + steps[t_in]}
        elif spec["kind"] == "windows":  # the old training stream: Train's shard + 256 buffer
            shard = ray.train.get_dataset_shard(name)

            def batches(epoch, shard=shard):
                return shard.iter_torch_batches(
                    batch_size=config["batch"], dtypes={"x": torch.float32, "y": torch.float32,
                                                        "t0": torch.int64},
                    prefetch_batches=2, local_shuffle_buffer_size=256, local_shuffle_seed=epoch,
                    drop_last=True)
        else:
            feed = WindowFeed(spec["plan"], "train", spec["data"], spec["model"], 0, 1, seed=0)

            def batches(epoch, feed=feed):
                for batch in feed.train_batches(epoch, config["batch"], shuffle=True):
                    # as the loop receives them: torch tensors over the same memory
                    yield {"x": torch.from_numpy(batch["x"]), "y": torch.from_numpy(batch["y"]),
                           "t0": batch["t0"]}
        epochs, t0s = [], []
        for epoch in range(config["epochs"]):
            t0, n, first, seen = time.perf_counter(), 0, None, []
            for batch in batches(epoch):
                first = time.perf_counter() - t0 if first is None else first
                n += len(batch["x"])
                seen.append(np.asarray(batch["t0"]))
            epochs.append((n, time.perf_counter() - t0, first))
            if epoch < 2:
                t0s.append(seen)
        out[name] = {"epochs": epochs, "t0": t0s}
    out["uss"] = psutil.Process().memory_full_info().uss
    ray.train.report({"done": 1})
    return out


def resident_uss(config: dict) -> None:
    """Train loop of the memory runs: this worker's unique memory (USS) before mapping the
    resident split and after one epoch of its batches (every frame touched), into a file."""
    import psutil
    import ray.train

    from simvp_ray.data.ray_data import WindowFeed

    context = ray.train.get_context()
    before = psutil.Process().memory_full_info().uss
    feed = WindowFeed(config["plan"], "train", config["data"], config["model"],
                      context.get_world_rank(), context.get_world_size(), seed=0)
    for _ in feed.train_batches(0, config["batch"], shuffle=True):
        pass
    after = psutil.Process().memory_full_info().uss
    name = f"{config['out']}/uss_{context.get_world_size()}_{context.get_world_rank()}.json"
    Path(name).write_text(json.dumps({"before": before, "after": after}))
    ray.train.report({"done": 1})


def bench_ray(stores: list[tuple[Shape, Path]], batch: int, epochs: int,
              windows_per_read: int) -> dict[str, dict]:
    """{f"{store} {path}": consume_feeds' record}: one 1-worker TorchTrainer iterates every
    path in turn (one worker start-up for all); then the 2- vs 1-worker USS of resident."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from simvp_ray.data.ray_data import build_ray_datasets, plan_data

    datasets, paths, memory = {}, {}, None
    for shape, path in stores:
        model = model_config(shape)
        data = DataConfig(url=str(path), batch_size=batch, windows_per_read=windows_per_read)
        key = shape.name.split()[0]
        datasets[f"{key}_old"] = build_ray_datasets(data, model)["train"]
        paths[f"{key}_old"] = {"kind": "windows"}
        starts = window_starts(open_dataset(str(path)), "train", shape.in_frames,
                               shape.out_frames)
        paths[f"{key}_numpy"] = {"kind": "numpy", "url": str(path), "starts": starts.tolist(),
                                 "steps": window_offsets(shape.in_frames,
                                                         shape.out_frames).tolist(),
                                 "in_frames": shape.in_frames}
        for mode in ("streaming", "resident"):
            mode_data = DataConfig(**{**data.__dict__, "mode": mode})
            plan = plan_data(mode_data, model, splits=("train",))
            paths[f"{key}_{mode}"] = {"kind": mode, "plan": plan, "data": mode_data,
                                      "model": model}
            if mode == "resident" and memory is None:
                memory = (plan, mode_data, model, path)
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as storage:
        result = TorchTrainer(
            consume_feeds,
            train_loop_config={"batch": batch, "epochs": epochs, "paths": paths},
            scaling_config=ray.train.ScalingConfig(num_workers=1,
                                                   resources_per_worker={"CPU": 1}),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(
                datasets_to_split=list(datasets),
                execution_options=ExecutionOptions(preserve_order=True)),
            run_config=ray.train.RunConfig(name="bench", storage_path=storage),
        ).fit()
        records = result.return_value
        plan, data, model, path = memory
        for workers in (1, 2):
            TorchTrainer(
                resident_uss, train_loop_config={"plan": plan, "data": data, "model": model,
                                                 "batch": batch, "out": storage},
                scaling_config=ray.train.ScalingConfig(num_workers=workers,
                                                       resources_per_worker={"CPU": 1}),
                run_config=ray.train.RunConfig(name=f"uss{workers}", storage_path=storage),
            ).fit()
        records["uss"] = {f"{w}_{r}": json.loads(Path(f"{storage}/uss_{w}_{r}.json").read_text())
                          for w, r in ((1, 0), (2, 0), (2, 1))}
        records["uss"]["path"] = str(path)
    return records


def model_config(shape: Shape) -> ModelConfig:
    return ModelConfig(in_frames=shape.in_frames, out_frames=shape.out_frames,
                       channels=shape.channels, height=shape.height, width=shape.width)


def bench_dataloader(dataset, starts, steps, in_frames, batch, num_workers,
                     epochs: int = 2) -> tuple[float, list[list[np.ndarray]]]:
    """OpenSTL's feed: a map-style dataset over the frames in memory returning per-window
    tensors, default collation, shuffled. (windows/s of the best epoch, t0s per epoch)."""
    import torch
    from torch.utils.data import DataLoader

    frames = normalize(dataset.frames[:], dataset.stats)

    class Windows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(starts)

        def __getitem__(self, index: int):
            at = starts[index] + steps
            return {"x": torch.from_numpy(frames[at[:in_frames]]),
                    "y": torch.from_numpy(frames[at[in_frames:]]),
                    "t0": int(starts[index] + steps[in_frames])}

    loader = DataLoader(Windows(), batch_size=batch, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0),
                        persistent_workers=num_workers > 0)
    best, t0s = 0.0, []
    for _ in range(epochs):
        start, n, seen = time.perf_counter(), 0, []
        for item in loader:
            n += len(item["x"])
            seen.append(item["t0"].numpy())
        best = max(best, rate(n, time.perf_counter() - start))
        t0s.append(seen)
    return best, t0s


def numpy_memory_t0s(starts, steps, in_frames, batch, epochs: int = 2) -> list[list[np.ndarray]]:
    t0 = starts + steps[in_frames]
    return [[order[i : i + batch] for i in range(0, len(order), batch)]
            for order in (np.random.default_rng(e).permutation(t0) for e in range(epochs))]


def numpy_store_t0s(path, shape, batch, epochs: int = 2) -> list[list[np.ndarray]]:
    return [[b["t0"] for b in iter_numpy_batches(str(path), "train", shape.in_frames,
                                                 shape.out_frames, batch, shuffle=True,
                                                 seed=0, epoch=e)] for e in range(epochs)]


def val_read_bytes(path, shape: Shape, data: DataConfig, world: int) -> dict[str, float]:
    """Bytes read for validation per epoch with `world` workers / stored bytes of the split, by
    replaying each path's reads through a counting store."""
    from simvp_ray.data.batches import read_frames, span_ranges
    from simvp_ray.data.ray_data import READ_CHUNKS, ZarrWindowDatasource, read_groups

    model = model_config(shape)
    counting = CountingStore(LocalStore(str(path), read_only=True))
    dataset = open_dataset(counting)
    a, b = dataset.split_range("val")
    dataset.frames[a:b]
    total, counting.frame_bytes = counting.frame_bytes, 0
    # before: every worker read every read task of the split
    for group in ZarrWindowDatasource(str(path), "val", data, model).groups:
        read_windows(dataset, group, model.in_frames, model.out_frames)
    old = world * counting.frame_bytes / total
    counting.frame_bytes = 0
    starts = window_starts(dataset, "val", model.in_frames, model.out_frames)
    runs = read_groups(starts, dataset.chunk_frames, data.windows_per_read, READ_CHUNKS)
    extent = shape.in_frames + shape.out_frames
    for rank in range(world):  # WindowFeed.eval_batches, streaming: rank r reads runs r::W
        for run in runs[rank::world]:
            for lo, hi, _ in span_ranges(run, extent, dataset.chunk_frames):
                read_frames(dataset, lo, hi)
    return {"before (every worker reads the split)": old,
            "streaming": counting.frame_bytes / total,
            "resident (read once per run, then 0 per epoch)": 0.0}


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
    args = parser.parse_args(argv)
    if args.quick:
        args.taxibj_frames, args.weather_frames = 4_000, 6_000
        args.epochs, args.model_steps = 2, min(args.model_steps, 2)
    shapes = [Shape("TaxiBJ", args.taxibj_frames, 2, 32, 32, 4, 4),
              Shape("WeatherBench t2m", args.weather_frames, 1, 32, 64, 12, 12)]

    import ray

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_data_"))
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
    records = bench_ray(stores, args.batch, args.epochs, args.windows_per_read)
    for name, record in records.items():
        for n, seconds, first in record.get("epochs", []) if isinstance(record, dict) else []:
            print(f"# {name}: {n} windows in {seconds:.2f} s (first batch after {first:.2f} s)",
                  file=sys.stderr)

    rows, shuffle_lines, ratio_lines, other_lines = [], [], [], []
    for shape, path in stores:
        key = shape.name.split()[0]
        dataset = open_dataset(str(path))
        steps = window_offsets(shape.in_frames, shape.out_frames)
        starts = window_starts(dataset, "train", shape.in_frames, shape.out_frames)
        split_t0 = starts + steps[shape.in_frames]
        label = f"{shape.name} ({len(starts)} windows of {shape.in_frames}+{shape.out_frames})"
        ceiling = bench_numpy_memory(dataset, starts, steps, shape.in_frames, args.batch, True)
        plain, _ = bench_numpy_store(path, shape, args.batch, True)
        loaders = {workers: bench_dataloader(dataset, starts, steps, shape.in_frames, args.batch,
                                             workers) for workers in (0, 2)}
        rates = {"numpy-memory": (ceiling, numpy_memory_t0s(starts, steps, shape.in_frames,
                                                            args.batch)),
                 "iter_numpy_batches": (plain, numpy_store_t0s(path, shape, args.batch)),
                 "dataloader-w0": loaders[0], "dataloader-w2": loaders[2]}
        for mode, title in (("numpy", "numpy-memory-in-worker"),
                            ("old", "ray-streaming-before"), ("streaming", "ray-streaming"),
                            ("resident", "ray-resident")):
            record = records[f"{key}_{mode}"]
            best = max(rate(n, seconds) for n, seconds, _ in record["epochs"])
            rates[title] = (best, record["t0"])
        # the ceiling measured in the same worker, just before the resident feed
        ceiling = rates["numpy-memory-in-worker"][0]
        loader0, loader2 = rates["dataloader-w0"][0], rates["dataloader-w2"][0]
        for title, (value, t0s) in rates.items():
            rows.append((label, title, value, value / ceiling, value / loader0, value / loader2))
            spread, corr = shuffle_quality(t0s, split_t0)
            shuffle_lines.append(f"shuffle {key}/{title}: batch_spread={spread:.3f} "
                                 f"epoch_corr={corr:.3f}")
        resident = rates["ray-resident"][0]
        ratio_lines.append(f"{key}: resident / (1) in the same worker = {resident / ceiling:.3f}"
                           " (goal >= 0.5)")
        ratio_lines.append(f"{key}: resident / DataLoader(0) = {resident / loader0:.2f}, "
                           f"/ DataLoader(2) = {resident / loader2:.2f} (goal >= 2)")
        data = DataConfig(url=str(path), windows_per_read=args.windows_per_read)
        for name, value in val_read_bytes(path, shape, data, world=2).items():
            other_lines.append(f"{key}: validation bytes read per epoch, 2 workers, {name}: "
                               f"{value:.3f} x the split")
    uss = records["uss"]
    dataset = open_dataset(uss["path"])
    a, b = dataset.split_range("train")
    split = (b - a) * 4 * int(np.prod(dataset.frames.shape[1:]))
    # what the resident data adds to each worker's unique memory (after one epoch - before)
    added = {key: value["after"] - value["before"] for key, value in uss.items()
             if key != "path"}
    extra = added["2_0"] + added["2_1"] - added["1_0"]
    mib = 2**20
    other_lines.append(
        f"memory: resident TaxiBJ train split {split / mib:.0f} MiB; USS added by the data: "
        f"1 worker {added['1_0'] / mib:.1f} MiB, 2 workers {added['2_0'] / mib:.1f} + "
        f"{added['2_1'] / mib:.1f} MiB; 2 workers together exceed 1 by {extra / mib:.1f} MiB "
        f"= {extra / split:.3f} x the split (goal <= 0.2); whole-worker USS 1 worker "
        f"{uss['1_0']['after'] / mib:.0f} MiB, 2 workers {uss['2_0']['after'] / mib:.0f} + "
        f"{uss['2_1']['after'] / mib:.0f} MiB")

    print(f"\nbatch {args.batch}, windows_per_read {args.windows_per_read}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}\n")
    print("| store | path | windows/s | vs (1) in worker | vs DataLoader(0) | vs DataLoader(2) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, path_name, value, vs1, vs_l0, vs_l2 in rows:
        print(f"| {label} | {path_name} | {value:,.0f} | {vs1:.3f} | {vs_l0:.2f} | {vs_l2:.2f} |")
    print()
    for line in shuffle_lines + ratio_lines + other_lines:
        print(line)
    if args.model_steps:
        consume = model_rate(args.batch, args.model_steps)
        print(f"TaxiBJ gSTA training consumes {consume:.1f} windows/s on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
