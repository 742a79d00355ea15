"""Ray Datasets of (input, target) windows read from a Zarr store: the one Ray Data module.

Each read task owns the valid window starts of a run of at least READ_CHUNKS whole Zarr chunks;
it reads its time span once (plus the halo of the last window, T_in + T_out - 1 frames times the
frame step: one more chunk), normalises it once and cuts its windows in memory, emitting blocks
of about `windows_per_read` windows. A frame is thus read at most 1 + 1 / READ_CHUNKS times per
epoch instead of T_in + T_out times. `ray.data.read_zarr` cannot do this (zarr 3 unsupported,
row- not window-based).

Shuffling (training): the read tasks run in an order drawn once from the seed, and each epoch's
batches come from a local shuffle buffer seeded with seed + epoch. The task order is shuffled
inside the datasource because `Dataset.randomize_block_order` is an all-to-all barrier in Ray
2.60: it waits until every block of the split is read, i.e. it materialises the whole training
split as windows (8x / 24x the frames for TaxiBJ / WeatherBench t2m) before the first batch.
Scattering single-window reads instead (a global `random_shuffle` of window ids) is 7x slower
from local disk and 25x slower from S3 (spec/ray.md 3.4: 780 vs 5,800 windows/s local, 110 vs
2,900 on S3). With order-preserving execution the same seed gives the same batches on every
run, which makes a resumed run equal an uninterrupted one. benchmarks/data_pipeline.md has the
throughput of each path.

Validation and test are not shuffled and not split by Ray Train: each worker takes every
world_size-th batch of the same ordered stream (`iter_rank_batches`), so every window is
evaluated exactly once across workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from simvp_ray.config import DataConfig, ModelConfig
from simvp_ray.data.batches import channel_indices, read_spans
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset, open_dataset
from simvp_ray.data.windows import window_offsets, window_starts

SPLITS = ("train", "val", "test")
# chunks a read task spans at least: it reads its span's last chunk again for the halo (the
# next task's first), so a frame is read 1 + 1 / READ_CHUNKS times per epoch at most
READ_CHUNKS = 8


def _window_spec(data: DataConfig, model: ModelConfig) -> dict:
    return {"in_frames": model.in_frames, "out_frames": model.out_frames,
            "frame_step": data.frame_step, "offsets": list(data.frame_offsets) or None}


def read_groups(starts: np.ndarray, chunk_frames: int, windows_per_read: int,
                min_chunks: int = 1) -> list[np.ndarray]:
    """Split sorted starts at chunk boundaries into groups of about `windows_per_read` starts
    that begin in at least `min_chunks` chunks."""
    if len(starts) == 0:
        return []
    groups, current, rows = [], [], 0
    for block in np.split(starts, np.flatnonzero(np.diff(starts // chunk_frames)) + 1):
        current.append(block)
        rows += len(block)
        if rows >= windows_per_read and len(current) >= min_chunks:
            groups.append(np.concatenate(current))
            current, rows = [], 0
    if current:
        groups.append(np.concatenate(current))
    return groups


class ZarrWindowDatasource(Datasource):
    """Every valid window of one split of a store: one read task per run of READ_CHUNKS chunks,
    which reads its span once and emits blocks of about `windows_per_read` windows."""

    def __init__(self, url: str, split: str, data: DataConfig, model: ModelConfig,
                 dataset: Dataset | None = None, shuffle_seed: int | None = None):
        # `dataset` (already opened by the caller) saves a round of metadata reads on S3; it is
        # not kept, so the datasource pickles small and each read task opens the store itself.
        dataset = dataset or open_dataset(url)
        self.url = url
        self.split = split
        self.window = _window_spec(data, model)
        self.channels = list(data.channels) or None
        starts = window_starts(dataset, split, model.in_frames, model.out_frames,
                               data.frame_step, data.window_stride, self.window["offsets"])
        self.groups = read_groups(starts, dataset.chunk_frames, data.windows_per_read,
                                  READ_CHUNKS)
        if shuffle_seed is not None:
            # the block-order shuffle, streamed: tasks run (and, order-preserving, arrive) in a
            # seeded order; Dataset.randomize_block_order would wait for every block first
            order = np.random.default_rng(shuffle_seed).permutation(len(self.groups))
            self.groups = [self.groups[i] for i in order]
        self.windows_per_block = data.windows_per_read
        num_channels = len(self.channels) if self.channels else dataset.frames.shape[1]
        frames = model.in_frames + model.out_frames
        self.window_bytes = 4 * frames * num_channels * int(np.prod(dataset.frames.shape[2:]))

    @property
    def num_windows(self) -> int:
        return sum(len(group) for group in self.groups)

    def estimate_inmemory_data_size(self) -> int:
        return self.num_windows * self.window_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        tasks = []
        for group in self.groups:
            tasks.append(ReadTask(
                self._reader(group),
                BlockMetadata(num_rows=len(group), size_bytes=len(group) * self.window_bytes,
                              exec_stats=None, input_files=None),
                per_task_row_limit=per_task_row_limit))
        return tasks

    def _reader(self, starts: np.ndarray):
        url, window, channels = self.url, self.window, self.channels
        per_block = self.windows_per_block
        in_frames = self.window["in_frames"]

        def read() -> Iterator:
            dataset = _open_cached(url)
            steps = window_offsets(window["in_frames"], window["out_frames"],
                                   window["frame_step"], window["offsets"])
            picked = channel_indices(dataset, channels)
            # (first step, normalised frames, member indices) per contiguous span, read once
            spans = read_spans(dataset, starts, int(steps[-1]) + 1, picked)
            for lo in range(0, len(starts), per_block):
                hi = min(lo + per_block, len(starts))
                # x and y are cut apart, each straight into a contiguous array, which Arrow's
                # tensor column takes without another copy (2.5x faster than slicing windows)
                block = {"x": [], "y": []}
                for a, frames, members in spans:
                    at = (starts[members[(members >= lo) & (members < hi)]] - a)[:, None]
                    block["x"].append(frames[at + steps[None, :in_frames]])  # (n, T_in, C, H, W)
                    block["y"].append(frames[at + steps[None, in_frames:]])  # (n, T_out, ...)
                yield BlockAccessor.batch_to_block(
                    {key: parts[0] if len(parts) == 1 else np.concatenate(parts)
                     for key, parts in block.items()})

        return read


_OPEN: dict[str, Dataset] = {}


def _open_cached(url: str) -> Dataset:
    # Ray reuses worker processes: open each store once per process, not once per read task.
    if url not in _OPEN:
        _OPEN[url] = open_dataset(url)
    return _OPEN[url]


def build_ray_datasets(data_config: DataConfig, model_config: ModelConfig,
                       seed: int = 0) -> dict[str, ray.data.Dataset]:
    """{"train", "val", "test"} Ray Datasets of rows {"x": (T_in, C, H, W), "y": (T_out, ...)}.

    Normalised with the store's training statistics (`simvp_ray.data.denormalize` with the
    store's `stats` gives physical units back). The model config is an argument because the
    window length (T_in + T_out) is the model's, not the data's, and is configured once; the
    training set's block order is randomised from `seed`. Splits the store lacks are left out.
    Raises ValueError (DatasetError) before anything runs on the cluster for a bad window,
    frame offsets, unknown channels, or a split of the store that holds no valid window.
    """
    window = _window_spec(data_config, model_config)
    steps = window_offsets(model_config.in_frames, model_config.out_frames,
                           data_config.frame_step, window["offsets"])
    dataset = open_dataset(data_config.url)
    channel_indices(dataset, list(data_config.channels) or None)
    datasets = {}
    for split in SPLITS:
        if split not in dataset.splits:
            continue
        shuffled = split == "train" and data_config.shuffle
        source = ZarrWindowDatasource(data_config.url, split, data_config, model_config,
                                      dataset, shuffle_seed=seed if shuffled else None)
        if source.num_windows == 0:
            a, b = dataset.split_range(split)
            raise DatasetError(
                f"{dataset.url}: split {split!r} (steps [{a}, {b}), "
                f"{int(dataset.valid[a:b].sum())} valid) has no valid window of {len(steps)} "
                f"frames spanning {int(steps[-1]) + 1} steps (model.in_frames="
                f"{model_config.in_frames}, model.out_frames={model_config.out_frames}, "
                f"data.frame_step={data_config.frame_step}, data.window_stride="
                f"{data_config.window_stride})")
        datasets[split] = ray.data.read_datasource(source,
                                                   override_num_blocks=len(source.groups))
    return datasets


def count_split_windows(data_config: DataConfig, model_config: ModelConfig,
                        split: str) -> int:
    dataset = open_dataset(data_config.url)
    window = _window_spec(data_config, model_config)
    return len(window_starts(dataset, split, model_config.in_frames, model_config.out_frames,
                             data_config.frame_step, data_config.window_stride,
                             window["offsets"]))


def iter_rank_batches(batches: Iterator, rank: int, world_size: int) -> Iterator:
    """This worker's share of an ordered, unsplit stream: batches rank, rank + W, ..."""
    for index, batch in enumerate(batches):
        if index % world_size == rank:
            yield batch
