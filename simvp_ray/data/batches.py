"""Read windows from a store as numpy batches {"x": (N, T_in, C, H, W), "y": (N, T_out, C, H, W)}.

Windows are grouped into contiguous spans of chunks; each span is read once and the windows are
cut from it in memory, so every chunk a request touches is read exactly once. The Ray-free
iterator shuffles blocks of chunks and then windows inside a buffer of blocks, which keeps the
reads contiguous (spec/ray.md 3.4: scattering single-window reads is 25x slower on S3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from simvp_ray.data.normalization import Stats, normalize
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset, StoreSource, open_dataset
from simvp_ray.data.windows import window_offsets, window_starts

Batch = dict[str, np.ndarray]
BUFFER_BYTES = 256 << 20  # frames the iterator holds at once; windows are cut a batch at a time


def channel_indices(dataset: Dataset, channels: Sequence[str] | None) -> list[int] | None:
    """Indices of named channels (None = all); a ValueError lists the store's channels."""
    if channels is None:
        return None
    names = dataset.channels
    unknown = [name for name in channels if name not in names]
    if unknown:
        raise DatasetError(f"{dataset.url}: no channel {unknown}; valid: {names}")
    return [names.index(name) for name in channels]


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


def read_spans(dataset: Dataset, sorted_starts: np.ndarray, extent: int,
               picked: list[int] | None = None, normalized: bool = True
               ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(first step, frames (n, C, H, W), member indices into sorted_starts) per span: windows
    whose chunk ranges overlap or touch share one contiguous read, normalised once per frame."""
    stats = _channel_stats(dataset, picked)
    spans = []
    for group in span_groups(sorted_starts, extent, dataset.chunk_frames):
        a = int(sorted_starts[group[0]])
        b = int(sorted_starts[group].max()) + extent
        span = dataset.read_frames(a, b, picked)
        spans.append((a, normalize(span, stats) if normalized else span, group))
    return spans


def read_windows(dataset: Dataset, starts: Sequence[int] | np.ndarray, in_frames: int,
                 out_frames: int, frame_step: int = 1, *, offsets: Sequence[int] | None = None,
                 channels: Sequence[str] | None = None, normalized: bool = True) -> Batch:
    """Windows at the given start steps, in the given order, float32 and normalised with the
    store's training statistics (physical units with normalized=False)."""
    starts = np.asarray(starts, dtype=np.int64)
    steps = window_offsets(in_frames, out_frames, frame_step, offsets)
    extent = int(steps[-1]) + 1
    if len(starts) and (starts.min() < 0 or starts.max() + extent > dataset.n_steps):
        raise DatasetError(f"{dataset.url}: window starts must lie in [0, "
                           f"{dataset.n_steps - extent}] for a {extent}-step window")
    picked = channel_indices(dataset, channels)
    n_channels = dataset.frames.shape[1] if picked is None else len(picked)
    out = np.empty((len(starts), len(steps), n_channels, *dataset.frames.shape[2:]), np.float32)
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    for a, span, members in read_spans(dataset, sorted_starts, extent, picked, normalized):
        out[order[members]] = span[(sorted_starts[members] - a)[:, None] + steps[None, :]]
    return {"x": out[:, :in_frames], "y": out[:, in_frames:]}


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


class _Buffer:
    """The spans under a buffer of window starts; cuts windows by buffer position."""

    def __init__(self, dataset: Dataset, starts: np.ndarray, steps: np.ndarray,
                 picked: list[int] | None) -> None:
        order = np.argsort(starts, kind="stable")
        sorted_starts = starts[order]
        self.steps = steps
        self.spans = read_spans(dataset, sorted_starts, int(steps[-1]) + 1, picked)
        self.span_id = np.empty(len(starts), dtype=np.int64)
        self.local = np.empty(len(starts), dtype=np.int64)
        for k, (a, _, members) in enumerate(self.spans):
            self.span_id[order[members]] = k
            self.local[order[members]] = sorted_starts[members] - a

    def cut(self, lo: int, hi: int) -> np.ndarray:
        """Windows lo..hi-1 of the buffer: (n, T_in + T_out, C, H, W)."""
        ids, local = self.span_id[lo:hi], self.local[lo:hi]
        frames = self.spans[0][1]
        out = np.empty((hi - lo, len(self.steps), *frames.shape[1:]), dtype=frames.dtype)
        for k in np.unique(ids):
            mask = ids == k
            out[mask] = self.spans[k][1][local[mask][:, None] + self.steps[None, :]]
        return out


def iter_numpy_batches(source: StoreSource | Dataset, split: str, in_frames: int,
                       out_frames: int, batch_size: int, *, frame_step: int = 1,
                       stride: int = 1, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                       drop_last: bool = False, offsets: Sequence[int] | None = None,
                       channels: Sequence[str] | None = None,
                       buffer_windows: int = 4096) -> Iterator[Batch]:
    """Batches over every valid window of a split, once each: in start order without shuffle,
    otherwise in an order fixed by (seed, epoch). Memory: the frames under one buffer of at
    most buffer_windows windows (and BUFFER_BYTES) plus one batch."""
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
    pending: list[np.ndarray] = []
    pending_rows = 0
    for buffer_starts in buffers:
        buffer = _Buffer(dataset, buffer_starts, steps, picked)
        position = 0
        while position < len(buffer_starts):
            take = min(batch_size - pending_rows, len(buffer_starts) - position)
            pending.append(buffer.cut(position, position + take))
            pending_rows += take
            position += take
            if pending_rows == batch_size:
                yield _split(pending, in_frames)
                pending, pending_rows = [], 0
    if pending_rows and not drop_last:
        yield _split(pending, in_frames)


def _split(pieces: list[np.ndarray], in_frames: int) -> Batch:
    windows = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return {"x": windows[:, :in_frames], "y": windows[:, in_frames:]}


def count_windows(source: StoreSource | Dataset, split: str, in_frames: int,
                  out_frames: int, frame_step: int = 1, stride: int = 1) -> int:
    """Number of valid windows in a split."""
    return len(window_starts(_as_dataset(source), split, in_frames, out_frames, frame_step,
                             stride))
