"""Check a store against the schema, chunk by chunk, and summarise it for people.

`validate_store` raises DatasetError naming the array, chunk or time index at fault.
"""

from __future__ import annotations

import numpy as np

from simvp_ray.data import schema
from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import StoreSource, open_dataset


def gap_runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of invalid steps."""
    padded = np.concatenate([[False], ~valid, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _check_chunks(frames, valid: np.ndarray, where: str) -> None:
    chunk = frames.chunks[0]
    for index, a in enumerate(range(0, frames.shape[0], chunk)):
        b = min(a + chunk, frames.shape[0])
        key = f"{where}/{schema.FRAMES}/c/{index}/0/0/0"
        try:
            block = frames[a:b]
        except RuntimeError as error:  # codec failure: truncated or corrupt chunk bytes
            raise DatasetError(f"{key}: unreadable chunk (steps {a}..{b - 1}): {error}") from error
        finite = np.isfinite(block).reshape(b - a, -1).all(axis=1)
        bad = np.flatnonzero(valid[a:b] & ~finite)
        if len(bad):
            raise DatasetError(f"{key}: NaN or inf (or a missing chunk) at valid time index "
                               f"{a + int(bad[0])}")


def validate_store(source: StoreSource, *, check_data: bool = True,
                   storage_options: dict | None = None) -> str:
    """Validate a store; return a multi-line summary, or raise DatasetError on a problem."""
    dataset = open_dataset(source, storage_options)
    where, attrs = dataset.url, dataset.attrs
    frames, valid, time = dataset.frames, dataset.valid, dataset.time
    if not np.all(np.diff(time.astype(np.int64)) > 0):
        raise DatasetError(f"{where}/{schema.TIME}: not strictly increasing")
    stats = attrs["normalization"]
    for key, values in stats.items():
        if isinstance(values, list) and not np.all(np.isfinite(values)):
            raise DatasetError(f"{where}: normalization {key} is not finite: {values}")
    if check_data:
        _check_chunks(frames, valid, where)
    gaps = gap_runs(valid)
    lines = [
        f"store      {where} (schema {attrs['schema']} v{attrs['schema_version']}, "
        f"converter {attrs['converter']} v{attrs['converter_version']})",
        f"frames     shape {frames.shape} chunks {frames.chunks} {frames.dtype}",
        f"channels   {', '.join(f'{c} [{u}]' for c, u in zip(attrs['channels'], attrs['units']))}",
        f"time       {time[0]} .. {time[-1]}, step {attrs['time_step']} {attrs['time_unit']}"
        + (" (ordinal: frames in stamp order, `time` irregular)"
           if attrs.get("time_axis") == "ordinal" else ""),
        "splits     " + ", ".join(f"{name} [{a}, {b}) {int(valid[a:b].sum())} valid"
                                  for name, (a, b) in attrs["splits"].items()),
        f"stats      {stats}",
        f"gaps       {len(gaps)} runs, {int((~valid).sum())} invalid steps"
        + (f"; first at {gaps[0][0]} ({time[gaps[0][0]]})" if gaps else ""),
        f"source     {attrs['source']}",
        f"licence    {attrs['licence']}",
        f"data       {'all chunks read, valid steps finite' if check_data else 'not scanned'}",
    ]
    return "\n".join(lines)
