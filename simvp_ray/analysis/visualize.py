"""Pictures of one forecast, from a forecast store (`jobs/predict.py`) or from a checkpoint.

A forecast store gives the forecast of one init time, with its inputs and targets read from the
store it was made from (targets past the data's end are blank); a checkpoint forecasts one
window of a split of its store. Both write a PNG panel and an animated GIF, in physical units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simvp_ray.analysis.panels import plot_forecast_panel, save_forecast_gif
from simvp_ray.config import RunConfig, from_dict
from simvp_ray.data import open_dataset
from simvp_ray.data.forecasts import is_forecast_store, open_forecasts, parse_time
from simvp_ray.data.windows import input_and_lead_steps
from simvp_ray.plan import open_checked
from simvp_ray.train.checkpoint import fetch_checkpoint
from simvp_ray.train.inference import forecast_window


def _frames_at(dataset, steps: np.ndarray, picked: list[int]) -> np.ndarray:
    """Physical frames at step indices, NaN for steps outside the store or not valid."""
    height, width = dataset.frames.shape[2:]
    out = np.full((len(steps), len(picked), height, width), np.nan, np.float32)
    for k, step in enumerate(steps.tolist()):
        if 0 <= step < dataset.n_steps and dataset.valid[step]:
            out[k] = dataset.frames[step][picked]
    return out


def forecast_store_sample(url: str, init: str | None, data: str | None) -> dict[str, Any]:
    """Inputs, targets and the stored forecast of one init time (default: the middle valid)."""
    forecasts = open_forecasts(url)
    store = forecasts.dataset
    if init is None:
        valid = np.flatnonzero(store.valid)
        if len(valid) == 0:
            raise ValueError(f"{url}: holds no valid forecast")
        index = int(valid[len(valid) // 2])
    else:
        wanted = parse_time(init, store)
        index = int(np.searchsorted(store.time, wanted))
        if index >= len(store.time) or store.time[index] != wanted or not store.valid[index]:
            raise ValueError(f"{url}: no forecast initialised at {init}; forecasts run "
                             f"{store.time[0]} .. {store.time[-1]} every "
                             f"{store.attrs['time_step']} {store.attrs['time_unit']}")
    config = from_dict(RunConfig, forecasts.info["request"]["config"])
    source = open_dataset(data or forecasts.info["source_store"])
    picked, _ = source.select(forecasts.variables)
    step = int(np.searchsorted(source.time, store.time[index]))
    inputs, leads = input_and_lead_steps(config)
    return {
        "x": _frames_at(source, step - inputs[-1] + inputs, picked),
        "y": _frames_at(source, step + leads, picked),
        "pred": forecasts.forecast_array(index)[0],
        "channels": forecasts.variables, "units": forecasts.units,
        "lat": source.lat, "lon": source.lon,
        "label": f"forecast initialised {store.time[index]}",
    }


def checkpoint_sample(url: str, split: str, index: int | None, data: str | None
                      ) -> dict[str, Any]:
    """One window of a split (default: the middle one) and the checkpoint's forecast of it."""
    fetched = fetch_checkpoint(url)
    config, dataset, names = open_checked(fetched, data)
    sample = forecast_window(fetched.payload, config, dataset, names, split, index)
    return {**sample, "channels": names,
            "units": [dataset.units[i] for i in dataset.select(names)[0]],
            "lat": dataset.lat, "lon": dataset.lon,
            "label": f"{split} window {sample['index']}, starting "
                     f"{dataset.time[sample['start']]}, epoch {fetched.payload.epoch + 1}"}


def render_pictures(url: str, out: str | Path, *, init: str | None = None, split: str = "val",
                    index: int | None = None, channel: str | None = None,
                    data: str | None = None, gif: bool = True) -> dict[str, str]:
    """panel.png (and forecast.gif) of one forecast into the folder `out`; returns the paths."""
    sample = (forecast_store_sample(url, init, data) if is_forecast_store(url)
              else checkpoint_sample(url, split, index, data))
    names = sample["channels"]
    name = channel or names[0]
    if name not in names:
        raise ValueError(f"--channel {name!r}: valid: {names}")
    c = names.index(name)
    units = sample["units"][c]
    style = {"channel": c, "channel_name": name, "units": units, "lat": sample["lat"],
             "lon": sample["lon"], "title": f"{name} [{units}]: {sample['label']}"}
    out = Path(out)
    files = {"panel": str(plot_forecast_panel(sample["x"], sample["y"], sample["pred"],
                                              out / "panel.png", **style))}
    if gif:
        files["gif"] = str(save_forecast_gif(sample["x"], sample["y"], sample["pred"],
                                             out / "forecast.gif", **style))
    return files
