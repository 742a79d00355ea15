"""Convert anything xarray opens (NetCDF 3/4, GRIB via cfgrib, Zarr incl. WeatherBench2-style
stores) into a store: chosen variables x pressure levels become channels, in the order given.

The work is split in parts (one file, or for WeatherBench one year of several variable files);
each part is read in blocks of BLOCK_STEPS time steps, so memory stays bounded.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import xarray as xr

from simvp_ray.data.schema import DatasetError, default_splits
from simvp_ray.data.store import Dataset, StoreLayout, create_store, is_remote
from simvp_ray.data.timegrid import (
    check_increasing,
    coarsest_step,
    format_step,
    infer_step,
    parse_step,
    regular_grid,
)

CONVERTER_VERSION = "1"
BLOCK_STEPS = 1024
TIME_DIMS = ("time", "valid_time", "datetime", "date")
LEVEL_DIMS = ("level", "isobaricInhPa", "plev", "pressure_level", "lev")
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
GRIB_SUFFIXES = (".grib", ".grb", ".grib2", ".grb2")
# a --time-step finer than this many grid steps per stamp is almost surely a typo (1s for hourly
# data), and would write a time / valid axis far larger than the data
MAX_GRID_PER_STAMP = 100
# the `time_axis` attribute: `regular` (time[i] = time[0] + i * time_step, gaps invalid) or
# `ordinal` (frame i is the i-th stamp; `time` holds the real, irregular stamps)
TIME_AXES = ("regular", "ordinal")
IRREGULAR_HINT = ("; the time axis is irregular: pass --time-step STEP (time_step=) with a step "
                  "every stamp falls on (here {coarsest}; missing steps become gaps that no "
                  "window spans) or --ordinal (ordinal=True: the stamps' order is the frame "
                  "sequence, their real times kept in `time`)")


@dataclass(frozen=True)
class Channel:
    """One store channel: a variable of a file, at one level (or none)."""

    variable: str
    level: float | None = None
    name: str = ""


def open_source(path: str, storage_options: dict | None = None) -> xr.Dataset:
    """Open a file or store lazily with the right backend (cfgrib, zarr or xarray's guess)."""
    if path.endswith(GRIB_SUFFIXES):
        # no .idx side file: the source may be read-only
        return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    if path.rstrip("/").endswith(".zarr") or any(
            os.path.exists(os.path.join(path, name)) for name in ("zarr.json", ".zgroup")):
        options = storage_options or {}
        kwargs = {"storage_options": options} if is_remote(path) else {}
        return xr.open_dataset(path, engine="zarr", chunks=None,
                               consolidated=_has_consolidated_metadata(path, options), **kwargs)
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    return xr.open_dataset(path)


def _has_consolidated_metadata(path: str, storage_options: dict) -> bool:
    # v2 stores (WeatherBench2) keep it in .zmetadata, v3 ones inside zarr.json; asking xarray
    # to guess costs a warning and a failed read on every open
    fs, root = fsspec.core.url_to_fs(path, **(storage_options if is_remote(path) else {}))
    root = root.rstrip("/")
    if fs.exists(f"{root}/.zmetadata"):
        return True
    if not fs.exists(f"{root}/zarr.json"):
        return False
    return json.loads(fs.cat_file(f"{root}/zarr.json")).get("consolidated_metadata") is not None


def find_dim(ds: xr.Dataset, given: str | None, candidates: Sequence[str], what: str,
             where: str) -> str | None:
    """The dimension named `given`, else the first candidate present (None if none)."""
    if given is not None:
        if given not in ds.dims:
            raise DatasetError(f"{where}: no {what} dimension {given!r}; dims: {list(ds.dims)}")
        return given
    return next((name for name in candidates if name in ds.dims), None)


def resolve_channels(ds: xr.Dataset, variables: Sequence[str], levels: Sequence[float] | None,
                     level_dim: str | None, where: str, last_level: bool = False) -> list[Channel]:
    """Channels for variables x levels: each variable in turn, its levels in the order given
    (all levels when none are given, or only the last one with last_level)."""
    channels = []
    for variable in variables:
        if variable not in ds.data_vars:
            raise DatasetError(f"{where}: no variable {variable!r}; valid: {sorted(ds.data_vars)}")
        dims = ds[variable].dims
        dim = next((d for d in ([level_dim] if level_dim else LEVEL_DIMS) if d in dims), None)
        if dim is None:
            channels.append(Channel(variable, None, variable))
            continue
        available = [float(v) for v in ds[dim].values]
        wanted = list(levels) if levels else (available[-1:] if last_level else available)
        for level in wanted:
            if float(level) not in available:
                raise DatasetError(f"{where}: variable {variable!r} has no {dim} {level:g}; "
                                   f"valid: {[f'{v:g}' for v in available]}")
            channels.append(Channel(variable, float(level), f"{variable}_{float(level):g}"))
    return channels


@dataclass(frozen=True)
class Region:
    """A latitude / longitude box in degrees, (low, high) each, None for an open end. Longitude
    is periodic: -10:2 selects 350..360 and 0..2 from a 0..360 grid, and 350:10 wraps."""

    lat: tuple[float | None, float | None] | None = None
    lon: tuple[float | None, float | None] | None = None


def parse_range(text: str) -> tuple[float | None, float | None]:
    """'50:60' -> (50.0, 60.0); either end may be left empty ('50:')."""
    low, sep, high = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return (float(low) if low.strip() else None, float(high) if high.strip() else None)
    except ValueError:
        raise DatasetError(f"range {text!r}: expected LOW:HIGH in degrees, e.g. 50:60 or "
                           "-10:2 (--lon=-10:2 on the command line)") from None


def make_region(lat: str | tuple | None, lon: str | tuple | None) -> Region | None:
    """A Region from 'LOW:HIGH' texts or (low, high) tuples; None when neither is given."""
    if not lat and not lon:
        return None
    return Region(*(parse_range(v) if isinstance(v, str) else (tuple(v) if v else None)
                    for v in (lat, lon)))


def _select(values: np.ndarray, bounds: tuple[float | None, float | None], what: str,
            where: str, periodic: bool) -> tuple[slice | np.ndarray, np.ndarray]:
    """(index, coordinate) of the values inside bounds. Latitude keeps the source's order (ERA5
    runs north to south); a periodic longitude runs east from the low bound, increasing, in
    the low bound's frame (-10:2 -> -10 .. 2 from a 0..360 grid; 350:2 also gives -10 .. 2)."""
    low, high = bounds
    eps = 1e-9
    if periodic and low is not None and high is not None:
        width = high - low if high >= low else high - low + 360.0
        shifted = np.mod(values - low, 360.0)
        shifted[shifted > 360.0 - eps] = 0.0  # a value a rounding error below `low`
        index = np.flatnonzero(shifted <= width + eps) if width < 360.0 else np.arange(len(values))
        index = index[np.argsort(shifted[index], kind="stable")]
        coordinate = low + shifted[index]
        if len(index) and coordinate[-1] > 360.0:  # 350:2: -10 .. 2, not 350 .. 362
            coordinate = coordinate - 360.0
    else:
        low = -np.inf if low is None else low
        high = np.inf if high is None else high
        index = np.flatnonzero((values >= low - eps) & (values <= high + eps))
        coordinate = values[index]
    if len(index) == 0:
        raise DatasetError(f"{where}: --{what} {bounds[0]}:{bounds[1]} selects no {what} point; "
                           f"the file's {what} runs {values[0]:g} .. {values[-1]:g}")
    return _as_slice(index), coordinate


def resolve_region(ds: xr.Dataset, array: xr.DataArray, region: Region, where: str
                   ) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """({dim: index} for isel, lat, lon) of a region of a (time, y, x) array."""
    coordinates, selection = {}, {}
    for axis, what, names, bounds in ((1, "lat", LAT_NAMES, region.lat),
                                      (2, "lon", LON_NAMES, region.lon)):
        values = _coordinate(ds, array, axis, names)
        coordinates[what] = values
        if bounds is None:
            continue
        if values is None:
            raise DatasetError(f"{where}: no {what} coordinate ({' or '.join(names)}) to select "
                               f"--{what} on; the grid dims are {array.dims[1:]}")
        index, coordinates[what] = _select(values, bounds, what, where, periodic=what == "lon")
        selection[array.dims[axis]] = index
    return selection, coordinates["lat"], coordinates["lon"]


def _channel_array(ds: xr.Dataset, channel: Channel, time_dim: str, level_dim: str | None,
                   where: str, selection: dict | None = None) -> xr.DataArray:
    array = ds[channel.variable]
    if channel.level is not None:
        dim = level_dim or next(d for d in LEVEL_DIMS if d in array.dims)
        array = array.sel({dim: channel.level})
    if time_dim not in array.dims or array.ndim != 3:
        raise DatasetError(f"{where}: variable {channel.variable!r} has dims {array.dims}; need "
                           f"({time_dim}, y, x) after selecting a level")
    spatial = [d for d in array.dims if d != time_dim]
    array = array.transpose(time_dim, *spatial)
    return array.isel(selection) if selection else array


def _coordinate(ds: xr.Dataset, array: xr.DataArray, axis: int, names: Sequence[str]):
    dim = array.dims[axis]
    if dim in names and dim in ds.coords:
        return np.asarray(ds[dim].values, dtype=np.float64)
    return None


@dataclass
class Part:
    """One time period: files, each giving some of the channels, sharing one time axis."""

    files: list[tuple[str, list[Channel]]]


def write_parts(parts: list[Part], dst: str | os.PathLike, *, channels: list[Channel],
                split_bounds: dict[str, tuple] | None, metadata: dict, time_dim: str | None,
                level_dim: str | None, every: int = 1, time_step=None, ordinal: bool = False,
                region: Region | None = None, nan_as_gap: bool = False, overwrite: bool = False,
                chunk_frames: int | None = None, storage_options: dict | None = None,
                opened: dict[str, xr.Dataset] | None = None,
                off_grid_hint: str = IRREGULAR_HINT) -> Dataset:
    """Scan the parts' time axes, lay out the time axis and splits, then stream the data.

    Time axis: the regular grid of time_step (default: the smallest stamp difference) x every,
    or with ordinal the stamps themselves, in order (every every-th). region: a lat / lon box.
    opened: datasets the caller has open already (path -> dataset); they are closed here.
    off_grid_hint ends the error for a stamp off the grid ({coarsest}: a step that fits)."""
    # opening a GRIB file parses it: each file is opened once, closed after its part is written
    opened = {} if opened is None else opened

    def handle(path: str) -> xr.Dataset:
        if path not in opened:
            opened[path] = open_source(path, storage_options)
        return opened[path]

    scanned = []  # (part, time_dim, times)
    for part in parts:
        path = part.files[0][0]
        ds = handle(path)
        dim = find_dim(ds, time_dim, TIME_DIMS, "time", path)
        if dim is None:
            raise DatasetError(f"{path}: no time dimension among {list(TIME_DIMS)}; "
                               f"pass --time-dim (dims: {list(ds.dims)})")
        times = np.asarray(ds[dim].values)
        if not (np.issubdtype(times.dtype, np.datetime64) or np.issubdtype(times.dtype, np.number)):
            raise DatasetError(f"{path}: time coordinate {dim!r} of dtype {times.dtype}")
        scanned.append((part, dim, times.astype("datetime64[s]") if times.dtype.kind == "M"
                        else times.astype(np.int64)))
    scanned.sort(key=lambda item: item[2][0])
    all_times = np.concatenate([times for _, _, times in scanned])
    owner = np.concatenate([np.full(len(times), k) for k, (_, _, times) in enumerate(scanned)])
    row = np.concatenate([np.arange(len(times)) for _, _, times in scanned])

    def locate(i: int) -> str:  # a stamp by its file and its index in that file
        return f"{scanned[owner[i]][0].files[0][0]}: time index {row[i]}"

    if every < 1:
        raise DatasetError(f"every={every}: must be >= 1")
    numeric = all_times.dtype.kind != "M"
    if ordinal:
        if time_step is not None:
            raise DatasetError("time_step and ordinal exclude each other: --time-step places "
                               "the stamps on a regular grid, --ordinal takes their order")
        check_increasing(all_times, locate)
        keep = np.arange(len(all_times)) % every == 0
        grid = all_times[keep]
        positions = np.full(len(all_times), -1, dtype=np.int64)
        positions[keep] = np.arange(len(grid))
        layout_step, layout_unit = every, "frame"
    else:
        native = infer_step(all_times) if time_step is None else parse_step(time_step, numeric)
        step = native * every
        origin = all_times[0]
        # with every > 1 only the stamps on the coarser grid are read; with every == 1 an
        # off-grid stamp is an error raised by regular_grid
        keep = ((all_times - origin) % step == (all_times - origin).dtype.type(0) if every > 1
                else np.ones(len(all_times), dtype=bool))
        kept = np.flatnonzero(keep)
        hint = off_grid_hint.format(coarsest=format_step(coarsest_step(all_times)))
        grid, kept_positions = regular_grid(all_times[kept], step, "",
                                            lambda i: locate(int(kept[i])), hint)
        if len(grid) > MAX_GRID_PER_STAMP * max(len(kept), 1) and len(grid) > 10_000:
            raise DatasetError(
                f"time step {format_step(step)} places {len(kept)} stamps on a grid of "
                f"{len(grid)} steps: choose a coarser --time-step (every stamp falls on "
                f"{format_step(coarsest_step(all_times))}) or --ordinal")
        positions = np.full(len(all_times), -1, dtype=np.int64)
        positions[kept] = kept_positions
        layout_step = int(step / np.timedelta64(1, "s")) if not numeric else int(step)
        layout_unit = "step" if numeric else "s"
    splits = _splits(grid, split_bounds)

    first_path, first_channels = scanned[0][0].files[0]
    ds = handle(first_path)
    array = _channel_array(ds, first_channels[0], scanned[0][1], level_dim, first_path)
    selection, lat, lon = resolve_region(ds, array, region or Region(), first_path)
    array = array.isel(selection) if selection else array
    height, width = array.shape[1:]
    units = [str(handle(path)[c.variable].attrs.get("units", ""))
             for path, part_channels in scanned[0][0].files for c in part_channels]
    metadata = {**metadata, "time_axis": "ordinal" if ordinal else "regular"}
    if region is not None:
        metadata["region"] = {"lat": region.lat, "lon": region.lon}
    layout = StoreLayout(
        time=grid, channels=[c.name for c in channels], units=units, height=height, width=width,
        splits=splits, metadata=metadata, time_step=layout_step, time_unit=layout_unit,
        lat=lat, lon=lon, chunk_frames=chunk_frames,
    )
    writer = create_store(dst, layout, overwrite=overwrite, storage_options=storage_options)
    start = 0
    for part, dim, times in scanned:
        part_all = positions[start : start + len(times)]
        start += len(times)
        rows = np.flatnonzero(part_all >= 0)
        part_positions = part_all[rows]
        handles = [(handle(path), path, chs) for path, chs in part.files]
        for ds, path, _ in handles[1:]:
            other = np.asarray(ds[dim].values)
            if len(other) != len(times) or np.any(other.astype(times.dtype) != times):
                raise DatasetError(f"{path}: time axis differs from {handles[0][1]}'s")
        for i in range(0, len(rows), BLOCK_STEPS):
            block_rows = rows[i : i + BLOCK_STEPS]
            pieces = []
            for ds, path, chs in handles:
                for channel in chs:
                    array = _channel_array(ds, channel, dim, level_dim, path, selection)
                    if array.shape[1:] != (height, width):
                        raise DatasetError(f"{path}: {channel.variable!r} grid {array.shape[1:]}"
                                           f", expected {(height, width)}")
                    pieces.append(array.isel({dim: _as_slice(block_rows)}).values
                                  .astype(np.float32))
            block = np.stack(pieces, axis=1)
            block_positions = part_positions[i : i + BLOCK_STEPS]
            source = f"{handles[0][1]} time rows {block_rows[0]}..{block_rows[-1]}"
            if nan_as_gap:
                finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
                block, block_positions = block[finite], block_positions[finite]
            writer.write_at(block_positions, block, source)
        for _, path, _ in handles:
            opened.pop(path).close()
    return writer.finish("zscore")


def _as_slice(rows: np.ndarray) -> slice | np.ndarray:
    """Evenly spaced rows as a slice: backends read a slice without a per-row gather."""
    steps = np.unique(np.diff(rows))
    if len(rows) == 1 or (len(steps) == 1 and steps[0] > 0):
        return slice(int(rows[0]), int(rows[-1]) + 1, int(steps[0]) if len(steps) else 1)
    return rows


def _splits(grid: np.ndarray, bounds: dict[str, tuple] | None) -> dict[str, tuple[int, int]]:
    """[start, stop) indices from {split: (first, end_exclusive)} time bounds, or 70/15/15."""
    n = len(grid)
    if bounds is None:
        return default_splits(n)
    out = {}
    for name, (low, high) in bounds.items():
        low = np.asarray(low).astype(grid.dtype) if low is not None else grid[0]
        a = int(np.searchsorted(grid, low, "left"))
        b = n if high is None else int(np.searchsorted(grid, np.asarray(high).astype(grid.dtype),
                                                       "left"))
        out[name] = (a, max(a, b))
    if out.get("train", (0, 0))[1] <= out.get("train", (0, 0))[0]:
        raise DatasetError(f"split bounds {bounds} leave the training split empty "
                           f"(data covers {grid[0]} .. {grid[-1]})")
    return out


def parse_bound(text: str | None, numeric: bool):
    """A split date ('2016-01-01') or, for integer time axes, a number."""
    if text is None:
        return None
    return np.int64(text) if numeric else np.datetime64(text, "s")


def convert_xarray(src: str | Sequence[str], dst: str | os.PathLike, *,
                   variables: Sequence[str], levels: Sequence[float] | None = None,
                   time_dim: str | None = None, level_dim: str | None = None,
                   val_start: str | None = None, test_start: str | None = None,
                   every: int = 1, time_step: str | None = None, ordinal: bool = False,
                   lat: str | tuple | None = None, lon: str | tuple | None = None,
                   nan_as_gap: bool = False, overwrite: bool = False,
                   chunk_frames: int | None = None, source: str = "", licence: str = "unknown",
                   citation: str = "unknown", storage_options: dict | None = None) -> Dataset:
    """Any data xarray opens (NetCDF, GRIB, Zarr): variables x levels become channels.

    src is one file / store, a glob or a list of them (one time period each).

    Splits: train before val_start, val before test_start, test after (dates, or numbers for a
    numeric time axis); without them 70/15/15 of the steps. An irregular time axis needs
    time_step ('1h': a grid every stamp falls on, missing steps invalid) or ordinal (the
    stamps' order is the frame sequence). lat / lon: 'LOW:HIGH' degrees (or a tuple)."""
    paths = [src] if isinstance(src, str) else list(src)
    if len(paths) == 1 and any(ch in paths[0] for ch in "*?["):
        paths = sorted(glob.glob(paths[0]))
    if not paths:
        raise DatasetError(f"{src}: matches no file")
    ds = open_source(paths[0], storage_options)
    channels = resolve_channels(ds, variables, levels, level_dim, paths[0])
    dim = find_dim(ds, time_dim, TIME_DIMS, "time", paths[0])
    numeric = dim is not None and ds[dim].dtype.kind != "M"
    bounds = None
    if val_start is not None or test_start is not None:
        val, test = parse_bound(val_start, numeric), parse_bound(test_start, numeric)
        val = test if val is None else val
        test = val if test is None else test
        bounds = {"train": (None, val), "val": (val, test), "test": (test, None)}
    metadata = {
        "converter": "xarray", "converter_version": CONVERTER_VERSION,
        "source": source or ", ".join(os.path.basename(p) for p in paths[:5]),
        "licence": licence, "citation": citation,
        "variables": list(variables), "levels": [float(v) for v in levels] if levels else None,
    }
    region = make_region(lat, lon)
    return write_parts([Part([(path, channels)]) for path in paths], dst, channels=channels,
                       split_bounds=bounds, metadata=metadata, time_dim=time_dim,
                       level_dim=level_dim, every=every, time_step=time_step, ordinal=ordinal,
                       region=region, nan_as_gap=nan_as_gap,
                       overwrite=overwrite, chunk_frames=chunk_frames,
                       storage_options=storage_options, opened={paths[0]: ds})
