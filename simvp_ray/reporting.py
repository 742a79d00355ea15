"""Human-readable summaries of a finished run (reads the result.json dict only)."""

from __future__ import annotations

from typing import Any

METRICS = ("mse", "mae", "ssim", "psnr")


def format_summary(summary: dict[str, Any]) -> str:
    final = summary["final"]
    rows = ["| validation | " + " | ".join(METRICS) + " |",
            "|---|" + "---:|" * len(METRICS)]
    for label, key in (("model", "model"), ("persistence", "persistence")):
        values = final[key]
        rows.append(f"| {label} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
    verdict = ("beats" if final["model"]["mse"] < final["persistence"]["mse"]
               else "does NOT beat")
    return "\n".join([
        f"run {summary['name']}: {summary['epochs_run']} epochs in "
        f"{summary['wall_time_s']:.0f} s, {summary['train_samples_per_s']:.1f} samples/s",
        *rows,
        f"the model {verdict} persistence (val MSE {final['model']['mse']:.4f} vs "
        f"{final['persistence']['mse']:.4f}, normalised units)",
        f"best checkpoint:  {summary['best_checkpoint']}",
        f"run folder:       {summary['run_url']}  (result.json, checkpoints)",
    ])


def one_line(error: BaseException) -> str:
    """An error as the single stderr line a job ends with (no traceback, no wrapped lines)."""
    return " ".join(str(error).split()) or type(error).__name__
