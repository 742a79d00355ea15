"""PNG panels of forecasts: inputs, targets, predictions and absolute error, one row each."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (CI, cluster nodes)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_forecast_panel(x: np.ndarray, y: np.ndarray, pred: np.ndarray, path: str | Path, *,
                        channel: int = 0, channel_name: str = "", units: str = "",
                        title: str = "") -> Path:
    """One sample: x (T_in, C, H, W), y and pred (T_out, C, H, W), physical units."""
    path = Path(path)
    rows = [("input", x[:, channel]), ("target", y[:, channel]),
            ("prediction", pred[:, channel]), ("|error|", np.abs(pred - y)[:, channel])]
    columns = max(len(frames) for _, frames in rows)
    low = min(float(np.nanmin(r[1])) for r in rows[:3])
    high = max(float(np.nanmax(r[1])) for r in rows[:3])
    figure, axes = plt.subplots(4, columns, figsize=(1.6 * columns + 1.2, 6.8), squeeze=False)
    for row, (label, frames) in enumerate(rows):
        error_row = label == "|error|"
        for col in range(columns):
            axis = axes[row, col]
            axis.set_xticks([])
            axis.set_yticks([])
            if col >= len(frames):
                axis.axis("off")
                continue
            image = axis.imshow(frames[col], cmap="magma" if error_row else "viridis",
                                vmin=0 if error_row else low,
                                vmax=None if error_row else high)
            if row == 0:
                axis.set_title(f"t-{len(frames) - col - 1}" if col < len(frames) else "",
                               fontsize=8)
            elif row == 1:
                axis.set_title(f"t+{col + 1}", fontsize=8)
        axes[row, 0].set_ylabel(label, fontsize=9)
        figure.colorbar(image, ax=list(axes[row]), fraction=0.02, pad=0.01,
                        label=units if units else None)
    figure.suptitle(title or f"{channel_name or f'channel {channel}'}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
