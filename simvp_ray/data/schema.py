"""The one store schema every dataset follows (datasets/README.md is its prose twin).

Names, the schema version, the chunking rule and the metadata checks live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SCHEMA_NAME = "simvp_ray.dataset"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

# array names inside the group
FRAMES = "frames"  # (time, channel, y, x) float32, NaN where a step is not valid
TIME = "time"  # (time,) datetime64[s] or int64 step numbers
VALID = "valid"  # (time,) bool: the step holds a real, finite frame
LAT = "lat"  # (y,) float64, optional
LON = "lon"  # (x,) float64, optional
EXTERNAL = "external"  # optional subgroup of per-step side arrays (TaxiBJ holidays, meteorology)

SPLIT_NAMES = ("train", "val", "test")
NORMALIZATION_KINDS = ("zscore", "minmax")
REQUIRED_ATTRS = (
    "schema",
    "schema_version",
    "complete",
    "converter",
    "converter_version",
    "source",
    "licence",
    "citation",
    "channels",
    "units",
    "splits",
    "normalization",
    "time_step",
    "time_unit",
)

# ~1 MiB of float32 per chunk: one chunk is a cheap S3 GET, yet a random 8-frame TaxiBJ
# window (8 KiB frames, 128-frame chunks) touches at most two chunks.
TARGET_CHUNK_BYTES = 1 << 20
MAX_CHUNK_FRAMES = 512


DEFAULT_SPLIT_FRACTIONS = (0.7, 0.85)  # train / val / test = 70 / 15 / 15 % of the steps


def default_splits(n_steps: int) -> dict[str, tuple[int, int]]:
    """Contiguous train / val / test ranges when a dataset brings no split of its own."""
    a, b = (int(round(f * n_steps)) for f in DEFAULT_SPLIT_FRACTIONS)
    return {"train": (0, a), "val": (a, b), "test": (b, n_steps)}


class DatasetError(ValueError):
    """Bad input or a broken store; the message names the file, array, chunk or time index."""


class CorruptChunkError(DatasetError):
    """A chunk of a store failed to decode (its checksum or compression is broken): a fault of
    the data, the same on every retry, so a run stops at once and names the chunk."""



def chunk_frames_for(channels: int, height: int, width: int) -> int:
    """Frames per `frames` chunk: the largest power of two within TARGET_CHUNK_BYTES (>= 1)."""
    frame_bytes = 4 * channels * height * width
    frames = max(1, TARGET_CHUNK_BYTES // frame_bytes)
    return min(MAX_CHUNK_FRAMES, 1 << (frames.bit_length() - 1))


def check_attrs(attrs: Mapping[str, Any], where: str) -> None:
    """Raise DatasetError when the group attributes do not follow this schema."""
    if attrs.get("schema") != SCHEMA_NAME:
        raise DatasetError(f"{where}: not a {SCHEMA_NAME} store "
                           f"(attribute schema={attrs.get('schema')!r})")
    version = attrs.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise DatasetError(f"{where}: unknown schema_version {version!r}; this code reads "
                           f"{list(SUPPORTED_SCHEMA_VERSIONS)}")
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise DatasetError(f"{where}: missing attributes {missing}")
    if len(attrs["channels"]) != len(attrs["units"]):
        raise DatasetError(f"{where}: {len(attrs['channels'])} channel names but "
                           f"{len(attrs['units'])} units")
    unknown = sorted(set(attrs["splits"]) - set(SPLIT_NAMES))
    if unknown or not attrs["splits"]:
        raise DatasetError(f"{where}: split names {sorted(attrs['splits'])}; "
                           f"valid: {list(SPLIT_NAMES)}")
    kind = attrs["normalization"].get("kind") if attrs["normalization"] else None
    if attrs["complete"] and kind not in NORMALIZATION_KINDS:
        raise DatasetError(f"{where}: normalization kind {kind!r}; "
                           f"valid: {list(NORMALIZATION_KINDS)}")
