"""Forecast stores: a model's forecasts over a period, as a dataset-schema store with leads.

A forecast store is a schema-v1 store (datasets/README.md), so `prepare_data.py validate` and
`open_dataset` read it, in which
  time     (N,)           the initialisation times: the time of each forecast's last input frame
  frames   (N, L*C, H, W) physical units; channel index l * C + c holds variable c at lead l + 1,
                          named `<variable>_lead<l + 1>` (`forecast_array` gives the 5-D view
                          (N, L, C, H, W) for free: a reshape)
  valid    (N,)           the forecast was made (all its input frames were valid)
  lead     (L,) int64     lead times in the source's time unit (seconds, or steps)
  chunks_done (n_chunks,) bool: the chunk of init times is written (one chunk per element)
and the attribute `forecast` records the checkpoint, its config and the request. Chunks hold
whole forecasts of ~1 MiB (`chunk_frames_for`) along the init time, and each chunk is written
by one task: frames, then valid, then its `chunks_done` flag, so a rerun of the same request
skips finished chunks (an interrupted run resumes; a finished one does nothing). A store holding
another request's forecasts is replaced only with overwrite=True. `complete` turns true when
every chunk is done.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from zarr.codecs import ZstdCodec

from simvp_ray.data import schema
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import (
    Dataset,
    _local_path,
    describe,
    is_remote,
    open_dataset,
    open_group,
    store_exists,
)

CONVERTER = "simvp_ray.predict"
CONVERTER_VERSION = "1"
LEAD = "lead"
DONE = "chunks_done"
FORECAST_ATTR = "forecast"
# the request keys that identify a store's forecasts: same values = same forecasts
IDENTITY = ("checkpoint_sha256", "config", "source", "channels", "init_start", "init_end",
            "every")


def lead_channel_names(channels: list[str], num_leads: int) -> list[str]:
    """Channel names of the flattened (lead, channel) axis, lead-major."""
    return [f"{name}_lead{lead}" for lead in range(1, num_leads + 1) for name in channels]


def parse_time(text: str, dataset: Dataset) -> np.generic:
    """A --start / --end value in the store's time axis: an ISO date/time or a step number."""
    datetime_axis = np.issubdtype(dataset.time.dtype, np.datetime64)
    try:
        return np.datetime64(text, "s") if datetime_axis else np.int64(int(text))
    except ValueError:
        kind = "an ISO date or date-time such as 2000-01-20T06" if datetime_axis else "a step"
        raise DatasetError(f"time {text!r}: expected {kind} (the store's time axis runs "
                           f"{dataset.time[0]} .. {dataset.time[-1]})") from None


def init_indices(dataset: Dataset, start: str, end: str, input_steps: np.ndarray,
                 every: int = 1) -> np.ndarray:
    """Step indices of the forecasts' init times (last input frame) in [start, end], every
    `every`-th step; DatasetError when the range is empty or outside the data."""
    if every < 1:
        raise DatasetError(f"every={every}: must be >= 1")
    first, last = parse_time(start, dataset), parse_time(end, dataset)
    history = int(input_steps[-1])  # steps of input before the init time
    if history >= dataset.n_steps:
        raise DatasetError(f"{dataset.url}: {dataset.n_steps} steps cannot hold the "
                           f"{history + 1}-step input window of the model")
    earliest, latest = dataset.time[history], dataset.time[-1]
    if first > last:
        raise DatasetError(f"time range {start} .. {end} is empty (start after end)")
    if first < earliest or last > latest:
        raise DatasetError(f"time range {start} .. {end} is outside the data: forecasts can be "
                           f"initialised from {earliest} (the first with {history + 1} steps "
                           f"of input) to {latest}")
    a = int(np.searchsorted(dataset.time, first, side="left"))
    b = int(np.searchsorted(dataset.time, last, side="right"))
    return np.arange(a, b, every, dtype=np.int64)


@dataclass
class ForecastLayout:
    """What `create_forecast_store` needs: the source store, the init steps and the leads."""

    source: Dataset
    init_steps: np.ndarray  # (N,) step indices of the init times in the source
    lead_steps: np.ndarray  # (L,) steps after the init time of each lead
    channels: list[str]  # the model's variables (source channel names)
    request: dict[str, Any]  # checkpoint, checkpoint_sha256, config, ...: JSON-serialisable


def create_forecast_store(url: str | os.PathLike, layout: ForecastLayout, *,
                          overwrite: bool = False, storage_options: dict | None = None
                          ) -> ForecastStore:
    """The forecast store for this request: resumed when it already holds the same request,
    created when absent (or with overwrite); DatasetError when it holds anything else."""
    url = os.fspath(url)
    request = json.loads(json.dumps(layout.request))  # as stored: lists, not tuples
    if store_exists(url, storage_options):
        attrs = dict(open_group(url, "r", storage_options).attrs)
        held = attrs.get(FORECAST_ATTR, {}).get("request")
        same = held is not None and all(held.get(k) == request.get(k) for k in IDENTITY)
        if same and not overwrite:
            return ForecastStore(url, storage_options)
        if not overwrite:
            what = (f"forecasts of checkpoint {held.get('checkpoint')} for {held.get('init_start')}"
                    f" .. {held.get('init_end')}" if held is not None
                    else f"a store that is not a forecast store (schema {attrs.get('schema')!r})")
            differs = [] if held is None else [k for k in IDENTITY
                                               if held.get(k) != request.get(k)]
            raise DatasetError(f"{url}: already holds {what}"
                               + (f" (differs in {differs})" if differs else "")
                               + "; pass --overwrite to replace it (nothing was written)")
    elif not is_remote(url) and Path(_local_path(url)).exists() and not overwrite:
        path = Path(_local_path(url))
        if path.is_file() or any(path.iterdir()):
            raise DatasetError(f"{url}: exists and is not a Zarr store; pass --overwrite to "
                               "replace it (nothing was written)")
    _write_layout(url, layout, request, storage_options)
    return ForecastStore(url, storage_options)


def _write_layout(url: str, layout: ForecastLayout, request: dict[str, Any],
                  storage_options: dict | None) -> None:
    source = layout.source
    names = layout.channels
    picked, stats = source.select(names)
    num_leads, num_channels = len(layout.lead_steps), len(names)
    n = len(layout.init_steps)
    height, width = source.frames.shape[2:]
    chunk = min(schema.chunk_frames_for(num_leads * num_channels, height, width), max(1, n))
    group = open_group(url, "w", storage_options)
    group.create_array(schema.FRAMES, shape=(n, num_leads * num_channels, height, width),
                       chunks=(chunk, num_leads * num_channels, height, width), dtype="float32",
                       fill_value=np.nan, compressors=ZstdCodec(level=3, checksum=True))
    time = source.time[layout.init_steps]
    group.create_array(schema.TIME, shape=(n,), chunks=(max(1, n),), dtype=time.dtype)[:] = time
    # chunked like frames: each task writes its own chunk of `valid`, never another's
    group.create_array(schema.VALID, shape=(n,), chunks=(chunk,), dtype=bool, fill_value=False)
    n_chunks = -(-n // chunk)
    group.create_array(DONE, shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False)
    time_step = int(source.attrs["time_step"])
    lead = np.asarray(layout.lead_steps, np.int64) * time_step
    group.create_array(LEAD, shape=(num_leads,), dtype="int64")[:] = lead
    for name, values in ((schema.LAT, source.lat), (schema.LON, source.lon)):
        if values is not None:
            group.create_array(name, shape=values.shape, dtype="float64")[:] = values
    steps = np.diff(layout.init_steps)
    every = int(steps[0]) if len(steps) else 1
    stats = stats.select(np.tile(np.arange(num_channels), num_leads))  # lead-major, as channels
    units = [source.units[i] for i in picked]
    group.attrs.update({
        "schema": schema.SCHEMA_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "complete": False,
        "converter": CONVERTER,
        "converter_version": CONVERTER_VERSION,
        "source": f"forecasts by checkpoint {request.get('checkpoint')} from {source.url}",
        "licence": source.attrs["licence"],
        "citation": source.attrs["citation"],
        "channels": lead_channel_names(names, num_leads),
        "units": units * num_leads,
        "splits": {"test": [0, n]},  # the whole forecast period
        "normalization": stats.to_attrs(),  # the source's, per variable, repeated per lead
        "time_step": time_step * every,
        "time_unit": source.attrs["time_unit"],
        FORECAST_ATTR: {
            "variables": names, "variable_units": units, "leads": num_leads,
            "lead_unit": source.attrs["time_unit"], "chunk_frames": chunk,
            "source_store": source.url, "request": request,
        },
    })


class ForecastStore:
    """An existing forecast store: pending chunks, chunk writes, and the final mark."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url
        self.storage_options = storage_options
        self.group = open_group(url, "r+", storage_options)
        self.attrs = dict(self.group.attrs)
        info = self.attrs[FORECAST_ATTR]
        self.chunk_frames = int(info["chunk_frames"])
        self.num_leads, self.variables = int(info["leads"]), list(info["variables"])
        self.num_init = int(self.group[schema.TIME].shape[0])

    @property
    def num_chunks(self) -> int:
        return int(self.group[DONE].shape[0])

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """[a, b) init indices of one chunk."""
        a = chunk * self.chunk_frames
        return a, min(a + self.chunk_frames, self.num_init)

    def pending(self) -> list[int]:
        """Chunks not written yet, in order."""
        return [int(i) for i in np.flatnonzero(~self.group[DONE][:])]

    def write_chunk(self, chunk: int, forecasts: np.ndarray, valid: np.ndarray) -> None:
        """forecasts (n, L, C, H, W) physical units for the chunk's n init times (NaN where not
        valid); the chunk counts as done only after its data is written."""
        a, b = self.chunk_range(chunk)
        frames = self.group[schema.FRAMES]
        expected = (b - a, self.num_leads, len(self.variables), *frames.shape[2:])
        if forecasts.shape != expected:
            raise DatasetError(f"{self.url}: chunk {chunk} takes forecasts of shape {expected}, "
                               f"got {forecasts.shape}")
        frames[a:b] = np.asarray(forecasts, np.float32).reshape(b - a, -1, *frames.shape[2:])
        self.group[schema.VALID][a:b] = np.asarray(valid, bool)
        self.group[DONE][chunk] = True

    def finish(self) -> Dataset:
        """Mark the store complete once every chunk is done; reopen it for reading."""
        if self.pending():
            raise DatasetError(f"{self.url}: chunks {self.pending()} are not written yet")
        if not self.attrs["complete"]:
            self.group.attrs["complete"] = True
            self.attrs["complete"] = True
        return open_dataset(self.url, self.storage_options)


def is_forecast_store(url: str, storage_options: dict | None = None) -> bool:
    """True when url holds a forecast store (complete or not)."""
    if not store_exists(url, storage_options):
        return False
    attrs = dict(open_group(url, "r", storage_options).attrs)
    return attrs.get("converter") == CONVERTER and FORECAST_ATTR in attrs


@dataclass(frozen=True)
class Forecasts:
    """An opened, complete forecast store."""

    dataset: Dataset
    lead: np.ndarray  # (L,) in lead_unit
    variables: list[str]
    units: list[str]
    info: dict[str, Any]  # the `forecast` attribute

    @property
    def num_leads(self) -> int:
        return len(self.lead)

    def forecast_array(self, a: int, b: int | None = None) -> np.ndarray:
        """Forecasts of init indices [a, b) as (n, L, C, H, W), physical units."""
        b = a + 1 if b is None else b
        frames = self.dataset.frames[a:b]
        return frames.reshape(len(frames), self.num_leads, len(self.variables),
                              *frames.shape[2:])


def open_forecasts(url: str, storage_options: dict | None = None) -> Forecasts:
    """Open a complete forecast store; DatasetError when it is not one."""
    dataset = open_dataset(url, storage_options)
    info = dataset.attrs.get(FORECAST_ATTR)
    if dataset.attrs.get("converter") != CONVERTER or info is None:
        raise DatasetError(f"{describe(url)}: not a forecast store (converter "
                           f"{dataset.attrs.get('converter')!r}, expected {CONVERTER!r})")
    return Forecasts(dataset, dataset.group[LEAD][:], list(info["variables"]),
                     list(info["variable_units"]), info)
