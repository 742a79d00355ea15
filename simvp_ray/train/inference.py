"""Rebuild a model from a checkpoint payload and predict numpy windows with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simvp_ray.config import RunConfig
from simvp_ray.data import Dataset, denormalize, read_windows, window_starts
from simvp_ray.models import build_model
from simvp_ray.models.openstl import load_checked
from simvp_ray.train.checkpoint import CheckpointPayload, ModelState


def model_from_checkpoint(payload: CheckpointPayload | ModelState,
                          device: str | torch.device = "cpu") -> torch.nn.Module:
    """The eval-mode model a checkpoint payload (or its `ModelState`) describes, with its
    weights."""
    model = build_model(payload.config.model)
    load_checked(model, payload.model)
    return model.to(device).eval()


def predict_numpy(model: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, T_in, C, H, W) float32 -> (N, T_out, C, H, W), in the model's (normalised) units."""
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))
            outputs.append(model(batch.to(device)).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def forecast_window(payload: CheckpointPayload | ModelState, config: RunConfig, dataset: Dataset,
                    channels: list[str], split: str = "val", index: int | None = None
                    ) -> dict[str, Any]:
    """One window of `split` (default: the middle one) and the checkpoint's forecast of it, in
    physical units: x (T_in, C, H, W), y and pred (T_out, C, H, W), and the window's index and
    first step. `config` reads `dataset` (its window: frames, step, offsets)."""
    model, window = config.model, config.data
    offsets = list(window.frame_offsets) or None
    starts = window_starts(dataset, split, model.in_frames, model.out_frames,
                           window.frame_step, offsets=offsets)
    if len(starts) == 0:
        raise ValueError(f"{dataset.url}: split {split!r} holds no whole window")
    index = len(starts) // 2 if index is None else index
    if not 0 <= index < len(starts):
        raise ValueError(f"--index {index}: split {split!r} has windows 0 .. {len(starts) - 1}")
    read = {normalized: read_windows(dataset, starts[index:index + 1], model.in_frames,
                                     model.out_frames, window.frame_step, offsets=offsets,
                                     channels=channels, normalized=normalized)
            for normalized in (True, False)}
    _, stats = dataset.select(channels)
    pred = denormalize(predict_numpy(model_from_checkpoint(payload), read[True]["x"]), stats)
    return {"x": read[False]["x"][0], "y": read[False]["y"][0], "pred": pred[0],
            "index": index, "start": int(starts[index])}
