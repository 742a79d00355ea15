"""Forecast metrics kept as exact sums and counts, per lead time and overall, so that workers can
all-reduce their state and divide once (never an average of averages). Torch only; runs on GPU.

Notation: pred, target are (B, T, C, H, W) in normalised units; e = pred - target; a "frame" is
one (b, t) pair, a "sample" one (b, t, c) map; scale_c, offset_c the per-channel normalisation
(physical x = x_norm * scale_c + offset_c; 1 and 0 when none is given; a z-score store's std and
mean, a min-max store's max - min and min); N the number of sequences accumulated. Every mean
below runs over all N sequences of all batches.

Overall keys (each also per lead time as `<key>/t1` ... `<key>/tT`, a mean over that lead only):
  mse, mae          mean over (b, t, c, h, w) of e^2, |e|                       (per-pixel means)
  rmse              sqrt(mse)  (pooled: the root of the mean, not a mean of roots)
  mse_phys, mae_phys, rmse_phys   the same on physical values: e_c * scale_c
  ssim              mean over samples of the mean SSIM map (Wang et al. 2004): Gaussian window
                    11x11, sigma 1.5, "valid" filtering (no padding), population (co)variances,
                    applied as banded matrix products (same sums as conv2d, faster on CPU),
                    C1 = (0.01 R_c)^2, C2 = (0.03 R_c)^2 with R_c = data_range (normalised units);
                    the window shrinks to the largest odd size <= min(H, W) on smaller grids
  ssim_phys         the same on physical values with R_c = data_range_phys[c]
                    (default data_range * scale_c; SSIM is not shift-invariant, so it differs)
  psnr, psnr_phys   mean over frames of -10 log10(mean over (c, h, w) of (e_c / R_c)^2), each
                    frame's MSE floored at 1e-10, so a perfect frame scores 100 dB, not inf
OpenSTL's published-table metrics (openstl/core/metrics.py `metric()`, skimage <= 0.19, which it
pins), on OpenSTL's values v: the store's `normalization` picks them. "minmax" stores (Moving
MNIST, TaxiBJ) hold OpenSTL's [0, 1] scale as our normalised values (its mean 0 / std 1), so
v = pred, target; "zscore" stores (weather) are de-normalised with offset / scale (the training
mean / std), as OpenSTL does with its loader's statistics, so v = physical values:
  ssim_openstl      OpenSTL's `cal_ssim` on v with the prediction (only) clipped to [0, 1]:
                    skimage's structural_similarity defaults per channel (7x7 uniform window,
                    sample covariance x 49/48, data range 2 = the float dtype range [-1, 1],
                    valid region only), averaged over channels and frames
  psnr_openstl      per frame -10 log10(mean over (c, h, w) of (clip(v_pred) - v_target)^2),
                    averaged over frames (floored as psnr above, where OpenSTL gives inf)
  mse_openstl, mae_openstl, rmse_openstl   OpenSTL's MSE / MAE / RMSE of the dataset kind:
                    minmax (`spatial_norm=False`): the per-frame sums over (c, h, w) of e_v^2,
                    |e_v| averaged over frames (= mse_frame_sum, mae_frame_sum), RMSE the root of
                    that; zscore (`spatial_norm=True`): per-pixel means of the physical error,
                    per variable (its `mv` sets: channels `<var>_<level>` grouped by `<var>`;
                    any other store is one pooled variable, as OpenSTL's t2m / uv10), then the
                    plain mean over variables; each variable's RMSE is the root of its pooled
                    MSE; per variable also as `<key>/<var>` where there is more than one
  openstl_spatial_norm   1.0 when the *_openstl MSE / MAE are per-pixel means (zscore), 0.0 when
                    they are per-frame sums (minmax): the unit of those two numbers
Overall only: every *_openstl key but ssim_openstl / psnr_openstl (those also per lead), and
  mse_frame_sum, mae_frame_sum (and *_phys)   the sum over (c, h, w) of e^2 or |e| per frame,
                    averaged over frames, i.e. mse * C * H * W (normalised / physical units).
Per channel `<ch>` (only when channel_names are given): every per-lead key above but psnr*.
With latitude weights w (H,) or (H, W), normalised here to mean 1 over the grid (WeatherBench 2's
cell areas, see `latitude_weights`), per channel and per lead `.../t<k>`:
  wmse/<ch>         mean over samples of mean_hw(w e^2); wmse_phys/<ch> = wmse/<ch> * scale_c^2
  wrmse/<ch>        sqrt(wmse/<ch>): the root after the mean over forecasts (init times), the
                    headline weather RMSE (WeatherBench 1, and WeatherBench 2's current `RMSE`);
                    overall, the root of the mean over forecasts and leads. wrmse_phys = * scale_c
  wrmse_sqrt_before_time_avg/<ch>   mean over samples of sqrt(mean_hw(w e^2)): WeatherBench 2's
                    `RMSESqrtBeforeTimeAvg` (root per forecast, then the mean); (_phys: * scale_c)
With a climatology K ((C, H, W), (T, C, H, W), or per batch (B, T, C, H, W); normalised units), per
channel and lead: acc/<ch> = mean over samples of sum_hw(w f a) / sqrt(sum_hw(w f^2) sum_hw(w a^2)),
f = pred - K, a = target - K (WeatherBench 2's uncentred ACC; w = 1 without latitude weights; 0
where an anomaly is identically zero).

Distributed use: `flat = acc.state(); torch.distributed.all_reduce(flat); acc.load_state(flat)`,
then `acc.compute()` on any rank gives the global metrics (the training loop's `evaluate`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from simvp_ray.metric_keys import SCOPE_KEYS  # the order of each scope's keys in compute()
from simvp_ray.records import check_fields

if TYPE_CHECKING:
    from simvp_ray.data.normalization import Stats
    from simvp_ray.data.store import Dataset

PSNR_MSE_FLOOR = 1e-10  # caps PSNR at 100 dB so one perfect frame does not make the mean inf
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004
OPENSTL_SSIM_WINDOW, OPENSTL_SSIM_DATA_RANGE = 7, 2.0  # skimage <= 0.19 defaults for floats
_LEAD_KEY = re.compile(r"t\d+")
_LEVEL_SUFFIX = re.compile(r"(.+)_(\d+(?:\.\d+)?)")  # `r_850`: variable r at level 850
# the store's normalisation kind -> OpenSTL's metric convention (see the module docstring)
OPENSTL_CONVENTIONS = {"minmax": "normalised values, per-frame sums",
                       "zscore": "physical values, per-pixel means per variable"}

# name -> shape kind of each sum in the state; the order fixes the flat layout
_STATE_LAYOUT = {
    "sequences": "one",  # N: sequences seen (each contributes one sample per (t, c))
    "pixels": "one",  # N * H * W: pixels per (t, c)
    "se": "tc",  # sum of e^2 (normalised units)
    "ae": "tc",  # sum of |e|
    "ssim": "tc",  # sum over samples of the mean SSIM map
    "ssim_phys": "tc",
    "ssim_openstl": "tc",
    "psnr": "t",  # sum over frames of the per-frame PSNR
    "psnr_phys": "t",
    "psnr_openstl": "t",
    "wmse": "tc",  # sum over samples of mean_hw(w e^2)
    "wrmse": "tc",  # sum over samples of sqrt(mean_hw(w e^2)) (RMSESqrtBeforeTimeAvg)
    "acc": "tc",  # sum over samples of the per-sample ACC
    "acc_sequences": "one",  # sequences that had a climatology
}


def latitude_weights(lat_deg: Tensor | Sequence[float]) -> Tensor:
    """WeatherBench 2's area weights, (H,), mean 1: each row's cell area sin(upper) - sin(lower),
    bounds halfway between rows and half a spacing beyond the edge rows, clipped to +-90.

    On a global grid this is WB2's `get_lat_weights` (outer bounds at the poles, so a pole row
    gets its half cell, not cos(90) = 0); on an evenly spaced grid without pole rows it equals
    cos(lat) / mean(cos(lat)) (WeatherBench 1); a regional grid's edge cells stay regional.
    Any row order (ERA5 runs north to south); spacing may vary.
    """
    lat = torch.as_tensor(lat_deg, dtype=torch.float64)
    if lat.ndim != 1 or lat.numel() == 0:
        raise ValueError(
            f"expected a 1-D sequence of latitudes in degrees, got shape {tuple(lat.shape)}"
        )
    if bool((lat.abs() > 90).any()):
        raise ValueError(
            f"latitudes must lie in [-90, 90] degrees, got min {lat.min()}, max {lat.max()}"
        )
    if lat.numel() == 1:
        return torch.ones(1, dtype=torch.float64)
    order = torch.argsort(lat)
    rows = torch.deg2rad(lat[order])
    if bool((rows.diff() <= 0).any()):
        raise ValueError(f"latitudes must be distinct, got {lat.tolist()}")
    inner = (rows[:-1] + rows[1:]) / 2
    half_pi = torch.tensor([math.pi / 2], dtype=torch.float64)
    lower = torch.cat([torch.maximum(rows[:1] - (inner[:1] - rows[:1]), -half_pi), inner])
    upper = torch.cat([inner, torch.minimum(rows[-1:] + (rows[-1:] - inner[-1:]), half_pi)])
    area = torch.empty_like(lat)
    area[order] = torch.sin(upper) - torch.sin(lower)
    return area / area.mean()


def openstl_variables(channel_names: Sequence[str]) -> dict[str, list[int]]:
    """OpenSTL's variable groups: variable -> channel indices. Channels `<var>_<level>` of more
    than one variable (its `mv` sets) group by variable; anything else is one pooled group, as
    OpenSTL pools t2m, and u10 with v10 (it passes channel_names only for `mv`)."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(channel_names):
        match = _LEVEL_SUFFIX.fullmatch(name)
        groups.setdefault(match.group(1) if match else name, []).append(index)
    if len(groups) > 1 and any(_LEVEL_SUFFIX.fullmatch(name) for name in channel_names):
        return groups
    return {"all": list(range(len(channel_names)))}


def persistence_forecast(x: Tensor, out_frames: int) -> Tensor:
    """The last input frame repeated, (B, T_in, ...) -> (B, out_frames, ...)."""
    _check_rank(x, "x")
    if out_frames < 1:
        raise ValueError(f"out_frames must be >= 1, got {out_frames}")
    return x[:, -1:].expand(-1, out_frames, -1, -1, -1).clone()


def climatology_forecast(climatology: Tensor, batch_size: int, out_frames: int) -> Tensor:
    """The climatology baseline: (C, H, W) or (T, C, H, W) -> (batch_size, out_frames, C, H, W)."""
    if climatology.ndim == 3:
        climatology = climatology.unsqueeze(0).expand(out_frames, -1, -1, -1)
    elif climatology.ndim != 4 or climatology.shape[0] != out_frames:
        raise ValueError(
            f"expected climatology of shape (C, H, W) or ({out_frames}, C, H, W), "
            f"got {tuple(climatology.shape)}"
        )
    return climatology.unsqueeze(0).expand(batch_size, -1, -1, -1, -1).clone()


def ssim_per_sample(
    pred: Tensor, target: Tensor, data_range: Tensor, window: Tensor, cov_norm: float = 1.0
) -> Tensor:
    """Mean SSIM map of each (b, t, c) sample: (B, T, C, H, W) x 2 -> (B, T, C).

    `data_range` is (C,); `window` the 1-D separable window (odd length k, sums to 1) on the
    data's device; filtering is "valid", so the map is (H - k + 1, W - k + 1). `cov_norm`
    k^2 / (k^2 - 1) gives skimage's sample covariance, 1.0 the population one of Wang et al.
    """
    b, t, c, h, w = pred.shape
    x = pred.reshape(b * t * c, h, w)
    y = target.reshape(b * t * c, h, w)
    # the separable window as two banded matrices: filtered = M_h^T @ map @ M_w, the same sums
    # as a valid conv2d but 4-7x faster for one-channel maps on CPU (BLAS), and fine on GPU
    rows, cols = _band(h, window), _band(w, window)  # (H, H'), (W, W')
    stats = torch.cat([x, y, x * x, y * y, x * y])  # the five maps: (5 * B*T*C, H, W)
    stats = rows.T @ stats @ cols  # (5 * B*T*C, H', W')
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x = cov_norm * (xx - mu_x * mu_x)
    var_y = cov_norm * (yy - mu_y * mu_y)
    cov = cov_norm * (xy - mu_x * mu_y)
    r = data_range.to(pred).repeat(b * t).view(-1, 1, 1)  # channel fastest, as in reshape
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2)).view(b, t, c)


def _band(n: int, window: Tensor) -> Tensor:
    """(n, n - k + 1) matrix whose column j holds the window at rows j .. j + k - 1."""
    k = window.numel()
    index = torch.arange(n, device=window.device)
    offset = index[:, None] - index[None, : n - k + 1]  # row i, column j -> tap i - j
    inside = (offset >= 0) & (offset < k)
    return torch.where(inside, window[offset.clamp(0, k - 1)], window.new_zeros(()))


def gaussian_window(size: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """A 1-D Gaussian window of odd `size` summing to 1 (its outer product is the 2-D window)."""
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def _window_size(preferred: int, height: int, width: int) -> int:
    size = min(preferred, height, width)
    return size if size % 2 == 1 else size - 1


def _psnr(sq_err: Tensor) -> Tensor:
    # sq_err (B, T, C, H, W), already divided by the data range^2 -> per-frame PSNR (B, T)
    return -10 * torch.log10(sq_err.mean(dim=(2, 3, 4)).clamp_min(PSNR_MSE_FLOOR))


def _check_rank(x: Tensor, name: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"expected {name} of shape (B, T, C, H, W), got {tuple(x.shape)}")


def _per_channel(values, num_channels: int, name: str) -> Tensor:
    out = torch.as_tensor(values, dtype=torch.float64).flatten()
    if out.numel() != num_channels:
        raise ValueError(
            f"expected {name} of length {num_channels} (one per channel), got {out.numel()}"
        )
    return out


class MetricAccumulator:
    """Accumulates metric sums over batches; see the module docstring for every key's definition.

    offset, scale: per-channel normalisation (length C; physical = normalised * scale + offset)
    or None (physical = normalised).
    data_range: R for SSIM/PSNR in normalised units; data_range_phys: per-channel R in physical
    units (default data_range * scale). lat_weights: (H,) or (H, W), renormalised to mean 1.
    climatology: (C, H, W) or (T, C, H, W) in normalised units, for ACC.
    normalization: the store's kind, "zscore" or "minmax": OpenSTL's convention for *_openstl.
    """

    def __init__(
        self,
        num_frames: int,
        num_channels: int,
        *,
        offset: Sequence[float] | Tensor | None = None,
        scale: Sequence[float] | Tensor | None = None,
        channel_names: Sequence[str] | None = None,
        data_range: float = 1.0,
        data_range_phys: Sequence[float] | Tensor | None = None,
        lat_weights: Tensor | None = None,
        climatology: Tensor | None = None,
        device: torch.device | str = "cpu",
        normalization: str = "zscore",
    ) -> None:
        if num_frames < 1 or num_channels < 1:
            raise ValueError(
                f"num_frames and num_channels must be >= 1, got {num_frames}, {num_channels}"
            )
        if (offset is None) != (scale is None):
            raise ValueError("give both offset and scale for denormalisation, or neither")
        if data_range <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        if normalization not in OPENSTL_CONVENTIONS:
            raise ValueError(f"normalization {normalization!r}; valid: {list(OPENSTL_CONVENTIONS)}")
        self.normalization = normalization
        self.num_frames, self.num_channels = num_frames, num_channels
        self.offset = (
            torch.zeros(num_channels, dtype=torch.float64)
            if offset is None
            else _per_channel(offset, num_channels, "offset")
        )
        self.scale = (
            torch.ones(num_channels, dtype=torch.float64)
            if scale is None
            else _per_channel(scale, num_channels, "scale")
        )
        if bool((self.scale <= 0).any()):
            raise ValueError(f"scale must be > 0 for every channel, got {self.scale.tolist()}")
        self.data_range = torch.full((num_channels,), float(data_range), dtype=torch.float64)
        self.data_range_phys = (
            self.data_range * self.scale
            if data_range_phys is None
            else _per_channel(data_range_phys, num_channels, "data_range_phys")
        )
        if bool((self.data_range_phys <= 0).any()):
            raise ValueError(f"data_range_phys must be > 0, got {self.data_range_phys.tolist()}")

        self.named_channels = channel_names is not None
        names = (
            [f"c{i}" for i in range(num_channels)] if channel_names is None else list(channel_names)
        )
        if len(names) != num_channels:
            raise ValueError(f"expected {num_channels} channel names, got {len(names)}: {names}")
        for name in names:
            # "mse/t2" must stay unambiguous: a lead time, never a channel
            if not name or "/" in name or _LEAD_KEY.fullmatch(name):
                raise ValueError(f"channel name {name!r} is empty, has a '/' or looks like t<k>")
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        self.channel_names = names
        self.variables = openstl_variables(names)

        self.lat_weights = None
        if lat_weights is not None:
            weights = torch.as_tensor(lat_weights, dtype=torch.float64)
            if weights.ndim == 1:
                weights = weights[:, None]  # (H, 1): constant along longitude
            if weights.ndim != 2 or bool((weights < 0).any()) or float(weights.sum()) <= 0:
                raise ValueError(
                    f"expected non-negative lat_weights of shape (H,) or (H, W), "
                    f"got shape {tuple(weights.shape)}"
                )
            self.lat_weights = weights
        self.climatology = None
        if climatology is not None:
            clim = torch.as_tensor(climatology, dtype=torch.float64)
            if clim.ndim == 3:
                clim = clim.unsqueeze(0)
            if (
                clim.ndim != 4
                or clim.shape[0] not in (1, num_frames)
                or clim.shape[1] != num_channels
            ):
                raise ValueError(
                    f"expected climatology of shape ({num_channels}, H, W) or "
                    f"({num_frames}, {num_channels}, H, W), got {tuple(climatology.shape)}"
                )
            self.climatology = clim  # (1 or T, C, H, W)
        self.device = torch.device(device)
        self.reset()

    # ---- state -------------------------------------------------------------------------------

    def _shape(self, kind: str) -> tuple[int, ...]:
        return {"one": (1,), "t": (self.num_frames,), "tc": (self.num_frames, self.num_channels)}[
            kind
        ]

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.sums = {
            name: torch.zeros(self._shape(kind), dtype=torch.float64, device=self.device)
            for name, kind in _STATE_LAYOUT.items()
        }

    def state(self) -> Tensor:
        """All sums as one flat float64 tensor on the accumulator's device, ready to all-reduce."""
        return torch.cat([self.sums[name].flatten() for name in _STATE_LAYOUT])

    def load_state(self, flat: Tensor) -> None:
        """Replace the sums with a (reduced) flat state from `state()` of like accumulators."""
        sizes = [math.prod(self._shape(kind)) for kind in _STATE_LAYOUT.values()]
        if flat.ndim != 1 or flat.numel() != sum(sizes):
            raise ValueError(
                f"expected a flat state of {sum(sizes)} values, got shape {tuple(flat.shape)}"
            )
        parts = flat.to(device=self.device, dtype=torch.float64).split(sizes)
        self.sums = {
            name: part.reshape(self._shape(kind)).clone()
            for (name, kind), part in zip(_STATE_LAYOUT.items(), parts)
        }

    def _to(self, device: torch.device) -> None:
        # the accumulator follows the data, so the state is on the GPU when NCCL reduces it
        self.device = device
        self.sums = {name: value.to(device) for name, value in self.sums.items()}

    # ---- accumulation ------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, climatology: Tensor | None = None) -> None:
        """Add one batch: pred, target (B, T, C, H, W) in normalised units.

        climatology: optional per-batch (B, T, C, H, W) climatology (normalised) overriding the
        one given at construction, e.g. the day-of-year climatology of each forecast's valid time.
        """
        _check_rank(pred, "pred")
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
            )
        b, t, c, h, w = pred.shape
        if (t, c) != (self.num_frames, self.num_channels):
            raise ValueError(
                f"expected (T, C) = ({self.num_frames}, {self.num_channels}), "
                f"got {(t, c)} from shape {tuple(pred.shape)}"
            )
        if pred.device != self.device:
            self._to(pred.device)
        device = pred.device
        # check everything before touching the sums, so a bad batch leaves the state intact
        weights = None if self.lat_weights is None else self._grid_weights(h, w, device)
        clim = self._climatology(climatology, pred.shape, device)
        # float64 throughout: physical values (e.g. 280 K) lose E[x^2] - E[x]^2 in float32
        with torch.autocast(device_type=device.type, enabled=False):
            pred = pred.detach().to(torch.float64)
            target = target.detach().to(torch.float64)
            self._update(pred, target, weights, clim, device)

    def _update(
        self, pred: Tensor, target: Tensor, weights: Tensor | None, clim: Tensor | None, device
    ) -> None:
        b, t, c, h, w = pred.shape
        sums = self.sums
        channel = (1, 1, c, 1, 1)
        scale = self.scale.to(device).view(channel)
        offset = self.offset.to(device).view(channel)
        err = pred - target  # (B, T, C, H, W)
        sums["sequences"] += b
        sums["pixels"] += b * h * w
        sums["se"] += (err * err).sum(dim=(0, 3, 4))
        sums["ae"] += err.abs().sum(dim=(0, 3, 4))

        # SSIM / PSNR in normalised and physical units, and OpenSTL's variant
        gauss = gaussian_window(_window_size(SSIM_WINDOW, h, w), SSIM_SIGMA).to(device)
        pred_phys, target_phys = pred * scale + offset, target * scale + offset
        range_norm = self.data_range.to(device)
        range_phys = self.data_range_phys.to(device)
        sums["ssim"] += ssim_per_sample(pred, target, range_norm, gauss).sum(0)
        sums["ssim_phys"] += ssim_per_sample(pred_phys, target_phys, range_phys, gauss).sum(0)
        sums["psnr"] += _psnr((err / range_norm.view(channel)) ** 2).sum(0)
        sums["psnr_phys"] += _psnr((err * scale / range_phys.view(channel)) ** 2).sum(0)

        # OpenSTL's values: its [0, 1] scale is our normalised one on min-max stores
        if self.normalization == "minmax":
            pred_openstl, target_openstl = pred, target
        else:
            pred_openstl, target_openstl = pred_phys, target_phys
        clipped = pred_openstl.clamp(0.0, 1.0)  # OpenSTL clips the prediction only
        k = _window_size(OPENSTL_SSIM_WINDOW, h, w)
        uniform = torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
        openstl_range = torch.full((c,), OPENSTL_SSIM_DATA_RANGE, dtype=torch.float64)
        sums["ssim_openstl"] += ssim_per_sample(
            clipped, target_openstl, openstl_range, uniform, cov_norm=k * k / (k * k - 1)
        ).sum(0)
        sums["psnr_openstl"] += _psnr((clipped - target_openstl) ** 2).sum(0)

        if weights is not None:
            wse = (weights * err * err).mean(dim=(3, 4))  # (B, T, C)
            sums["wmse"] += wse.sum(0)
            sums["wrmse"] += wse.sqrt().sum(0)

        if clim is not None:
            if weights is None:
                weights = torch.ones((h, w), dtype=torch.float64, device=device)
            fa, oa = pred - clim, target - clim  # forecast and observed anomalies
            num = (weights * fa * oa).sum(dim=(3, 4))
            den = ((weights * fa * fa).sum(dim=(3, 4)) * (weights * oa * oa).sum(dim=(3, 4))).sqrt()
            acc = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
            sums["acc"] += acc.sum(0)
            sums["acc_sequences"] += b

    def _climatology(self, clim: Tensor | None, shape: torch.Size, device) -> Tensor | None:
        """The climatology to use for this batch, broadcastable to `shape` (B, T, C, H, W)."""
        h, w = shape[-2:]
        if clim is None and self.climatology is not None:
            clim = self.climatology.to(device)
            if clim.shape[-2:] != (h, w):
                raise ValueError(
                    f"climatology grid {tuple(clim.shape[-2:])} does not match data grid {(h, w)}"
                )
            clim = clim.unsqueeze(0)  # (1, 1 or T, C, H, W)
        elif clim is not None:
            if tuple(clim.shape) != tuple(shape):
                raise ValueError(
                    f"expected a per-batch climatology of shape {tuple(shape)}, "
                    f"got {tuple(clim.shape)}"
                )
            clim = clim.to(device=device, dtype=torch.float64)
        return clim

    def _grid_weights(self, h: int, w: int, device) -> Tensor:
        weights = self.lat_weights.to(device)
        if weights.shape[0] != h or weights.shape[1] not in (1, w):
            raise ValueError(
                f"lat_weights of shape {tuple(weights.shape)} do not fit the data grid {(h, w)}"
            )
        weights = weights.expand(h, w)
        return weights / weights.mean()  # WeatherBench: mean 1 over the grid

    # ---- results -----------------------------------------------------------------------------

    def compute(self) -> dict[str, float]:
        """The metrics of everything accumulated (after a reduce: of every worker), as floats."""
        s = {name: value.cpu() for name, value in self.sums.items()}
        n = float(s["sequences"])
        if n == 0:
            raise RuntimeError("no batches accumulated: call update() before compute()")
        px = float(s["pixels"])
        t_len, c_len = self.num_frames, self.num_channels
        scale = self.scale
        # (T, C) sums and the count behind each element
        per_tc = {
            "mse": (s["se"], px),
            "mae": (s["ae"], px),
            "mse_phys": (s["se"] * scale**2, px),
            "mae_phys": (s["ae"] * scale, px),
            "ssim": (s["ssim"], n),
            "ssim_phys": (s["ssim_phys"], n),
            "ssim_openstl": (s["ssim_openstl"], n),
        }
        per_t = {"psnr": s["psnr"], "psnr_phys": s["psnr_phys"], "psnr_openstl": s["psnr_openstl"]}

        def scope(suffix: str, tc_index, t_index, cells: int, frames: int) -> dict[str, float]:
            res = {}
            for key, (total, count) in per_tc.items():
                res[key] = float(total[tc_index].sum()) / (count * cells)
            res["rmse"] = math.sqrt(res["mse"])
            res["rmse_phys"] = math.sqrt(res["mse_phys"])
            if t_index is not None:
                for key, total in per_t.items():
                    res[key] = float(total[t_index].sum()) / (n * frames)
            return {key + suffix: res[key] for key in SCOPE_KEYS if key in res}

        out = scope("", (slice(None), slice(None)), slice(None), t_len * c_len, t_len)
        frame_px = px / n  # H * W
        out["mse_frame_sum"] = float(s["se"].sum()) / (n * t_len)
        out["mae_frame_sum"] = float(s["ae"].sum()) / (n * t_len)
        out["mse_frame_sum_phys"] = out["mse_phys"] * c_len * frame_px
        out["mae_frame_sum_phys"] = out["mae_phys"] * c_len * frame_px
        out.update(self._openstl_errors(s, n, px))
        for k in range(t_len):
            out.update(scope(f"/t{k + 1}", (k, slice(None)), k, c_len, 1))
        if self.named_channels:
            for ci, name in enumerate(self.channel_names):
                out.update(scope(f"/{name}", (slice(None), ci), None, t_len, 1))

        # (key, (T, C) sum, sequences behind it, per-channel factor, root after the mean)
        ones = torch.ones(c_len, dtype=torch.float64)
        weather = []
        if self.lat_weights is not None:
            weather += [("wmse", s["wmse"], n, ones, False),
                        ("wmse_phys", s["wmse"], n, scale**2, False),
                        ("wrmse", s["wmse"], n, ones, True),
                        ("wrmse_phys", s["wmse"], n, scale**2, True),
                        ("wrmse_sqrt_before_time_avg", s["wrmse"], n, ones, False),
                        ("wrmse_sqrt_before_time_avg_phys", s["wrmse"], n, scale, False)]
        acc_n = float(s["acc_sequences"])
        if acc_n > 0:
            weather += [("acc", s["acc"], acc_n, ones, False)]
        for key, total, count, factor, root in weather:
            finish = math.sqrt if root else float
            for ci, name in enumerate(self.channel_names):
                f = float(factor[ci])
                out[f"{key}/{name}"] = finish(f * float(total[:, ci].sum()) / (count * t_len))
                for k in range(t_len):
                    out[f"{key}/{name}/t{k + 1}"] = finish(f * float(total[k, ci]) / count)
        return out

    def _openstl_errors(self, s: dict[str, Tensor], n: float, px: float) -> dict[str, float]:
        """OpenSTL's MSE / MAE / RMSE (module docstring) from the (T, C) error sums."""
        t_len = self.num_frames
        if self.normalization == "minmax":  # spatial_norm=False: sums over (c, h, w) per frame
            mse = float(s["se"].sum()) / (n * t_len)
            mae = float(s["ae"].sum()) / (n * t_len)
            return {"mse_openstl": mse, "mae_openstl": mae, "rmse_openstl": math.sqrt(mse),
                    "openstl_spatial_norm": 0.0}
        # spatial_norm=True: per-pixel means of physical errors, per variable, then averaged
        se = s["se"].sum(0) * self.scale**2  # (C,)
        ae = s["ae"].sum(0) * self.scale
        per_var = {}
        for var, channels in self.variables.items():
            count = px * t_len * len(channels)
            mse = float(se[channels].sum()) / count
            per_var[var] = (mse, float(ae[channels].sum()) / count, math.sqrt(mse))
        out = {f"{key}_openstl": sum(v[i] for v in per_var.values()) / len(per_var)
               for i, key in enumerate(("mse", "mae", "rmse"))}
        out["openstl_spatial_norm"] = 1.0
        if len(per_var) > 1:
            for var, values in per_var.items():
                out.update({f"{key}_openstl/{var}": value
                            for key, value in zip(("mse", "mae", "rmse"), values)})
        return out


@dataclasses.dataclass(frozen=True)
class MetricContext:
    """What the metrics know of the data besides the forecasts, handed from the driver to the
    training loop and the evaluation actors: per-channel offset and scale (physical = normalised
    * scale + offset), the store's normalisation kind (OpenSTL's convention), the channel names
    (None: no per-channel keys) and the grid's latitudes in degrees (None: no weighted keys).

    `to_dict` / `from_dict` round-trip exactly; a dict missing a field is a ValueError naming it.
    """

    offset: tuple[float, ...]
    scale: tuple[float, ...]
    normalization: str
    channel_names: tuple[str, ...] | None = None
    latitudes: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # arrays and lists in, plain tuples kept: comparable, hashable and JSON-ready
        def floats(values):
            return None if values is None else tuple(float(v) for v in values)

        object.__setattr__(self, "offset", floats(self.offset))
        object.__setattr__(self, "scale", floats(self.scale))
        object.__setattr__(self, "latitudes", floats(self.latitudes))
        if self.channel_names is not None:
            object.__setattr__(self, "channel_names", tuple(str(n) for n in self.channel_names))
        sizes = {"offset": len(self.offset), "scale": len(self.scale)}
        if self.channel_names is not None:
            sizes["channel_names"] = len(self.channel_names)
        if len(set(sizes.values())) > 1:
            raise ValueError(f"metric context: one value per channel expected, got {sizes}")

    @classmethod
    def from_dataset(cls, dataset: Dataset, names: Sequence[str] | None = None) -> MetricContext:
        """The context of the named channels of a store (None or none: every channel), with its
        training statistics and latitudes."""
        _, stats = dataset.select(names)
        return cls(stats.offset, stats.scale, stats.kind, list(names or dataset.channels),
                   dataset.lat)

    def with_stats(self, stats: Stats) -> MetricContext:
        """The same channels de-normalised with other statistics (e.g. a period's own)."""
        return dataclasses.replace(self, offset=stats.offset, scale=stats.scale,
                                   normalization=stats.kind)

    def to_dict(self) -> dict[str, Any]:
        return {field.name: (list(value) if isinstance(value, tuple) else value)
                for field in dataclasses.fields(self)
                for value in [getattr(self, field.name)]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricContext:
        # every field, None ones too: the dict is this class's own to_dict, never hand-written
        check_fields(cls, data, "metric context", optional=())
        return cls(**data)

    def accumulator(self, num_frames: int, num_channels: int,
                    device: torch.device | str = "cpu") -> MetricAccumulator:
        """The accumulator of these metrics (every worker and the driver build the same one)."""
        return MetricAccumulator(
            num_frames, num_channels, offset=self.offset, scale=self.scale,
            channel_names=self.channel_names,
            lat_weights=None if self.latitudes is None else latitude_weights(self.latitudes),
            device=device, normalization=self.normalization)
