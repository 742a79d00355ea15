"""Score a checkpoint on a split with Ray Data: the training job's metrics, per lead time and
overall, next to the persistence and climatology baselines, plus the model's cost.

Model actors (`map_batches`, CPU or GPU) turn each batch of windows into the exact metric sums
of `MetricAccumulator`; the driver adds them and divides once, so the numbers equal the training
job's validation metrics for the same split and checkpoint (to float64 summation order).

Climatology (baseline and ACC reference): WeatherBench 2's day-of-year (and hour-of-day)
climatology of the training split when it covers a year and the batches carry each window's
time index `t0`, else the training mean (`climatology="auto"`); metrics.json says which.
Protocols: "default" normalises every split with the store's training statistics (leak-free);
"openstl" normalises inputs and targets with the evaluated split's own z-score statistics, as
OpenSTL's weather loader does (spec/data.md 2.2), and de-normalises as its `metric()` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simvp_ray.analysis.evaluation import format_evaluation
from simvp_ray.config import to_dict
from simvp_ray.data.climatology import (
    day_of_year_climatology,
    resolve_climatology,
    split_stats,
    train_climatology,
)
from simvp_ray.data.normalization import Stats, normalize
from simvp_ray.data.ray_data import build_ray_datasets, count_split_windows
from simvp_ray.data.windows import window_offsets
from simvp_ray.distributed.actors import actor_options, load_model, model_state
from simvp_ray.distributed.cluster import ensure_ray, quiet_ray_data
from simvp_ray.distributed.cost import measure_cost
from simvp_ray.plan import open_checked
from simvp_ray.progress import Progress
from simvp_ray.reporting import data_faults_raised_plain
from simvp_ray.runs import storage_filesystem, write_json
from simvp_ray.train.checkpoint import ModelState, fetch_checkpoint
from simvp_ray.train.loop import speed_options
from simvp_ray.train.metrics import (
    MetricAccumulator,
    MetricContext,
    openstl_variables,
    persistence_forecast,
)
from simvp_ray.train.performance import autocast

FORECASTS = ("model", "persistence", "climatology")
PROTOCOLS = ("default", "openstl")
PROTOCOL_DEFINITIONS = {
    "default": "inputs and targets normalised with the training statistics",
    "openstl": "inputs and targets normalised with the evaluated split's own z-score statistics "
               "(OpenSTL's weather loader); *_phys de-normalise with the training statistics, or "
               "the split's own for multi-variable sets, as OpenSTL's metric()",
}
CLIMATOLOGY_DEFINITIONS = {
    "train_mean": "per-channel, per-pixel mean of the valid training frames",
    "day_of_year": "WeatherBench 2's day-of-year (and hour-of-day) climatology of the training "
                   "split, 61-day window, at each target frame's valid time",
}
METRICS_FILE, TABLE_FILE = "metrics.json", "metrics.md"


@dataclass(frozen=True, eq=False)
class ClimatologySetup:
    """The climatology forecast in evaluation (normalised) units: one static field, or a
    day-of-year table looked up at each target frame's valid time."""

    static: np.ndarray | None = None  # (C, H, W): the training mean
    table: np.ndarray | None = None  # (rows, C, H, W): the day-of-year (and hour) climatology
    rows: np.ndarray | None = None  # (steps,) the table row of each valid step of the split
    target_steps: np.ndarray | None = None  # (T_out,) each target's step after the first's

    def at(self, t0: np.ndarray | None, batch_size: int, out_frames: int) -> np.ndarray:
        """(B, T_out, C, H, W) climatology of a batch whose windows' targets start at `t0`."""
        if self.table is None:
            return np.broadcast_to(self.static, (batch_size, out_frames, *self.static.shape))
        if t0 is None:
            raise ValueError("a day-of-year climatology needs each window's time index: the "
                             "batches carry no t0")
        return self.table[self.rows[t0[:, None] + self.target_steps[None, :]]]


@dataclass(frozen=True, eq=False)
class ScoringSetup:
    """What every scoring actor and the driver share: the same accumulator layout of sums, the
    protocol's re-normalisation and the climatology forecast."""

    out_frames: int
    channels: int
    metrics: MetricContext
    # (a, b) per channel: x * a + b takes training-normalised to period-normalised values
    # (OpenSTL's protocol); None: the model's own normalisation
    renorm: list[list[float]] | None
    climatology: ClimatologySetup

    def accumulator(self, device: torch.device | str = "cpu") -> MetricAccumulator:
        return self.metrics.accumulator(self.out_frames, self.channels, device)


class WindowScorer:
    """map_batches actor: {"x", "y"} windows -> the metric sums of each forecast, one row."""

    def __init__(self, state: ModelState, setup: ScoringSetup, use_gpu: bool) -> None:
        self.model = load_model(state, use_gpu)
        self.device = next(self.model.parameters()).device
        self.options = speed_options(state.config)
        self.setup = setup
        # OpenSTL's protocol: x -> x * a + b turns training-normalised into period-normalised
        self.renorm = None if setup.renorm is None else [
            torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 1, -1, 1, 1)
            for v in setup.renorm]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # torch.tensor copies: Ray's batches are read-only views
        x = torch.tensor(batch["x"], dtype=torch.float32, device=self.device)
        y = torch.tensor(batch["y"], dtype=torch.float32, device=self.device)
        if self.renorm is not None:
            x, y = x * self.renorm[0] + self.renorm[1], y * self.renorm[0] + self.renorm[1]
        out_frames = self.setup.out_frames
        with torch.no_grad():
            with autocast(self.options, self.device):  # as the training loop's evaluate()
                pred = self.model(x)
        clim = torch.tensor(self.setup.climatology.at(batch.get("t0"), len(x), out_frames),
                            dtype=torch.float32, device=self.device)
        forecasts = {"model": pred.float(), "persistence": persistence_forecast(x, out_frames),
                     "climatology": clim}
        row = {"windows": np.array([len(x)])}
        for name, forecast in forecasts.items():
            accumulator = self.setup.accumulator(self.device)
            accumulator.update(forecast, y, climatology=clim)
            row[name] = accumulator.state().cpu().numpy()[None]  # (1, S) float64 sums
        return row


def protocol_stats(dataset, split: str, names: list[str], protocol: str
                   ) -> tuple[Stats, Stats]:
    """(statistics the model's inputs are normalised with, statistics the metrics de-normalise
    with) for `protocol`; a ValueError for a protocol the store cannot support."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    _, train = dataset.select(names)
    if protocol == "default":
        return train, train
    if train.kind != "zscore":
        raise ValueError(f"--protocol openstl re-normalises z-score (weather) stores per period; "
                         f"{dataset.url} is {train.kind} (OpenSTL scales Moving MNIST and TaxiBJ "
                         "with fixed constants, which is the default protocol already)")
    period = split_stats(dataset, split, names)
    # OpenSTL's metric() de-normalises with the train statistics, but with the period's own
    # for its multi-variable sets (the mv loader overwrites its mean / std)
    grouped = len(openstl_variables(names)) > 1
    return period, period if grouped else train


def renormalization(stored: Stats, wanted: Stats) -> list[list[float]] | None:
    """(a, b) per channel with x * a + b taking values normalised with `stored` to values
    normalised with `wanted`; None when they are the same."""
    if np.array_equal(stored.offset, wanted.offset) and np.array_equal(stored.scale, wanted.scale):
        return None
    return [(stored.scale / wanted.scale).tolist(),
            ((stored.offset - wanted.offset) / wanted.scale).tolist()]


def climatology_setup(dataset, names: list[str], split: str, kind: str, inputs: Stats,
                      target_steps: np.ndarray) -> ClimatologySetup:
    """The climatology forecast of `kind` for the split's windows, in evaluation units."""
    if kind == "train_mean":
        return ClimatologySetup(
            static=normalize(train_climatology(dataset, names).astype(np.float32), inputs))
    clim = day_of_year_climatology(dataset, names)
    table = clim.table.reshape(-1, *clim.table.shape[2:]).astype(np.float32)
    start, stop = dataset.split_range(split)
    rows = np.zeros(dataset.n_steps, np.int64)  # only valid steps of the split are looked up
    valid = start + np.flatnonzero(dataset.valid[start:stop])
    rows[valid] = clim.rows(dataset.time[valid])
    return ClimatologySetup(table=normalize(table, inputs), rows=rows, target_steps=target_steps)


def run_evaluation(checkpoint: str, *, split: str = "test", data: str | None = None,
                   out: str | None = None, num_actors: int = 1, use_gpu: bool = False,
                   batch_size: int | None = None, cost: bool = True, protocol: str = "default",
                   climatology: str = "auto") -> dict[str, Any]:
    """Evaluate `checkpoint` on `split` of its store (or `data`); writes metrics.json and
    metrics.md under `out` when given (a local folder or URL). Returns the metrics dict.
    protocol: "default" or "openstl"; climatology: "auto", "day_of_year" or "train_mean"."""
    fetched = fetch_checkpoint(checkpoint)
    config, dataset, names = open_checked(fetched, data)
    if split not in dataset.splits:
        raise ValueError(f"{dataset.url}: no split {split!r}; valid: {sorted(dataset.splits)}")
    inputs, denorm = protocol_stats(dataset, split, names, protocol)
    picked, train = dataset.select(names)
    clim_kind, clim_reason = resolve_climatology(dataset, climatology)
    ensure_ray(num_actors)
    quiet_ray_data()
    windows = build_ray_datasets(config.data, config.model, seed=config.train.seed)[split]
    if clim_kind == "day_of_year" and "t0" not in windows.schema().names:
        why = "the store's batches carry no window time index t0"
        if climatology == "day_of_year":
            raise ValueError(f"cannot use a day-of-year climatology: {why}")
        clim_kind, clim_reason = "train_mean", why
    offsets = window_offsets(config.model.in_frames, config.model.out_frames,
                             config.data.frame_step, config.data.frame_offsets or None)
    target = offsets[config.model.in_frames:]
    setup = ScoringSetup(
        config.model.out_frames, config.model.channels,
        MetricContext.from_dataset(dataset, names).with_stats(denorm),
        renorm=renormalization(train, inputs),
        climatology=climatology_setup(dataset, names, split, clim_kind, inputs,
                                      target - target[0]))
    scored = windows.map_batches(
        WindowScorer, fn_constructor_kwargs={"state": model_state(fetched.payload), "setup": setup,
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
        "checkpoint": fetched.url, "checkpoint_sha256": fetched.sha256,
        "epoch": fetched.payload.epoch, "data": config.data.url, "split": split,
        "windows": int(totals["windows"]), "channels": names,
        "units": [dataset.units[index] for index in picked],
        "out_frames": config.model.out_frames,
        "protocol": protocol,
        "protocol_definition": PROTOCOL_DEFINITIONS[protocol],
        "climatology_kind": clim_kind, "climatology_reason": clim_reason,
        "climatology_definition": CLIMATOLOGY_DEFINITIONS[clim_kind],
        "latitude_weighted": dataset.lat is not None,
    }
    if protocol == "openstl":
        results["period_stats"] = {"mean": inputs.offset.tolist(), "std": inputs.scale.tolist()}
    for name in FORECASTS:
        accumulator = setup.accumulator()
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
    prefix = out.rstrip("/") + "/"
    files = {"metrics": prefix + METRICS_FILE, "table": prefix + TABLE_FILE}
    write_json(files["metrics"], results)
    fs, path = storage_filesystem(files["table"])
    with fs.open(path, "w") as stream:
        stream.write(format_evaluation(results) + "\n")
    return files
