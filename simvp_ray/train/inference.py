"""Rebuild a model from a checkpoint payload and predict numpy windows with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simvp_ray.models import build_model
from simvp_ray.models.openstl import load_checked


def model_from_checkpoint(payload: dict[str, Any], device: str | torch.device = "cpu"
                          ) -> torch.nn.Module:
    """The eval-mode model a `load_checkpoint` payload describes, with its weights."""
    model = build_model(payload["config"].model)
    load_checked(model, payload["model"])
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
