"""Open and create stores on local paths, file:// or s3:// URLs (fsspec / s3fs), and read them.

`open_dataset` is the reading entry point; `create_store` returns a `StoreWriter` that converters
fill frame block by frame block and then `finish()`, which fits the training statistics and only
then marks the store complete (an interrupted conversion leaves `complete=False`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec

from simvp_ray.data import schema
from simvp_ray.data.normalization import Stats, StatsAccumulator
from simvp_ray.data.schema import CorruptChunkError, DatasetError
from simvp_ray.progress import Progress

StoreSource = str | os.PathLike | Store


def is_remote(url: str) -> bool:
    """True for URLs that go through an fsspec filesystem (s3://, gs://, ...), not local paths."""
    return "://" in url and not url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def describe(source: StoreSource) -> str:
    """A printable name for a store source."""
    return os.fspath(source) if isinstance(source, str | os.PathLike) else repr(source)


def open_group(source: StoreSource, mode: str, storage_options: dict | None = None
               ) -> zarr.Group:
    """The Zarr group at a path, file:// or s3:// URL, or zarr Store object (any schema)."""
    if isinstance(source, Store):
        return zarr.open_group(store=source, mode=mode)
    url = os.fspath(source)
    if is_remote(url):
        # zarr 3 rejects storage_options for local paths, so they travel only with remote URLs;
        # with none given s3fs takes endpoint, credentials and region from the environment.
        return zarr.open_group(url, mode=mode, storage_options=storage_options or {})
    return zarr.open_group(_local_path(url), mode=mode)


def store_exists(source: StoreSource, storage_options: dict | None = None) -> bool:
    """True when a Zarr group (any schema) exists at source; errors on a missing S3 bucket."""
    if isinstance(source, Store):
        return True
    url = os.fspath(source)
    if not is_remote(url):
        return (Path(_local_path(url)) / "zarr.json").exists()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        raise DatasetError(f"{url}: bucket {bucket!r} does not exist (or is not reachable)")
    return fs.exists(f"{path.rstrip('/')}/zarr.json")


@dataclass(frozen=True, eq=False)
class Dataset:
    """An opened store: lazy `frames`, small arrays (time, valid, lat, lon) loaded."""

    url: str
    group: zarr.Group
    frames: zarr.Array  # (T, C, H, W) float32
    attrs: dict[str, Any]
    stats: Stats
    splits: dict[str, tuple[int, int]]  # name -> [start, stop) step indices
    valid: np.ndarray  # (T,) bool
    time: np.ndarray  # (T,) datetime64[s] or int64
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None

    @property
    def channels(self) -> list[str]:
        return list(self.attrs["channels"])

    @property
    def units(self) -> list[str]:
        return list(self.attrs["units"])

    @property
    def chunk_frames(self) -> int:
        return int(self.frames.chunks[0])

    @property
    def n_steps(self) -> int:
        return int(self.frames.shape[0])

    def select(self, names: Sequence[str] | None = None) -> tuple[list[int], Stats]:
        """(indices, normalisation statistics) of the named channels, in this order; None or no
        names: every channel. The one place channel names become indices and statistics."""
        channels = self.channels
        if not names:
            return list(range(len(channels))), self.stats
        unknown = [name for name in names if name not in channels]
        if unknown:
            raise DatasetError(f"{self.url}: no channel {unknown}; valid: {channels}")
        picked = [channels.index(name) for name in names]
        return picked, self.stats.select(picked)

    def read_frames(self, a: int, b: int, picked: list[int] | None = None) -> np.ndarray:
        """frames[a:b] (of the picked channels); a chunk that fails to decode is a
        CorruptChunkError naming the store, the chunk and the steps (and times) it holds."""
        try:
            return self.frames[a:b] if picked is None else self.frames[a:b, picked]
        except Exception as error:  # zarr / numcodecs raise RuntimeError, ValueError, ...
            raise self._corrupt_chunk(a, b, error) from error

    def _corrupt_chunk(self, a: int, b: int, error: Exception) -> DatasetError:
        size = self.chunk_frames
        for chunk in range(a // size, (b - 1) // size + 1):
            first, last = chunk * size, min((chunk + 1) * size, self.n_steps) - 1
            try:
                self.frames[first]
            except Exception as chunk_error:  # this one does not decode
                return CorruptChunkError(
                    f"{self.url}: chunk {chunk} of frames (steps {first}-{last}, "
                    f"{self.time[first]} to {self.time[last]}) is unreadable: {chunk_error}; "
                    "rewrite the store (or that chunk) from its source")
        return DatasetError(f"{self.url}: reading frames of steps {a}-{b - 1} failed: {error}")

    def split_range(self, split: str) -> tuple[int, int]:
        """[start, stop) of a split; a ValueError lists the store's splits."""
        if split not in self.splits:
            raise DatasetError(f"{self.url}: no split {split!r}; valid: {sorted(self.splits)}")
        return self.splits[split]


def check_layout(group: zarr.Group, where: str) -> None:
    """Raise DatasetError when arrays are missing or their shapes disagree with the attributes."""
    attrs = dict(group.attrs)
    schema.check_attrs(attrs, where)
    members = set(group.array_keys())
    for name in (schema.FRAMES, schema.TIME, schema.VALID):
        if name not in members:
            raise DatasetError(f"{where}: missing array {name!r} (found {sorted(members)})")
    frames = group[schema.FRAMES]
    if frames.ndim != 4 or frames.dtype != np.float32:
        raise DatasetError(
            f"{where}/{schema.FRAMES}: expected 4-D float32 (time, channel, y, x), "
            f"got shape {frames.shape} dtype {frames.dtype}"
        )
    n_steps, channels, height, width = frames.shape
    if channels != len(attrs["channels"]):
        raise DatasetError(
            f"{where}/{schema.FRAMES}: {channels} channels but {len(attrs['channels'])} names"
        )
    expected = {schema.TIME: (n_steps,), schema.VALID: (n_steps,), schema.LAT: (height,),
                schema.LON: (width,)}
    for name, shape in expected.items():
        if name in members and group[name].shape != shape:
            raise DatasetError(f"{where}/{name}: shape {group[name].shape}, expected {shape}")
    for split, (start, stop) in attrs["splits"].items():
        if not 0 <= start <= stop <= n_steps:
            raise DatasetError(f"{where}: split {split!r} [{start}, {stop}) outside [0, {n_steps})")
    stats = attrs["normalization"]
    if attrs["complete"]:
        for key in ("mean", "std", "min", "max"):
            if key in stats and len(stats[key]) != channels:
                raise DatasetError(f"{where}: normalization {key} has {len(stats[key])} values "
                                   f"for {channels} channels")


def open_dataset(source: StoreSource, storage_options: dict | None = None) -> Dataset:
    """Open a complete store for reading; DatasetError when absent, incomplete or off-schema."""
    where = describe(source)
    if not store_exists(source, storage_options):
        raise DatasetError(f"{where}: no Zarr store there")
    group = open_group(source, "r", storage_options)
    check_layout(group, where)
    attrs = dict(group.attrs)
    if not attrs["complete"]:
        raise DatasetError(f"{where}: incomplete store (the conversion was interrupted); "
                           "re-run the same prepare_data command to complete it")
    members = set(group.array_keys())
    return Dataset(
        url=where,
        group=group,
        frames=group[schema.FRAMES],
        attrs=attrs,
        stats=Stats.from_attrs(attrs["normalization"]),
        splits={name: (int(a), int(b)) for name, (a, b) in attrs["splits"].items()},
        valid=np.asarray(group[schema.VALID][:], dtype=bool),
        time=group[schema.TIME][:],
        lat=group[schema.LAT][:] if schema.LAT in members else None,
        lon=group[schema.LON][:] if schema.LON in members else None,
    )


@dataclass
class StoreLayout:
    """What a converter declares before writing: the time axis, channels, grid and splits."""

    time: np.ndarray  # (T,) datetime64 (stored as [s]) or integer steps
    channels: list[str]
    units: list[str]
    height: int
    width: int
    splits: dict[str, tuple[int, int]]
    metadata: dict[str, Any]  # converter, converter_version, source, licence, citation, ...
    time_step: int  # regular spacing of `time`, in time_unit
    time_unit: str  # "s" for datetime axes, "step" for integer ones
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    chunk_frames: int | None = None
    extra_attrs: dict[str, Any] = field(default_factory=dict)


class StoreWriter:
    """Writes frames into a new store; `finish` fits statistics and marks it complete."""

    def __init__(self, group: zarr.Group, layout: StoreLayout, where: str,
                 storage_options: dict | None = None) -> None:
        self.group = group
        self.storage_options = storage_options
        self.layout = layout
        self.where = where
        n_steps = len(layout.time)
        shape = (n_steps, len(layout.channels), layout.height, layout.width)
        chunk = layout.chunk_frames or schema.chunk_frames_for(*shape[1:])
        self.chunk_frames = min(chunk, max(1, n_steps))
        # NaN fill: steps never written read back as NaN, so a lost chunk inside a valid range
        # shows up as non-finite data; zstd's checksum turns a corrupt chunk into a read error.
        self.frames = group.create_array(
            schema.FRAMES, shape=shape, chunks=(self.chunk_frames, *shape[1:]), dtype="float32",
            fill_value=np.nan, compressors=ZstdCodec(level=3, checksum=True),
        )
        time = np.asarray(layout.time)
        if np.issubdtype(time.dtype, np.datetime64):
            time = time.astype("datetime64[s]")
        else:
            time = time.astype(np.int64)
        group.create_array(schema.TIME, shape=(n_steps,), chunks=(max(1, n_steps),),
                           dtype=time.dtype)[:] = time
        self.time = time
        for name, values in ((schema.LAT, layout.lat), (schema.LON, layout.lon)):
            if values is not None:
                values = np.asarray(values, dtype=np.float64)
                group.create_array(name, shape=values.shape, dtype="float64")[:] = values
        self.valid = np.zeros(n_steps, dtype=bool)
        # all False until finish(): an interrupted store has the full layout but no valid step
        self.valid_array = group.create_array(schema.VALID, shape=(n_steps,),
                                              chunks=(max(1, n_steps),), dtype=bool)
        self.valid_array[:] = self.valid
        self.progress = Progress(f"writing {where}", n_steps, "frames")

    def write(self, start: int, block: np.ndarray, valid: np.ndarray | None = None,
              source: str = "") -> None:
        """Write frames (n, C, H, W) at steps [start, start + n); invalid rows become NaN."""
        block = np.asarray(block, dtype=np.float32)
        expected = self.frames.shape[1:]
        if block.ndim != 4 or block.shape[1:] != expected:
            raise DatasetError(f"{source or self.where}: frames of shape {block.shape[1:]}, "
                               f"expected (channel, y, x) = {expected}")
        ok = np.ones(len(block), bool) if valid is None else np.asarray(valid, bool)
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        bad = np.flatnonzero(ok & ~finite)
        if len(bad):
            step = start + int(bad[0])
            raise DatasetError(f"{source or self.where}: NaN or inf in frame at time index "
                               f"{step} (time {self.time[step]})")
        if not ok.all():
            block = block.copy()
            block[~ok] = np.nan
        self.frames[start : start + len(block)] = block
        self.valid[start : start + len(block)] = ok
        self.progress.add(len(block))

    def write_at(self, positions: np.ndarray, block: np.ndarray, source: str = "") -> None:
        """Write frames at increasing step positions; the steps in between stay invalid."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return
        if np.any(np.diff(positions) <= 0):
            raise DatasetError(f"{source or self.where}: duplicate or unsorted time steps")
        # one write per chunk touched: the NaN-filled span between far-apart steps (sparse stamps
        # on a fine grid) never outgrows a chunk, and each chunk is still written once
        cuts = np.flatnonzero(np.diff(positions // self.chunk_frames)) + 1
        for part, rows in zip(np.split(positions, cuts), np.split(np.asarray(block), cuts)):
            first = int(part[0])
            span = np.full((int(part[-1]) - first + 1, *self.frames.shape[1:]), np.nan,
                           dtype=np.float32)
            mask = np.zeros(len(span), dtype=bool)
            span[part - first] = rows
            mask[part - first] = True
            self.write(first, span, mask, source)

    def write_external(self, name: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        """A per-step side array (T, ...) under external/ (holidays, meteorology)."""
        values = np.asarray(values)
        external = self.group.require_group(schema.EXTERNAL)
        array = external.create_array(name, shape=values.shape, dtype=values.dtype)
        array[...] = values
        array.attrs.update(attrs)

    def finish(self, kind: str = "zscore", pooled_channels: bool = False,
               fixed: Stats | None = None) -> Dataset:
        """Fit statistics on the valid training steps (unless fixed), mark complete, reopen."""
        self.progress.close()
        if fixed is None:
            start, stop = self.layout.splits["train"]
            accumulator = StatsAccumulator(self.frames.shape[1])
            step = 8 * self.chunk_frames
            for a in range(start - start % self.chunk_frames, stop, step):
                a, b = max(a, start), min(a + step, stop)
                accumulator.add(self.frames[a:b][self.valid[a:b]])
            if accumulator.count == 0:
                raise DatasetError(f"{self.where}: the training split [{start}, {stop}) has no "
                                   "valid frame to fit the normalisation statistics on")
            stats = accumulator.stats(kind, pooled_channels)
        else:
            stats = fixed
        self.valid_array[:] = self.valid
        self.group.attrs.update({"normalization": stats.to_attrs(), "complete": True})
        return open_dataset(self.where, self.storage_options)


def create_store(url: str | os.PathLike, layout: StoreLayout, *, overwrite: bool = False,
                 storage_options: dict | None = None) -> StoreWriter:
    """A fresh store at url. A complete store (or foreign data) is replaced only with overwrite;
    an incomplete one, left by an interrupted conversion, is replaced silently."""
    url = os.fspath(url)
    if len(layout.channels) != len(layout.units):
        raise DatasetError(f"{url}: {len(layout.channels)} channels but {len(layout.units)} units")
    unknown = sorted(set(layout.splits) - set(schema.SPLIT_NAMES))
    if unknown or "train" not in layout.splits:
        raise DatasetError(f"{url}: splits {sorted(layout.splits)}; need train, valid names: "
                           f"{list(schema.SPLIT_NAMES)}")
    if store_exists(url, storage_options):
        attrs = dict(open_group(url, "r", storage_options).attrs)
        if not overwrite and (attrs.get("complete") or attrs.get("schema") != schema.SCHEMA_NAME):
            raise DatasetError(f"{url}: a store already exists there; pass --overwrite "
                               "(overwrite=True) to replace it")
    elif not is_remote(url) and Path(_local_path(url)).exists() and not overwrite:
        path = Path(_local_path(url))
        if path.is_file() or any(path.iterdir()):
            raise DatasetError(f"{url}: exists and is not empty; pass --overwrite to replace it")
    group = open_group(url, "w", storage_options)
    attrs = {
        "schema": schema.SCHEMA_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "complete": False,
        **layout.metadata,
        "channels": list(layout.channels),
        "units": list(layout.units),
        "splits": {name: [int(a), int(b)] for name, (a, b) in layout.splits.items()},
        "normalization": {},
        "time_step": int(layout.time_step),
        "time_unit": layout.time_unit,
        **layout.extra_attrs,
    }
    missing = [key for key in schema.REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise DatasetError(f"{url}: converter metadata lacks {missing}")
    group.attrs.update(attrs)
    return StoreWriter(group, layout, url, storage_options)
