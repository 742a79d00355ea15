"""Batch inference over a time range with Ray Data, written to a forecast store (Zarr).

The work items are the store's chunks of init times that are not done yet; a pool of model
actors (`map_batches`, CPU or GPU) reads each chunk's input windows, predicts, denormalises and
writes the chunk itself, then marks it done (`simvp_ray.data.forecasts`). A rerun of the same
request skips done chunks, so an interrupted run resumes and a finished one returns at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray.data

from simvp_ray.config import to_dict
from simvp_ray.data import open_dataset, read_windows
from simvp_ray.data.forecasts import (
    ForecastLayout,
    ForecastStore,
    create_forecast_store,
    init_indices,
)
from simvp_ray.data.normalization import denormalize
from simvp_ray.data.windows import input_and_lead_steps
from simvp_ray.distributed.actors import actor_options, load_model, model_state
from simvp_ray.distributed.cluster import ensure_ray, quiet_ray_data
from simvp_ray.plan import open_checked
from simvp_ray.progress import Progress
from simvp_ray.reporting import data_faults_raised_plain
from simvp_ray.train.checkpoint import ModelState, fetch_checkpoint
from simvp_ray.train.inference import predict_numpy


class ChunkForecaster:
    """map_batches actor: {"chunk": ids} -> writes each chunk's forecasts, returns counts."""

    def __init__(self, state: ModelState, store_url: str, source_url: str,
                 channels: list[str], init_steps: list[int], use_gpu: bool,
                 batch_size: int) -> None:
        self.model = load_model(state, use_gpu)
        self.config = state.config
        self.store = ForecastStore(store_url)
        self.source = open_dataset(source_url)
        self.channels = channels
        self.init_steps = np.asarray(init_steps, np.int64)
        self.inputs, leads = input_and_lead_steps(self.config)
        self.num_leads = len(leads)
        self.batch_size = batch_size
        _, self.stats = self.source.select(channels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        made = []
        for chunk in batch["chunk"].tolist():
            a, b = self.store.chunk_range(chunk)
            starts = self.init_steps[a:b] - self.inputs[-1]  # window starts, all >= 0
            ok = self.source.valid[starts[:, None] + self.inputs[None, :]].all(axis=1)
            height, width = self.source.frames.shape[2:]
            out = np.full((b - a, self.num_leads, len(self.channels), height, width), np.nan,
                          np.float32)
            if ok.any():
                x = read_windows(self.source, starts[ok], len(self.inputs), 0,
                                 offsets=self.inputs.tolist(), channels=self.channels)["x"]
                out[ok] = denormalize(predict_numpy(self.model, x, self.batch_size),
                                      self.stats)  # (n, T_out, C, H, W) physical
            self.store.write_chunk(chunk, out, ok)
            made.append(int(ok.sum()))
        return {"chunk": batch["chunk"], "forecasts": np.asarray(made, np.int64)}


def run_prediction(checkpoint: str, *, start: str, end: str, out: str, data: str | None = None,
                   every: int = 1, overwrite: bool = False, num_actors: int = 1,
                   use_gpu: bool = False, batch_size: int = 32) -> dict[str, Any]:
    """Forecasts of every init time in [start, end] (every `every`-th step) into the forecast
    store `out`; returns a summary (chunks written and skipped, forecasts made)."""
    fetched = fetch_checkpoint(checkpoint)
    config, dataset, names = open_checked(fetched, data)
    inputs, leads = input_and_lead_steps(config)
    init_steps = init_indices(dataset, start, end, inputs, every)
    request = {
        "checkpoint": fetched.url, "checkpoint_sha256": fetched.sha256,
        "checkpoint_epoch": fetched.payload.epoch, "config": to_dict(config),
        "source": dataset.url, "channels": names,
        "init_start": str(dataset.time[init_steps[0]]),
        "init_end": str(dataset.time[init_steps[-1]]), "every": every,
    }
    store = create_forecast_store(out, ForecastLayout(dataset, init_steps, leads, names, request),
                                  overwrite=overwrite)
    pending = store.pending()
    made = 0
    if pending:
        ensure_ray(num_actors)
        quiet_ray_data()
        chunks = ray.data.from_items([{"chunk": chunk} for chunk in pending])
        written = chunks.map_batches(
            ChunkForecaster, fn_constructor_kwargs={
                "state": model_state(fetched.payload), "store_url": out, "source_url": dataset.url,
                "channels": names, "init_steps": init_steps.tolist(), "use_gpu": use_gpu,
                "batch_size": batch_size},
            batch_size=1, batch_format="numpy", **actor_options(num_actors, use_gpu))
        with Progress(f"predicting into {out}", len(pending), "chunks") as progress, \
                data_faults_raised_plain():
            for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
                made += int(batch["forecasts"].sum())
                progress.add(len(batch["forecasts"]))
    result = store.finish()
    return {"url": out, "init_times": len(init_steps), "first": request["init_start"],
            "last": request["init_end"], "leads": result.group["lead"][:].tolist(),
            "lead_unit": result.attrs["time_unit"], "chunks": store.num_chunks,
            "chunks_written": len(pending), "chunks_skipped": store.num_chunks - len(pending),
            "forecasts_made": made, "valid": int(result.valid.sum())}
