"""Read windows from a store as numpy batches {"x": (N, T_in, C, H, W), "y": (N, T_out, C, H, W),
"t0": (N,)}, t0 being the time step of each window's first target frame.

Windows are grouped into contiguous spans of chunks; each span is read once and the windows are
cut from it in memory, so every chunk a request touches is read exactly once. The Ray-free
iterator shuffles blocks of chunks and then windows inside a buffer of blocks, which keeps the
reads contiguous (spec/ray.md 3.4: scattering single-window reads is 25x slower on S3).
`SpanWindows` is the one place windows are cut from frames, for every path (numpy, Ray Data
streaming, resident).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from simvp_ray.data.normalization import Stats, normalize
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset, StoreSource, open_dataset
from simvp_ray.data.windows import window_offsets, window_starts

Batch = dict[str, np.ndarray]  # {"x": (N, T_in, C, H, W), "y": (N, T_out, ...), "t0": (N,) int64}
BUFFER_BYTES = 256 << 20  # frames the iterator holds at once; windows are cut a batch at a time


def channel_indices(dataset: Dataset, channels: Sequence[str] | None) -> list[int] | None:
    """The readers' `picked`: indices of named channels (`Dataset.select`), or None for every
    channel (read without indexing); a ValueError lists the store's channels."""
    return dataset.select(channels)[0] if channels else None


def span_groups(starts: np.ndarray, extent: int, chunk_frames: int) -> list[np.ndarray]:
    """Split sorted starts into groups whose windows' chunk ranges overlap or touch."""
    if len(starts) == 0:
        return []
    first_chunk = starts // chunk_frames
    last_chunk = (starts + extent - 1) // chunk_frames
    reach = np.maximum.accumulate(last_chunk)
    # a new group starts where a window's first chunk lies past every chunk read so far (+1)
    breaks = np.flatnonzero(first_chunk[1:] > reach[:-1] + 1) + 1
    return np.split(np.arange(len(starts)), breaks)


def _channel_stats(dataset: Dataset, picked: list[int] | None) -> Stats:
    return dataset.stats if picked is None else dataset.stats.select(picked)


def read_frames(dataset: Dataset, a: int, b: int, picked: list[int] | None = None,
                normalized: bool = True) -> np.ndarray:
    """Frames of steps [a, b) as float32 (n, C, H, W), normalised with the training statistics
    (physical units with normalized=False)."""
    span = dataset.read_frames(a, b, picked)  # a chunk that fails to decode is named
    return normalize(span, _channel_stats(dataset, picked)) if normalized else span


def span_ranges(sorted_starts: np.ndarray, extent: int, chunk_frames: int
                ) -> list[tuple[int, int, np.ndarray]]:
    """(first step, end step, member indices into sorted_starts) of the contiguous reads under
    the windows: windows whose chunk ranges overlap or touch share one."""
    return [(int(sorted_starts[group[0]]), int(sorted_starts[group].max()) + extent, group)
            for group in span_groups(sorted_starts, extent, chunk_frames)]


def read_spans(dataset: Dataset, sorted_starts: np.ndarray, extent: int,
               picked: list[int] | None = None, normalized: bool = True
               ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(first step, frames (n, C, H, W), member indices into sorted_starts) per span: windows
    whose chunk ranges overlap or touch share one contiguous read, normalised once per frame."""
    return [(a, read_frames(dataset, a, b, picked, normalized), members)
            for a, b, members in span_ranges(sorted_starts, extent, dataset.chunk_frames)]


def target_offset(steps: np.ndarray, in_frames: int) -> int:
    """Offset of a window's first target frame from its start (one past the inputs when the
    window has no target frames, as in prediction)."""
    return int(steps[in_frames]) if len(steps) > in_frames else int(steps[-1]) + 1


def cut_windows(frames: np.ndarray, local: np.ndarray, steps: np.ndarray,
                in_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The one window cutter: x (n, T_in, C, H, W) and y (n, T_out, C, H, W) of the windows
    starting at frame indices `local` of `frames`. x and y are cut apart, each straight into a
    contiguous array (Arrow and torch take them without another copy)."""
    at = local[:, None]
    return frames[at + steps[None, :in_frames]], frames[at + steps[None, in_frames:]]


class SpanWindows:
    """Windows over frames held in memory: contiguous spans (first step, frames (n, C, H, W))
    and the start steps of the windows, cut a batch at a time by position in `starts`.

    Every path cuts windows here: `read_windows`, `iter_numpy_batches`, the Ray Data read
    tasks, the streaming worker (the spans of its buffer) and resident mode (one span a split).
    """

    def __init__(self, spans: Sequence[tuple[int, np.ndarray]], starts: np.ndarray,
                 steps: np.ndarray, in_frames: int) -> None:
        self.spans = sorted(spans, key=lambda span: span[0])
        self.starts = np.asarray(starts, dtype=np.int64)
        self.steps = steps
        self.in_frames = in_frames
        firsts = np.asarray([first for first, _ in self.spans], dtype=np.int64)
        # a window lies in the last span that begins at or before it (spans of neighbouring
        # reads may share a halo; each window's own span holds it whole)
        self.span_id = np.searchsorted(firsts, self.starts, side="right") - 1
        self.local = self.starts - firsts[self.span_id] if len(firsts) else self.starts
        self.t0 = self.starts + target_offset(steps, in_frames)

    @classmethod
    def read(cls, dataset: Dataset, starts: np.ndarray, steps: np.ndarray, in_frames: int,
             picked: list[int] | None = None, normalized: bool = True) -> SpanWindows:
        """Reads the spans under `starts` (any order), each chunk once."""
        sorted_starts = np.sort(np.asarray(starts, dtype=np.int64))
        spans = read_spans(dataset, sorted_starts, int(steps[-1]) + 1, picked, normalized)
        return cls([(first, frames) for first, frames, _ in spans], starts, steps, in_frames)

    def __len__(self) -> int:
        return len(self.starts)

    def cut(self, positions: np.ndarray | slice) -> Batch:
        """{"x", "y", "t0"} of the windows at `positions` of `starts`, in that order."""
        ids, local = self.span_id[positions], self.local[positions]
        if len(ids) == 0 or ids.min() == ids.max():
            frames = self.spans[int(ids[0]) if len(ids) else 0][1]
            x, y = cut_windows(frames, local, self.steps, self.in_frames)
        else:
            frames = self.spans[0][1]
            x = np.empty((len(ids), self.in_frames, *frames.shape[1:]), frames.dtype)
            y = np.empty((len(ids), len(self.steps) - self.in_frames, *frames.shape[1:]),
                         frames.dtype)
            for k in np.unique(ids):
                mask = ids == k
                x[mask], y[mask] = cut_windows(self.spans[k][1], local[mask], self.steps,
                                               self.in_frames)
        return {"x": x, "y": y, "t0": self.t0[positions]}


def read_windows(dataset: Dataset, starts: Sequence[int] | np.ndarray, in_frames: int,
                 out_frames: int, frame_step: int = 1, *, offsets: Sequence[int] | None = None,
                 channels: Sequence[str] | None = None, normalized: bool = True) -> Batch:
    """Windows at the given start steps, in the given order, float32 and normalised with the
    store's training statistics (physical units with normalized=False), with their `t0`."""
    starts = np.asarray(starts, dtype=np.int64)
    steps = window_offsets(in_frames, out_frames, frame_step, offsets)
    extent = int(steps[-1]) + 1
    if len(starts) and (starts.min() < 0 or starts.max() + extent > dataset.n_steps):
        raise DatasetError(f"{dataset.url}: window starts must lie in [0, "
                           f"{dataset.n_steps - extent}] for a {extent}-step window")
    picked = channel_indices(dataset, channels)
    if len(starts) == 0:
        frame = (dataset.frames.shape[1] if picked is None else len(picked),
                 *dataset.frames.shape[2:])
        return {"x": np.zeros((0, in_frames, *frame), np.float32),
                "y": np.zeros((0, out_frames, *frame), np.float32),
                "t0": np.zeros(0, np.int64)}
    return SpanWindows.read(dataset, starts, steps, in_frames, picked, normalized).cut(
        slice(None))


def _as_dataset(source: StoreSource | Dataset) -> Dataset:
    return source if isinstance(source, Dataset) else open_dataset(source)


def epoch_order(starts: np.ndarray, chunk_frames: int, buffer_windows: int, seed: int,
                epoch: int) -> list[np.ndarray]:
    """Shuffled starts for one epoch, as buffers to read: block order, then within buffers.

    A block is the windows starting in a run of chunks, sized so that a buffer of about
    buffer_windows windows gathers ~8 random blocks; each buffer is then shuffled. A block
    reads one chunk past its run (the windows' tail), so longer runs mean fewer repeated reads:
    1 + 1 / run chunk reads per chunk and epoch. Reproducible from (seed, epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    run = max(1, buffer_windows // (8 * chunk_frames)) * chunk_frames
    blocks = np.split(starts, np.flatnonzero(np.diff(starts // run)) + 1)
    buffers, current, size = [], [], 0
    for index in rng.permutation(len(blocks)):
        current.append(blocks[index])
        size += len(blocks[index])
        if size >= buffer_windows:
            buffers.append(np.concatenate(current))
            current, size = [], 0
    if current:
        buffers.append(np.concatenate(current))
    return [rng.permutation(buffer) for buffer in buffers]


def shard_positions(num_windows: int, rank: int, world_size: int, *, seed: int, epoch: int,
                    shuffle: bool = True) -> np.ndarray:
    """This rank's positions of one epoch (DistributedSampler semantics, drop_last): every
    rank draws the same permutation of all windows from (seed, epoch) and takes every
    world_size-th entry of its first world_size * (num_windows // world_size), so the shares
    are disjoint and equal, and a pure function of (seed, epoch, world_size)."""
    order = (np.random.default_rng([seed, epoch]).permutation(num_windows) if shuffle
             else np.arange(num_windows))
    return order[rank : num_windows - num_windows % world_size : world_size]


def iter_buffer_batches(buffers: Iterable[tuple[SpanWindows, np.ndarray | slice]],
                        batch_size: int, drop_last: bool = False) -> Iterator[Batch]:
    """Batches of `batch_size` windows cut from a sequence of (windows, positions to serve), in
    that order; a batch may straddle two buffers."""
    pending: list[Batch] = []
    pending_rows = 0
    for windows, positions in buffers:
        if isinstance(positions, slice):
            positions = np.arange(len(windows))[positions]
        at = 0
        while at < len(positions):
            take = min(batch_size - pending_rows, len(positions) - at)
            pending.append(windows.cut(positions[at : at + take]))
            pending_rows += take
            at += take
            if pending_rows == batch_size:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending_rows and not drop_last:
        yield _concat(pending)


def _concat(pieces: list[Batch]) -> Batch:
    if len(pieces) == 1:
        return pieces[0]
    return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}


def prefetched(batches: Iterator[Batch], depth: int = 2) -> Iterator[Batch]:
    """The same batches, produced `depth` ahead in a background thread: numpy's gathers release
    the GIL, so cutting the next batches overlaps the consumer's step."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Queue `item`, waiting for a free slot; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            item = done
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            item = error
        put(item)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (a fixed number of steps): let the thread end
        stop.set()


def iter_numpy_batches(source: StoreSource | Dataset, split: str, in_frames: int,
                       out_frames: int, batch_size: int, *, frame_step: int = 1,
                       stride: int = 1, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                       drop_last: bool = False, offsets: Sequence[int] | None = None,
                       channels: Sequence[str] | None = None,
                       buffer_windows: int = 4096) -> Iterator[Batch]:
    """Batches {"x", "y", "t0"} over every valid window of a split, once each: in start order
    without shuffle, otherwise in an order fixed by (seed, epoch). Memory: the frames under one
    buffer of at most buffer_windows windows (and BUFFER_BYTES) plus one batch."""
    if batch_size < 1:
        raise DatasetError(f"batch_size={batch_size}: must be >= 1")
    dataset = _as_dataset(source)
    steps = window_offsets(in_frames, out_frames, frame_step, offsets)
    picked = channel_indices(dataset, channels)
    starts = window_starts(dataset, split, in_frames, out_frames, frame_step, stride, offsets)
    if len(starts) == 0:
        a, b = dataset.split_range(split)
        raise DatasetError(f"{dataset.url}: split {split!r} (steps [{a}, {b}), "
                           f"{int(dataset.valid[a:b].sum())} valid) has no valid window of "
                           f"{len(steps)} frames spanning {int(steps[-1]) + 1} steps")
    frame_bytes = 4 * int(np.prod(dataset.frames.shape[1:]))
    size = max(batch_size, min(buffer_windows, BUFFER_BYTES // frame_bytes))
    if shuffle:
        buffers = epoch_order(starts, dataset.chunk_frames, size, seed, epoch)
    else:
        buffers = [starts[i : i + size] for i in range(0, len(starts), size)]
    # lazily: the frames of one buffer in memory at a time
    read = ((SpanWindows.read(dataset, buffer, steps, in_frames, picked), slice(None))
            for buffer in buffers)
    yield from iter_buffer_batches(read, batch_size, drop_last)
