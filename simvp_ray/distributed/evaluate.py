"""Score a checkpoint on a split with Ray Data: the training job's metrics, per lead time and
overall, next to the persistence and climatology baselines, plus the model's cost.

Model actors (`map_batches`, CPU or GPU) turn each batch of windows into the exact metric sums
of `MetricAccumulator`; the driver adds them and divides once, so the numbers equal the training
job's validation metrics for the same split and checkpoint (to float64 summation order).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import numpy as np
import torch

from simvp_ray.analysis.evaluation import format_evaluation
from simvp_ray.config import to_dict
from simvp_ray.data.climatology import train_climatology
from simvp_ray.data.normalization import normalize
from simvp_ray.data.ray_data import build_ray_datasets, count_split_windows
from simvp_ray.distributed.batch_inference import (
    actor_options,
    fetch_checkpoint,
    load_model,
    model_state,
    open_checked,
)
from simvp_ray.distributed.cost import measure_cost
from simvp_ray.distributed.trainer import ensure_ray, quiet_ray_data
from simvp_ray.progress import Progress
from simvp_ray.reporting import data_faults_raised_plain
from simvp_ray.train.loop import speed_options
from simvp_ray.train.metrics import (
    MetricAccumulator,
    climatology_forecast,
    latitude_weights,
    persistence_forecast,
)
from simvp_ray.train.performance import autocast

FORECASTS = ("model", "persistence", "climatology")
METRICS_FILE, TABLE_FILE = "metrics.json", "metrics.md"


def build_accumulator(setup: dict[str, Any], device: torch.device | str = "cpu"
                      ) -> MetricAccumulator:
    """The accumulator every actor and the driver share (same layout of sums)."""
    lat = setup["lat"]
    return MetricAccumulator(
        setup["out_frames"], setup["channels"], mean=setup["mean"], std=setup["std"],
        channel_names=setup["channel_names"],
        lat_weights=None if lat is None else latitude_weights(lat),
        climatology=torch.tensor(setup["climatology"]), device=device)


class WindowScorer:
    """map_batches actor: {"x", "y"} windows -> the metric sums of each forecast, one row."""

    def __init__(self, state: dict[str, Any], setup: dict[str, Any], use_gpu: bool) -> None:
        self.model = load_model(state, use_gpu)
        self.device = next(self.model.parameters()).device
        self.options = speed_options(state["config"])
        self.setup = setup
        self.climatology = torch.tensor(setup["climatology"], dtype=torch.float32,
                                        device=self.device)  # (C, H, W) normalised

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # torch.tensor copies: Ray's batches are read-only views
        x = torch.tensor(batch["x"], dtype=torch.float32, device=self.device)
        y = torch.tensor(batch["y"], dtype=torch.float32, device=self.device)
        out_frames = self.setup["out_frames"]
        with torch.no_grad():
            with autocast(self.options, self.device):  # as the training loop's evaluate()
                pred = self.model(x)
        forecasts = {"model": pred.float(), "persistence": persistence_forecast(x, out_frames),
                     "climatology": climatology_forecast(self.climatology, len(x), out_frames)}
        row = {"windows": np.array([len(x)])}
        for name, forecast in forecasts.items():
            accumulator = build_accumulator(self.setup, self.device)
            accumulator.update(forecast, y)
            row[name] = accumulator.state().cpu().numpy()[None]  # (1, S) float64 sums
        return row


def run_evaluation(checkpoint: str, *, split: str = "test", data: str | None = None,
                   out: str | None = None, num_actors: int = 1, use_gpu: bool = False,
                   batch_size: int | None = None, cost: bool = True) -> dict[str, Any]:
    """Evaluate `checkpoint` on `split` of its store (or `data`); writes metrics.json and
    metrics.md under `out` when given (a local folder or URL). Returns the metrics dict."""
    payload = fetch_checkpoint(checkpoint)
    config, dataset, names = open_checked(payload, data)
    if split not in dataset.splits:
        raise ValueError(f"{dataset.url}: no split {split!r}; valid: {sorted(dataset.splits)}")
    picked = [dataset.channels.index(name) for name in names]
    stats = dataset.stats
    climatology = train_climatology(dataset, names)
    setup = {
        "out_frames": config.model.out_frames, "channels": config.model.channels,
        "mean": stats.offset[picked].tolist(), "std": stats.scale[picked].tolist(),
        "channel_names": names, "lat": None if dataset.lat is None else dataset.lat.tolist(),
        "climatology": normalize(climatology.astype(np.float32),
                                 stats.select(picked)).astype(np.float64),
    }
    ensure_ray(num_actors)
    quiet_ray_data()
    windows = build_ray_datasets(config.data, config.model, seed=config.train.seed)[split]
    scored = windows.map_batches(
        WindowScorer, fn_constructor_kwargs={"state": model_state(payload), "setup": setup,
                                             "use_gpu": use_gpu},
        batch_size=batch_size or config.data.val_batch_size, batch_format="numpy",
        **actor_options(num_actors, use_gpu))
    totals: dict[str, Any] = {}
    with Progress(f"evaluating on {split}", count_split_windows(config.data, config.model, split),
                  "windows") as progress, data_faults_raised_plain():
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for key, values in batch.items():
                totals[key] = totals.get(key, 0) + values.sum(axis=0)
            progress.add(int(batch["windows"].sum()))
    results: dict[str, Any] = {
        "checkpoint": payload["url"], "checkpoint_sha256": payload["sha256"],
        "epoch": payload["epoch"], "data": config.data.url, "split": split,
        "windows": int(totals["windows"]), "channels": names,
        "units": [dataset.units[i] for i in picked],
        "out_frames": config.model.out_frames,
        "climatology_definition": "per-channel, per-pixel mean of the valid training frames",
        "latitude_weighted": dataset.lat is not None,
    }
    for name in FORECASTS:
        accumulator = build_accumulator(setup)
        accumulator.load_state(torch.from_numpy(totals[name]))
        results[name] = accumulator.compute()
    if cost:
        results["cost"] = measure_cost(config, use_gpu)
    results["config"] = to_dict(config)
    if out:
        results["files"] = write_evaluation(results, out)
    return results


def write_evaluation(results: dict[str, Any], out: str) -> dict[str, str]:
    """metrics.json and metrics.md (the Markdown tables) into a local folder or URL."""
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    prefix = out.rstrip("/") + "/"
    files = {"metrics": prefix + METRICS_FILE, "table": prefix + TABLE_FILE}
    with fs.open(f"{root.rstrip('/')}/{METRICS_FILE}", "w") as stream:
        json.dump(results, stream, indent=2)
    with fs.open(f"{root.rstrip('/')}/{TABLE_FILE}", "w") as stream:
        stream.write(format_evaluation(results) + "\n")
    return files
