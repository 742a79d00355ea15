"""The presets' cost table (translator or recurrent method, input shape, params, GFLOPs,
samples/s) as Markdown."""

from __future__ import annotations

from collections.abc import Iterable

from simvp_ray.config import RunConfig
from simvp_ray.models.profile import profile


def cost_rows(configs: Iterable[RunConfig], measure: bool = True, batch_size: int = 4,
              iters: int = 3) -> list[dict]:
    rows = []
    for config in configs:
        model = config.model
        cost = profile(model, device="cpu", batch_size=batch_size, iters=iters, measure=measure)
        rows.append({
            "preset": config.name,
            "translator": model.translator if model.method == "simvp" else model.method,
            "input": f"{model.in_frames}x{model.channels}x{model.height}x{model.width}",
            "params_M": cost["params"] / 1e6,
            "GFLOPs": cost["flops"] / 1e9,
            "fwd_samples_per_s": cost.get("forward_samples_per_s"),
            "train_samples_per_s": cost.get("train_samples_per_s"),
        })
    return rows


def format_cost_table(rows: list[dict]) -> str:
    header = ("| preset | translator / method | T x C x H x W | params (M) | GFLOPs "
              "| fwd samples/s | fwd+bwd samples/s |\n|---|---|---|---:|---:|---:|---:|")
    lines = [header]
    for row in rows:
        speed = [f"{row[k]:.1f}" if row[k] is not None else "-"
                 for k in ("fwd_samples_per_s", "train_samples_per_s")]
        lines.append(f"| {row['preset']} | {row['translator']} | {row['input']} | "
                     f"{row['params_M']:.3f} | {row['GFLOPs']:.3f} | {speed[0]} | {speed[1]} |")
    return "\n".join(lines)
