"""WeatherBench (5.625 deg) converter: per-variable, per-year NetCDF files -> a store.

OpenSTL's settings (spec/data.md 2.2) as presets: t2m / r / uv10 / tcc (hourly, 2010-2015 /
2016 / 2017-2018) and mv / mv5 (variables x levels 150, 500, 850 hPa, 6-hourly, 1979-2015 train).
Done right where the reference is wrong: the last hour of a period is kept, 2016 is the
validation split (OpenSTL validates on the test years), and `g` / `t850` read the variable
actually in their files (`z`, `t`), not the key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simvp_ray.data.schema import DatasetError
from simvp_ray.data.store import Dataset
from simvp_ray.data.xarray_source import (
    Channel,
    Part,
    make_region,
    open_source,
    resolve_channels,
    write_parts,
)

CONVERTER_VERSION = "1"
# OpenSTL data_map: key -> folder
FOLDERS = {
    "t2m": "2m_temperature", "u10": "10m_u_component_of_wind",
    "v10": "10m_v_component_of_wind", "tcc": "total_cloud_cover", "tp": "total_precipitation",
    "r": "relative_humidity", "t": "temperature", "u": "u_component_of_wind",
    "v": "v_component_of_wind", "z": "geopotential_500", "g": "geopotential",
    "t850": "temperature_850",
}
# the short name inside the files where it differs from the key (OpenSTL's bug: it uses the key)
FILE_VARIABLES = {"g": "z", "t850": "t"}
MV_LEVELS = (150.0, 500.0, 850.0)
PRESETS = {
    "t2m": {"keys": ["t2m"], "levels": None, "train": (2010, 2015), "every": 1},
    "r": {"keys": ["r"], "levels": None, "train": (2010, 2015), "every": 1},
    "uv10": {"keys": ["u10", "v10"], "levels": None, "train": (2010, 2015), "every": 1},
    "tcc": {"keys": ["tcc"], "levels": None, "train": (2010, 2015), "every": 1},
    "mv": {"keys": ["r", "t", "u", "v"], "levels": MV_LEVELS, "train": (1979, 2015), "every": 6},
    "mv5": {"keys": ["g", "r", "t", "u", "v"], "levels": MV_LEVELS, "train": (1979, 2015),
            "every": 6},
}
VAL_YEARS = (2016, 2016)
TEST_YEARS = (2017, 2018)
METADATA = {
    "converter": "weatherbench", "converter_version": CONVERTER_VERSION,
    "licence": "MIT (WeatherBench); contains modified Copernicus Climate Change Service "
               "information (ERA5)",
    "citation": "Rasp et al. WeatherBench: A benchmark data set for data-driven weather "
                "forecasting. JAMES 12, 2020",
}


def year_file(root: Path, key: str, year: int, resolution: str) -> Path:
    """<root>/<folder>/<folder>_<year>_<resolution>.nc (also under weather_<resolution>/)."""
    if key not in FOLDERS:
        raise DatasetError(f"unknown WeatherBench variable {key!r}; valid: {sorted(FOLDERS)}")
    folder = FOLDERS[key]
    for base in (root, root / f"weather_{resolution}", root / "weather"):
        path = base / folder / f"{folder}_{year}_{resolution}.nc"
        if path.exists():
            return path
    raise DatasetError(f"{root}: missing {folder}/{folder}_{year}_{resolution}.nc")


def parse_years(text: str) -> tuple[int, int]:
    """'2010-2015' or '2016' -> (first, last) year, both included."""
    first, _, last = text.partition("-")
    if not (first.isdigit() and (not last or last.isdigit())):
        raise DatasetError(f"year span {text!r}: expected YYYY or YYYY-YYYY")
    return int(first), int(last or first)


def _years(span: tuple[int, int]) -> list[int]:
    return list(range(span[0], span[1] + 1))


def convert_weatherbench(src: str | os.PathLike, dst: str | os.PathLike, *,
                         preset: str = "t2m", keys: Sequence[str] | None = None,
                         levels: Sequence[float] | None = None,
                         train_years: tuple[int, int] | None = None,
                         val_years: tuple[int, int] = VAL_YEARS,
                         test_years: tuple[int, int] = TEST_YEARS, every: int | None = None,
                         resolution: str = "5.625deg", lat: str | tuple | None = None,
                         lon: str | tuple | None = None, overwrite: bool = False,
                         chunk_frames: int | None = None,
                         storage_options: dict | None = None) -> Dataset:
    """WeatherBench 5.625 deg per-variable, per-year NetCDF files, with OpenSTL's presets.

    keys / levels / years / every override the preset; lat / lon ('LOW:HIGH' degrees) select a
    region (longitudes wrap: -30:30 crosses Greenwich on the 0..354.375 grid). Channels: each
    key in turn, its levels in the order given; single-level keys give one channel; `r` without
    levels keeps only its last level (1000 hPa) as OpenSTL does."""
    if preset not in PRESETS:
        raise DatasetError(f"unknown WeatherBench preset {preset!r}; valid: {sorted(PRESETS)}")
    settings = PRESETS[preset]
    keys = list(keys or settings["keys"])
    levels = levels if levels is not None else settings["levels"]
    train_years = train_years or settings["train"]
    every = every or settings["every"]
    root = Path(src)
    years = sorted(set(_years(train_years) + _years(val_years) + _years(test_years)))
    channels_by_key: dict[str, list[Channel]] = {}
    for key in keys:
        path = year_file(root, key, years[0], resolution)
        with open_source(str(path)) as ds:
            found = resolve_channels(ds, [FILE_VARIABLES.get(key, key)], levels, None, str(path),
                                     last_level=levels is None)
        channels_by_key[key] = [
            Channel(c.variable, c.level, key if c.level is None else f"{key}_{c.level:g}")
            for c in found
        ]
    parts = [Part([(str(year_file(root, key, year, resolution)), channels_by_key[key])
                   for key in keys]) for year in years]

    def bounds(span: tuple[int, int]) -> tuple[np.datetime64, np.datetime64]:
        return np.datetime64(f"{span[0]}-01-01", "s"), np.datetime64(f"{span[1] + 1}-01-01", "s")

    metadata = {
        **METADATA, "source": f"WeatherBench {resolution} NetCDF, keys {keys}, years "
                              f"{years[0]}-{years[-1]}",
        "preset": preset, "keys": keys, "every_hours": every,
        "split_years": {"train": list(train_years), "val": list(val_years),
                        "test": list(test_years)},
    }
    return write_parts(
        parts, dst, channels=[c for key in keys for c in channels_by_key[key]],
        split_bounds={"train": bounds(train_years), "val": bounds(val_years),
                      "test": bounds(test_years)},
        metadata=metadata, time_dim="time", level_dim=None, every=every,
        region=make_region(lat, lon),
        time_step=np.timedelta64(3600, "s"), overwrite=overwrite, chunk_frames=chunk_frames,
        storage_options=storage_options,
        off_grid_hint=" (WeatherBench files are hourly; for other files use the xarray converter)",
    )
