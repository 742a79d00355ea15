"""Pictures of forecasts: PNG panels (inputs, targets, predictions and absolute error, one row
each) and animated GIFs of a forecast sequence, with a colormap and units suited to the data and
lat/lon axes when the store has coordinates (WeatherBench)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (CI, cluster nodes)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.animation import PillowWriter  # noqa: E402

# variable name (before a `_<level>` suffix) -> colormap; diverging maps for signed fields
COLORMAPS = {
    "t2m": "RdYlBu_r", "t": "RdYlBu_r", "t850": "RdYlBu_r",  # temperature
    "u10": "RdBu_r", "v10": "RdBu_r", "u": "RdBu_r", "v": "RdBu_r",  # wind components
    "tp": "Blues", "tcc": "Greys_r", "r": "BrBG",  # precipitation, cloud cover, humidity
    "z": "viridis", "g": "viridis",  # geopotential
    "inflow": "inferno", "outflow": "inferno",  # TaxiBJ crowd flows
    "intensity": "gray",  # Moving MNIST
}
DIVERGING = {"RdBu_r"}  # centred on zero
ERROR_CMAP = "magma"


def colormap_for(channel_name: str) -> str:
    """The colormap of a channel, by its variable name; viridis for anything unknown."""
    name = channel_name.lower()
    return COLORMAPS.get(name, COLORMAPS.get(name.split("_")[0], "viridis"))


def _limits(arrays: list[np.ndarray], cmap: str) -> tuple[float, float]:
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if cmap in DIVERGING:
        bound = max(abs(low), abs(high))
        return -bound, bound
    return low, high


def _map_geometry(lat: np.ndarray | None, lon: np.ndarray | None
                  ) -> tuple[tuple[float, float, float, float] | None, bool]:
    """imshow extent (cell edges) with north up, and whether rows must be flipped for it."""
    if lat is None or lon is None:
        return None, False
    flip = len(lat) > 1 and lat[0] < lat[-1]  # rows must run north to south
    lat = lat[::-1] if flip else lat
    dlat = abs(lat[0] - lat[-1]) / max(len(lat) - 1, 1) / 2
    dlon = abs(lon[-1] - lon[0]) / max(len(lon) - 1, 1) / 2
    return (float(lon[0] - dlon), float(lon[-1] + dlon), float(lat[-1] - dlat),
            float(lat[0] + dlat)), flip


def _style_axis(axis, extent, left: bool, bottom: bool) -> None:
    if extent is None:
        axis.set_xticks([])
        axis.set_yticks([])
        return
    axis.tick_params(labelsize=6, labelleft=left, labelbottom=bottom)
    if left:
        axis.set_ylabel("lat (°)", fontsize=7)
    if bottom:
        axis.set_xlabel("lon (°)", fontsize=7)


def plot_forecast_panel(x: np.ndarray, y: np.ndarray, pred: np.ndarray, path: str | Path, *,
                        channel: int = 0, channel_name: str = "", units: str = "",
                        title: str = "", lat: np.ndarray | None = None,
                        lon: np.ndarray | None = None, cmap: str | None = None) -> Path:
    """One sample: x (T_in, C, H, W), y and pred (T_out, C, H, W), physical units; y may hold
    NaN where no target exists (forecasts past the data). lat (H,) / lon (W,) draw map axes."""
    path = Path(path)
    cmap = cmap or colormap_for(channel_name)
    extent, flip = _map_geometry(lat, lon)
    rows = [("input", x[:, channel]), ("target", y[:, channel]),
            ("prediction", pred[:, channel]), ("|error|", np.abs(pred - y)[:, channel])]
    if flip:
        rows = [(label, frames[:, ::-1]) for label, frames in rows]
    columns = max(len(frames) for _, frames in rows)
    low, high = _limits([r[1] for r in rows[:3]], cmap)
    error_high = _limits([rows[3][1]], ERROR_CMAP)[1]
    if extent is None:
        size = (1.6 * columns + 1.2, 6.8)
    else:  # room for the tick labels; each map keeps the grid's aspect ratio
        width = 1.8 * x.shape[-1] / x.shape[-2]
        size = (width * columns + 1.6, 4 * (1.8 + 0.5) + 0.6)
    figure, axes = plt.subplots(4, columns, figsize=size, squeeze=False)
    for row, (label, frames) in enumerate(rows):
        error_row = label == "|error|"
        image = None
        for col in range(columns):
            axis = axes[row, col]
            if col >= len(frames):
                axis.axis("off")
                continue
            image = axis.imshow(frames[col], cmap=ERROR_CMAP if error_row else cmap,
                                vmin=0 if error_row else low,
                                vmax=error_high if error_row else high, extent=extent,
                                interpolation="nearest")
            _style_axis(axis, extent, col == 0, row == 3)
            if row == 0:
                axis.set_title(f"t-{len(frames) - col - 1}", fontsize=8)
            elif row == 1:
                axis.set_title(f"t+{col + 1}", fontsize=8)
        axes[row, 0].set_ylabel(label if extent is None else f"{label}\nlat (°)", fontsize=9)
        if image is not None:
            figure.colorbar(image, ax=list(axes[row]), fraction=0.02, pad=0.01,
                            label=units if units else None)
    figure.suptitle(title or f"{channel_name or f'channel {channel}'}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def save_forecast_gif(x: np.ndarray, y: np.ndarray, pred: np.ndarray, path: str | Path, *,
                      channel: int = 0, channel_name: str = "", units: str = "",
                      title: str = "", lat: np.ndarray | None = None,
                      lon: np.ndarray | None = None, cmap: str | None = None,
                      fps: float = 2.0) -> Path:
    """An animated GIF of one forecast sequence: truth | prediction | |error| side by side,
    first over the T_in inputs (no prediction yet), then over the T_out lead times."""
    path = Path(path)
    cmap = cmap or colormap_for(channel_name)
    extent, flip = _map_geometry(lat, lon)
    truth = np.concatenate([x[:, channel], y[:, channel]])  # (T_in + T_out, H, W)
    blank = np.full_like(x[:, channel], np.nan)
    forecast = np.concatenate([blank, pred[:, channel]])
    error = np.abs(forecast - truth)
    if flip:
        truth, forecast, error = truth[:, ::-1], forecast[:, ::-1], error[:, ::-1]
    low, high = _limits([truth, forecast], cmap)
    error_high = _limits([error], ERROR_CMAP)[1]
    aspect = x.shape[-1] / x.shape[-2]
    figure, axes = plt.subplots(1, 3, figsize=(3 * 2.9 * aspect + 0.8, 3.0), squeeze=False,
                                gridspec_kw={"wspace": 0.35})
    images = []
    for axis, label, frames, kind in ((axes[0, 0], "truth", truth, cmap),
                                      (axes[0, 1], "prediction", forecast, cmap),
                                      (axes[0, 2], "|error|", error, ERROR_CMAP)):
        is_error = kind == ERROR_CMAP
        image = axis.imshow(frames[0], cmap=kind, vmin=0 if is_error else low,
                            vmax=error_high if is_error else high, extent=extent,
                            interpolation="nearest")
        _style_axis(axis, extent, axis is axes[0, 0], True)
        axis.set_title(label, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.02,
                        label=units if units and not is_error else None)
        images.append((image, frames))
    heading = figure.suptitle("", fontsize=9)
    in_frames = len(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = PillowWriter(fps=fps)
    with writer.saving(figure, str(path), dpi=80):
        for step in range(len(truth)):
            for image, frames in images:
                image.set_data(frames[step])
            when = f"t-{in_frames - step - 1} (input)" if step < in_frames else \
                f"t+{step - in_frames + 1}"
            heading.set_text(f"{title or channel_name}  {when}")
            writer.grab_frame()
    plt.close(figure)
    return path
