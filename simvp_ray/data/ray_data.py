"""Ray Data over the Zarr stores: the one Ray Data module.

Training data comes in one of two modes, decided on the driver (`plan_data`, `data.mode`):
- resident: read tasks read and normalise each split once per run (`ZarrFrameDatasource`,
  chunk-aligned ranges, local or S3) into one object-store array per split (`load_resident`);
  every worker maps it without copying and takes, each epoch, its share of one global
  permutation of all windows drawn from (seed, epoch) (`WindowFeed`, `shard_positions`).
- streaming: each epoch each worker builds its own Ray Dataset of frames over its equal share
  of runs of at least READ_CHUNKS chunks, in an order drawn from (seed, epoch) (`stream_share`),
  and shuffles windows across `data.shuffle_buffer_bytes` of frames. A frame is read at most
  1 + 1 / READ_CHUNKS times per epoch (each run reads its last window's tail from the next
  chunk). Frames, not windows, cross the object store: a window is T_in + T_out frames.
Windows are cut by `SpanWindows` (the data layer's one cutter) in a background thread.
Validation: rank r scores windows (resident) or runs (streaming) r, r + W, ...: every window
once, and read once per epoch in total. Shuffling by scattering single-window reads instead is
7x slower from local disk and 25x from S3 (spec/ray.md 3.4); `Dataset.randomize_block_order`
is an all-to-all barrier in Ray 2.60 (it materialises the split before the first batch).

`build_ray_datasets` gives Ray Datasets of windows ({"x", "y", "t0"} rows) for evaluation and
prediction: one read task per run of READ_CHUNKS chunks, its span read once, its windows cut in
memory (`ray.data.read_zarr` cannot: zarr 3 unsupported, row- not window-based).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray.data
from ray.data.block import BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from simvp_ray.config import DataConfig, ModelConfig
from simvp_ray.data.batches import (
    Batch,
    SpanWindows,
    channel_indices,
    iter_buffer_batches,
    prefetched,
    read_frames,
    shard_positions,
    span_ranges,
)
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
            # the span under the task's windows, read and normalised once
            windows = SpanWindows.read(dataset, starts, steps, in_frames,
                                       channel_indices(dataset, channels))
            for lo in range(0, len(starts), per_block):
                yield BlockAccessor.batch_to_block(windows.cut(slice(lo, lo + per_block)))

        return read


_OPEN: dict[str, Dataset] = {}


def _open_cached(url: str) -> Dataset:
    # Ray reuses worker processes: open each store once per process, not once per read task.
    if url not in _OPEN:
        _OPEN[url] = open_dataset(url)
    return _OPEN[url]


def check_windows(data_config: DataConfig, model_config: ModelConfig) -> dict[str, int]:
    """{split: number of valid windows} of the store's splits. Raises ValueError
    (DatasetError) before anything runs on the cluster for a bad window, frame offsets, unknown
    channels, or a split of the store that holds no valid window."""
    window = _window_spec(data_config, model_config)
    steps = window_offsets(model_config.in_frames, model_config.out_frames,
                           data_config.frame_step, window["offsets"])
    dataset = open_dataset(data_config.url)
    channel_indices(dataset, list(data_config.channels) or None)
    counts = {}
    for split in SPLITS:
        if split not in dataset.splits:
            continue
        counts[split] = len(window_starts(dataset, split, model_config.in_frames,
                                          model_config.out_frames, data_config.frame_step,
                                          data_config.window_stride, window["offsets"]))
        if counts[split] == 0:
            a, b = dataset.split_range(split)
            raise DatasetError(
                f"{dataset.url}: split {split!r} (steps [{a}, {b}), "
                f"{int(dataset.valid[a:b].sum())} valid) has no valid window of {len(steps)} "
                f"frames spanning {int(steps[-1]) + 1} steps (model.in_frames="
                f"{model_config.in_frames}, model.out_frames={model_config.out_frames}, "
                f"data.frame_step={data_config.frame_step}, data.window_stride="
                f"{data_config.window_stride})")
    return counts


def build_ray_datasets(data_config: DataConfig, model_config: ModelConfig,
                       seed: int = 0) -> dict[str, ray.data.Dataset]:
    """{"train", "val", "test"} Ray Datasets of rows {"x": (T_in, C, H, W), "y": (T_out, ...),
    "t0": int64}, for evaluation and prediction (training reads through `WindowFeed`).

    Normalised with the store's training statistics (`simvp_ray.data.denormalize` with the
    store's `stats` gives physical units back). The model config is an argument because the
    window length (T_in + T_out) is the model's, not the data's, and is configured once; the
    training set's block order is randomised from `seed`. Splits the store lacks are left out.
    Raises ValueError as `check_windows` does, before anything runs on the cluster.
    """
    dataset = open_dataset(data_config.url)
    datasets = {}
    for split in check_windows(data_config, model_config):
        shuffled = split == "train" and data_config.shuffle
        source = ZarrWindowDatasource(data_config.url, split, data_config, model_config,
                                      dataset, shuffle_seed=seed if shuffled else None)
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


# --- Frames, read once: the resident copy and the streaming worker's spans -------------------

MAX_READ_BYTES = 64 << 20  # frames one read task returns at most (one block, well under 128 MB)
RESIDENT_FRACTION = 0.4  # default budget: loading holds the blocks and the assembled copy
MODES = ("auto", "resident", "streaming")


class ZarrFrameDatasource(Datasource):
    """Normalised frames of given step ranges [a, b): one read task and one block per range,
    rows {"step": int64, "frames": (C, H, W) float32}."""

    def __init__(self, url: str, channels: list[str] | None, ranges: list[tuple[int, int]],
                 frame_bytes: int):
        self.url, self.channels, self.ranges = url, channels, ranges
        self.frame_bytes = frame_bytes

    def estimate_inmemory_data_size(self) -> int:
        return sum(b - a for a, b in self.ranges) * self.frame_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(self._reader(a, b), BlockMetadata(
            num_rows=b - a, size_bytes=(b - a) * self.frame_bytes, exec_stats=None,
            input_files=None), per_task_row_limit=per_task_row_limit) for a, b in self.ranges]

    def _reader(self, a: int, b: int):
        url, channels = self.url, self.channels

        def read() -> Iterator:
            dataset = _open_cached(url)
            frames = read_frames(dataset, a, b, channel_indices(dataset, channels))
            yield BlockAccessor.batch_to_block(
                {"step": np.arange(a, b, dtype=np.int64), "frames": frames})

        return read


def _read_frame_blocks(url: str, channels: list[str] | None, ranges: list[tuple[int, int]],
                       frame_bytes: int) -> ray.data.Dataset:
    return ray.data.read_datasource(ZarrFrameDatasource(url, channels, ranges, frame_bytes),
                                    override_num_blocks=max(1, len(ranges)))


@ray.remote(num_cpus=0, num_returns=2)
def _assemble(first: int, length: int, *blocks) -> tuple[np.ndarray, int]:
    """One contiguous (length, C, H, W) array from the frame blocks of a split, in step order;
    returned into the object store, where every worker of a node maps the same copy."""
    out = None
    for block in blocks:
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        if out is None:
            out = np.empty((length, *batch["frames"].shape[1:]), np.float32)
        out[batch["step"] - first] = batch["frames"]
    return out, length


@dataclass(frozen=True)
class ResidentSplit:
    """One split held in the object store: frames of steps [first, first + n) and its windows."""

    frames: ray.ObjectRef  # (n, C, H, W) float32, normalised; the driver keeps it alive
    first: int
    starts: np.ndarray  # int64 start steps of the split's valid windows, sorted


def chunk_ranges(a: int, b: int, chunk_frames: int, frame_bytes: int,
                 max_bytes: int = MAX_READ_BYTES) -> list[tuple[int, int]]:
    """[a, b) cut at chunk boundaries into reads of at most max_bytes (one chunk at least)."""
    step = max(1, max_bytes // (frame_bytes * chunk_frames)) * chunk_frames
    cuts = [a, *range((a // step + 1) * step, b, step), b]
    return [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]


def _frame_bytes(dataset: Dataset, channels: list[str] | None) -> int:
    num_channels = len(channels) if channels else dataset.frames.shape[1]
    return 4 * num_channels * int(np.prod(dataset.frames.shape[2:]))


def resident_bytes(dataset: Dataset, data: DataConfig, splits: tuple[str, ...]) -> int:
    """Bytes of the normalised float32 frames of the splits: what resident mode holds."""
    frame_bytes = _frame_bytes(dataset, list(data.channels) or None)
    total = 0
    for split in splits:
        if split in dataset.splits:
            a, b = dataset.split_range(split)
            total += (b - a) * frame_bytes
    return total


def object_store_bytes() -> int:
    """The smallest object store of the cluster's nodes: each node holds one resident copy."""
    sizes = [node["Resources"].get("object_store_memory", 0) for node in ray.nodes()
             if node.get("Alive")]
    return int(min(sizes)) if sizes else 0


def choose_data_mode(data: DataConfig, need: int, store: int) -> tuple[str, str]:
    """(mode, why) for data.mode with `need` resident bytes and the smallest object store.
    A forced resident mode that does not fit raises ValueError naming the size and budget."""
    if data.mode not in MODES:
        raise ValueError(f"data.mode={data.mode!r}: valid modes are {', '.join(MODES)}")
    budget = data.resident_max_bytes or int(RESIDENT_FRACTION * store)
    budget_name = (f"data.resident_max_bytes={_gb(budget)}" if data.resident_max_bytes else
                   f"the default budget {_gb(budget)} ({RESIDENT_FRACTION:g} x the smallest "
                   f"node's object store of {_gb(store)})")
    size = f"the train and val splits take {_gb(need)} as normalised float32 frames"
    if data.mode == "streaming":
        return "streaming", "data.mode=streaming"
    if need > budget:
        why = f"{size}, over {budget_name}"
        if data.mode == "resident":
            raise ValueError(f"data.mode=resident: {why}; raise data.resident_max_bytes or use "
                             "data.mode=streaming")
        return "streaming", f"data.mode=auto: {why}"
    if 2 * need > store:
        why = (f"{size}, and loading them holds twice that, but the smallest node's object "
               f"store holds {_gb(store)}")
        if data.mode == "resident":
            raise ValueError(f"data.mode=resident: {why}; start Ray with a larger "
                             "--object-store-memory or use data.mode=streaming")
        return "streaming", f"data.mode=auto: {why}"
    return "resident", f"data.mode={data.mode}: {size}, within {budget_name}"


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.3g} GB"


def load_resident(data: DataConfig, model: ModelConfig,
                  splits: tuple[str, ...] = ("train", "val")) -> dict[str, ResidentSplit]:
    """Reads and normalises each split once, in parallel Ray Data read tasks (local or S3),
    into one object-store array per split. Call on the driver and keep the result: its refs
    keep the arrays alive."""
    dataset = open_dataset(data.url)
    channels = list(data.channels) or None
    frame_bytes = _frame_bytes(dataset, channels)
    window = _window_spec(data, model)
    loaded, checks = {}, []
    for split in splits:
        if split not in dataset.splits:
            continue
        a, b = dataset.split_range(split)
        ranges = chunk_ranges(a, b, dataset.chunk_frames, frame_bytes)
        blocks = _read_frame_blocks(data.url, channels, ranges, frame_bytes).to_arrow_refs()
        frames, length = _assemble.remote(a, b - a, *blocks)
        checks.append(length)
        starts = window_starts(dataset, split, model.in_frames, model.out_frames,
                               data.frame_step, data.window_stride, window["offsets"])
        loaded[split] = ResidentSplit(frames=frames, first=a, starts=starts)
    ray.get(checks)  # read errors surface here, on the driver, before any worker starts
    return loaded


def plan_data(data: DataConfig, model: ModelConfig,
              splits: tuple[str, ...] = ("train", "val")) -> dict:
    """The driver's data decision for a training run, sent to every worker: {"mode", "why",
    "resident": {split: ResidentSplit}} (resident loaded here when chosen)."""
    dataset = open_dataset(data.url)
    mode, why = choose_data_mode(data, resident_bytes(dataset, data, splits),
                                 object_store_bytes())
    resident = load_resident(data, model, splits) if mode == "resident" else {}
    return {"mode": mode, "why": why, "resident": resident}


# --- Worker side: one split's batches, resident or streamed ------------------------------------

def stream_share(runs: list[np.ndarray], rank: int, world_size: int, *, seed: int, epoch: int,
                 shuffle: bool) -> list[np.ndarray]:
    """This rank's pieces of the runs for one epoch: the runs in an order drawn from
    (seed, epoch), their windows laid end to end and cut into world_size equal shares of
    num // world_size windows (a share may take part of a run at either end)."""
    order = (np.random.default_rng([seed, epoch]).permutation(len(runs)) if shuffle
             else np.arange(len(runs)))
    share = sum(len(run) for run in runs) // world_size
    lo, hi = rank * share, (rank + 1) * share
    pieces, at = [], 0
    for index in order:
        run = runs[index]
        a, b = max(at, lo), min(at + len(run), hi)
        if b > a:
            pieces.append(run[a - at : b - at])
        at += len(run)
    return pieces


class WindowFeed:
    """One split's batches for one Train worker.

    Resident: the split's frames are mapped from the object store (zero-copy; one copy per
    node) and every epoch this rank takes its share of one global permutation of all windows,
    drawn from (seed, epoch) (`shard_positions`). Streaming: each epoch the worker reads its
    own share of runs of chunks, in an order drawn from (seed, epoch), through its own Ray
    Dataset of frames, and shuffles windows across `data.shuffle_buffer_bytes` of frames (about
    8 runs from all over the split). Evaluation splits: rank r takes runs (streaming) or
    windows (resident) r, r + W, ...: each window is scored once and read once per epoch in
    total. Batches are cut by `SpanWindows` in a background thread.
    """

    def __init__(self, plan: dict, split: str, data: DataConfig, model: ModelConfig,
                 rank: int, world_size: int, seed: int):
        self.data, self.rank, self.world, self.seed = data, rank, world_size, seed
        self.in_frames = model.in_frames
        window = _window_spec(data, model)
        self.steps = window_offsets(model.in_frames, model.out_frames, data.frame_step,
                                    window["offsets"])
        self.channels = list(data.channels) or None
        self.resident = plan["resident"].get(split) if plan["mode"] == "resident" else None
        if self.resident is not None:
            # ray.get of a numpy array maps the object store's copy: no copy, read-only
            frames = ray.get(self.resident.frames)
            self.windows = SpanWindows([(self.resident.first, frames)], self.resident.starts,
                                       self.steps, self.in_frames)
            self.num_windows = len(self.windows)
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the same seed, the same batches
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        dataset = _open_cached(data.url)
        self.chunk_frames = dataset.chunk_frames
        self.frame_bytes = _frame_bytes(dataset, self.channels)
        starts = window_starts(dataset, split, model.in_frames, model.out_frames,
                               data.frame_step, data.window_stride, window["offsets"])
        self.runs = read_groups(starts, dataset.chunk_frames, data.windows_per_read, READ_CHUNKS)
        self.num_windows = len(starts)

    def train_batches(self, epoch: int, batch_size: int, shuffle: bool) -> Iterator[Batch]:
        """This rank's num_windows // world_size windows of the epoch, in full batches."""
        if self.resident is not None:
            positions = shard_positions(self.num_windows, self.rank, self.world, seed=self.seed,
                                        epoch=epoch, shuffle=shuffle)
            return prefetched(iter_buffer_batches([(self.windows, positions)], batch_size,
                                                  drop_last=True))
        pieces = stream_share(self.runs, self.rank, self.world, seed=self.seed, epoch=epoch,
                              shuffle=shuffle)
        rng = np.random.default_rng([self.seed, epoch, self.rank]) if shuffle else None
        return prefetched(self._stream(pieces, batch_size, rng, drop_last=True))

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """This rank's share of the split in order: together the ranks score each window once."""
        if self.resident is not None:
            positions = np.arange(self.rank, self.num_windows, self.world)
            return prefetched(iter_buffer_batches([(self.windows, positions)], batch_size))
        return prefetched(self._stream(self.runs[self.rank :: self.world], batch_size, None,
                                       drop_last=False))

    def _stream(self, pieces: list[np.ndarray], batch_size: int,
                rng: np.random.Generator | None, drop_last: bool) -> Iterator[Batch]:
        extent = int(self.steps[-1]) + 1
        tasks = [(a, b, piece[members]) for piece in pieces
                 for a, b, members in span_ranges(piece, extent, self.chunk_frames)]
        if not tasks:
            return iter(())
        blocks = _read_frame_blocks(self.data.url, self.channels, [(a, b) for a, b, _ in tasks],
                                    self.frame_bytes).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2)

        def task_frames() -> Iterator[np.ndarray]:
            # order-preserving execution: the blocks of each read task, in task order
            stream = iter(blocks)
            for a, b, _ in tasks:
                parts, rows = [], 0
                while rows < b - a:
                    block = next(stream)
                    parts.append(block["frames"])
                    rows += len(block["frames"])
                assert rows == b - a, (a, b, rows)
                yield parts[0] if len(parts) == 1 else np.concatenate(parts)

        def buffers() -> Iterator[tuple[SpanWindows, np.ndarray | slice]]:
            spans, starts, held = [], [], 0
            for (a, _, task_starts), frames in zip(tasks, task_frames()):
                spans.append((a, frames))
                starts.append(task_starts)
                held += frames.nbytes
                if held >= self.data.shuffle_buffer_bytes:
                    yield self._buffer(spans, starts, rng)
                    spans, starts, held = [], [], 0
            if spans:
                yield self._buffer(spans, starts, rng)

        return iter_buffer_batches(buffers(), batch_size, drop_last)

    def _buffer(self, spans, starts, rng) -> tuple[SpanWindows, np.ndarray | slice]:
        windows = SpanWindows(spans, np.concatenate(starts), self.steps, self.in_frames)
        return windows, (rng.permutation(len(windows)) if rng is not None else slice(None))
