"""MetricAccumulator against plain numpy references, closed-form answers and exact aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter
from scipy.signal import correlate2d

from simvp_ray.train.metrics import (
    MetricAccumulator,
    MetricContext,
    climatology_forecast,
    latitude_weights,
    openstl_variables,
    persistence_forecast,
)

B, T, C, H, W = 3, 3, 2, 14, 16
MEAN, STD = [280.0, -1.5], [12.0, 0.5]
NAMES = ["t2m", "u10"]


def make_batch(seed: int, batch: int = B, h: int = H, w: int = W) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, T, C, h, w, generator=gen, dtype=torch.float64)
    pred = target + 0.2 * torch.randn(batch, T, C, h, w, generator=gen, dtype=torch.float64)
    return pred, target


# ---- numpy references, written from the definitions ------------------------------------------


def np_ssim(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11) -> float:
    """Wang et al.: explicit 2-D Gaussian window (sigma 1.5), valid region, population stats."""
    g = np.exp(-((np.arange(win) - (win - 1) / 2) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(a):
        return correlate2d(a, window, mode="valid")

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(smap.mean())


def np_ssim_skimage019(x: np.ndarray, y: np.ndarray, win: int = 7) -> float:
    """skimage <= 0.19 structural_similarity defaults on float input (what OpenSTL reports)."""
    npix = win * win
    cov_norm = npix / (npix - 1)
    mx, my = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov_norm * (uniform_filter(x * x, win) - mx * mx)
    vy = cov_norm * (uniform_filter(y * y, win) - my * my)
    cxy = cov_norm * (uniform_filter(x * y, win) - mx * my)
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(smap[pad:-pad, pad:-pad].mean())


def np_reference(pred, target, mean, std, lat_w=None, clim=None, win=11, win_openstl=7):
    """The documented keys computed with loops and numpy on whole arrays (float64)."""
    p, y = pred.numpy(), target.numpy()
    mean = np.asarray(mean).reshape(1, 1, -1, 1, 1)
    std = np.asarray(std).reshape(1, 1, -1, 1, 1)
    pp, yp = p * std + mean, y * std + mean
    e, ep = p - y, pp - yp
    nb, nt, nc, nh, nw = p.shape
    ref = {
        "mse": np.mean(e**2),
        "mae": np.mean(np.abs(e)),
        "rmse": np.sqrt(np.mean(e**2)),
        "mse_phys": np.mean(ep**2),
        "mae_phys": np.mean(np.abs(ep)),
        "rmse_phys": np.sqrt(np.mean(ep**2)),
        # OpenSTL, spatial_norm=False: np.mean(err, axis=(0, 1)).sum()
        "mse_frame_sum": np.mean(e**2, axis=(0, 1)).sum(),
        "mae_frame_sum": np.mean(np.abs(e), axis=(0, 1)).sum(),
        "mse_frame_sum_phys": np.mean(ep**2, axis=(0, 1)).sum(),
        "mae_frame_sum_phys": np.mean(np.abs(ep), axis=(0, 1)).sum(),
    }
    for t in range(nt):
        ref[f"mse/t{t + 1}"] = np.mean(e[:, t] ** 2)
        ref[f"mae_phys/t{t + 1}"] = np.mean(np.abs(ep[:, t]))
        ref[f"rmse/t{t + 1}"] = np.sqrt(np.mean(e[:, t] ** 2))
    ssim = np.zeros((nb, nt, nc))
    ssim_phys = np.zeros((nb, nt, nc))
    ssim_openstl = np.zeros((nb, nt, nc))
    clipped = np.clip(pp, 0, 1)
    for b in range(nb):
        for t in range(nt):
            for c in range(nc):
                ssim[b, t, c] = np_ssim(p[b, t, c], y[b, t, c], 1.0, win)
                r_phys = 1.0 * std[0, 0, c, 0, 0]
                ssim_phys[b, t, c] = np_ssim(pp[b, t, c], yp[b, t, c], r_phys, win)
                ssim_openstl[b, t, c] = np_ssim_skimage019(
                    clipped[b, t, c], yp[b, t, c], win_openstl
                )
    frame_mse = np.mean(e**2, axis=(2, 3, 4))  # (B, T), data range 1
    frame_mse_openstl = np.mean((clipped - yp) ** 2, axis=(2, 3, 4))
    ref.update(
        ssim=ssim.mean(),
        ssim_phys=ssim_phys.mean(),
        ssim_openstl=ssim_openstl.mean(),
        psnr=np.mean(-10 * np.log10(frame_mse)),
        psnr_phys=np.mean(-10 * np.log10(frame_mse)),
        psnr_openstl=np.mean(-10 * np.log10(frame_mse_openstl)),
    )
    for t in range(nt):
        ref[f"ssim/t{t + 1}"] = ssim[:, t].mean()
        ref[f"psnr/t{t + 1}"] = np.mean(-10 * np.log10(frame_mse[:, t]))
    for c, name in enumerate(NAMES):
        ref[f"mse/{name}"] = np.mean(e[:, :, c] ** 2)
        ref[f"rmse_phys/{name}"] = np.sqrt(np.mean(ep[:, :, c] ** 2))
        ref[f"ssim_phys/{name}"] = ssim_phys[:, :, c].mean()
    if lat_w is not None:
        wgrid = np.broadcast_to(np.asarray(lat_w)[:, None], (nh, nw))
        wgrid = wgrid / wgrid.mean()
        for c, name in enumerate(NAMES):
            # per-forecast RMSE over the weighted grid, then the mean over forecasts
            wse = (wgrid * e[:, :, c] ** 2).mean(axis=(-2, -1))  # (B, T)
            ref[f"wmse/{name}"] = wse.mean()
            ref[f"wrmse/{name}"] = np.sqrt(wse.mean())  # root after the mean (WB2 RMSE)
            ref[f"wrmse_phys/{name}"] = np.sqrt((wgrid * ep[:, :, c] ** 2).mean((-2, -1)).mean())
            ref[f"wrmse_sqrt_before_time_avg/{name}"] = np.sqrt(wse).mean()
            ref[f"wrmse_sqrt_before_time_avg_phys/{name}"] = np.sqrt(
                (wgrid * ep[:, :, c] ** 2).mean((-2, -1))).mean()
            for t in range(nt):
                ref[f"wrmse/{name}/t{t + 1}"] = np.sqrt(wse[:, t].mean())
                ref[f"wrmse_sqrt_before_time_avg/{name}/t{t + 1}"] = np.sqrt(wse[:, t]).mean()
            if clim is not None:
                k = np.broadcast_to(clim.numpy(), p.shape)[:, :, c]
                fa, oa = p[:, :, c] - k, y[:, :, c] - k
                acc = (wgrid * fa * oa).sum((-2, -1)) / np.sqrt(
                    (wgrid * fa**2).sum((-2, -1)) * (wgrid * oa**2).sum((-2, -1))
                )
                ref[f"acc/{name}"] = acc.mean()
                ref[f"acc/{name}/t{T}"] = acc[:, -1].mean()
    return ref


def build(**kwargs) -> MetricAccumulator:
    return MetricAccumulator(T, C, offset=MEAN, scale=STD, channel_names=NAMES, **kwargs)


LATS = torch.linspace(-87.1875, 87.1875, H)


def assert_close_dicts(got: dict[str, float], want: dict[str, float], rel: float = 1e-9) -> None:
    missing = sorted(set(want) - set(got))
    assert not missing, f"keys not produced: {missing}"
    for key, value in want.items():
        assert got[key] == pytest.approx(float(value), rel=rel, abs=1e-12), key


# ---- every metric against numpy --------------------------------------------------------------


def test_every_metric_matches_numpy_reference():
    pred, target = make_batch(0)
    clim = torch.rand(T, C, H, W, dtype=torch.float64)
    acc = build(lat_weights=latitude_weights(LATS), climatology=clim)
    acc.update(pred, target)
    ref = np_reference(pred, target, MEAN, STD, latitude_weights(LATS).numpy(), clim)
    assert_close_dicts(acc.compute(), ref)


def test_small_grid_shrinks_the_ssim_windows():
    pred, target = make_batch(1, h=8, w=9)
    acc = build()
    acc.update(pred, target)
    ref = np_reference(pred, target, MEAN, STD, win=7, win_openstl=7)
    assert_close_dicts(acc.compute(), ref)
    pred, target = make_batch(2, h=6, w=9)
    acc = build()
    acc.update(pred, target)
    ref = np_reference(pred, target, MEAN, STD, win=5, win_openstl=5)
    assert_close_dicts(acc.compute(), ref)


def test_per_batch_climatology_overrides_the_constructor_one():
    pred, target = make_batch(3)
    clim = torch.rand(B, T, C, H, W, dtype=torch.float64)
    acc = build()
    acc.update(pred, target, climatology=clim)
    ref = np_reference(pred, target, MEAN, STD, np.ones(H), clim)
    got = acc.compute()
    for name in NAMES:
        assert got[f"acc/{name}"] == pytest.approx(ref[f"acc/{name}"], rel=1e-12)
    assert "wrmse/t2m" not in got  # no latitude weights given


# ---- closed-form answers ---------------------------------------------------------------------


def test_constant_error_field():
    target = torch.rand(2, T, C, H, W, dtype=torch.float64)
    acc = MetricAccumulator(T, C, scale=[2.0, 4.0], offset=[0.0, 1.0],
                            lat_weights=torch.rand(H) + 0.1)
    acc.update(target + 0.5, target)
    got = acc.compute()
    assert got["mse"] == pytest.approx(0.25)
    assert got["mae"] == pytest.approx(0.5)
    assert got["rmse"] == pytest.approx(0.5)
    assert got["mse_frame_sum"] == pytest.approx(0.25 * C * H * W)
    assert got["mae_frame_sum"] == pytest.approx(0.5 * C * H * W)
    assert got["mse_phys"] == pytest.approx((0.25 * 4 + 0.25 * 16) / 2)
    assert got["mae_phys"] == pytest.approx((0.5 * 2 + 0.5 * 4) / 2)
    assert got["psnr"] == pytest.approx(-10 * math.log10(0.25))
    # any weights with mean 1 give the unweighted RMSE of a constant error
    assert got["wrmse/c0"] == pytest.approx(0.5)
    assert got["wrmse_phys/c1"] == pytest.approx(2.0)
    assert got["wmse/c1/t3"] == pytest.approx(0.25)
    for t in range(1, T + 1):
        assert got[f"mse/t{t}"] == pytest.approx(0.25)


def test_psnr_of_a_known_per_frame_mse():
    # frame (b, t) gets error sqrt(m) everywhere with m = 10^-(b + t + 1)
    target = torch.zeros(2, T, 1, 12, 12, dtype=torch.float64)
    pred = target.clone()
    for b in range(2):
        for t in range(T):
            pred[b, t] = math.sqrt(10.0 ** -(b + t + 1))
    acc = MetricAccumulator(T, 1, data_range=1.0)
    acc.update(pred, target)
    got = acc.compute()
    expected = [[10.0 * (b + t + 1) for t in range(T)] for b in range(2)]
    assert got["psnr"] == pytest.approx(np.mean(expected))
    assert got["psnr/t1"] == pytest.approx((10 + 20) / 2)
    # data range 2 adds 20 log10(2) dB
    acc = MetricAccumulator(T, 1, data_range=2.0)
    acc.update(pred, target)
    assert acc.compute()["psnr"] == pytest.approx(np.mean(expected) + 20 * math.log10(2))


def test_perfect_forecast():
    _, target = make_batch(4)
    clim = torch.rand(C, H, W, dtype=torch.float64)
    acc = build(lat_weights=latitude_weights(LATS), climatology=clim)
    acc.update(target, target)
    got = acc.compute()
    for key in ("mse", "mae", "rmse", "mse_phys", "wrmse/t2m", "mse/t3"):
        assert got[key] == 0.0, key
    for key in ("ssim", "ssim_phys", "acc/t2m", "acc/u10", "ssim/t2"):
        assert got[key] == pytest.approx(1.0, abs=1e-12), key
    assert got["psnr"] == pytest.approx(100.0)  # the documented cap, not inf


def test_acc_of_opposite_and_climatology_forecasts():
    _, target = make_batch(5)
    clim = torch.rand(T, C, H, W, dtype=torch.float64)
    acc = build(lat_weights=latitude_weights(LATS), climatology=clim)
    acc.update(2 * clim - target, target)  # anomalies negated
    assert acc.compute()["acc/u10"] == pytest.approx(-1.0)
    acc.reset()
    acc.update(climatology_forecast(clim, B, T), target)  # zero forecast anomaly
    assert acc.compute()["acc/t2m"] == 0.0


def test_ssim_openstl_perfect_in_unit_range():
    _, target = make_batch(6)
    acc = MetricAccumulator(T, C)
    acc.update(target, target)
    assert acc.compute()["ssim_openstl"] == pytest.approx(1.0, abs=1e-12)
    assert acc.compute()["psnr_openstl"] == pytest.approx(100.0)


def test_latitude_weights():
    # WeatherBench's 5.625 deg rows (no pole row): cell areas are exactly cos(lat) / mean
    lats = torch.linspace(-87.1875, 87.1875, 32, dtype=torch.float64)
    w = latitude_weights(lats)
    assert w.shape == (32,) and float(w.mean()) == pytest.approx(1.0)
    expected = np.cos(np.deg2rad(lats.numpy()))
    np.testing.assert_allclose(w.numpy(), expected / expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(latitude_weights(lats.flip(0)).numpy(), w.flip(0).numpy())
    # pole rows get their half cell, 1 - cos(spacing / 2) of a unit sphere's band, not 0
    poles = latitude_weights(torch.linspace(-90, 90, 33, dtype=torch.float64))
    area = np.sin(np.deg2rad(np.r_[-90, np.arange(-87.1875, 90, 5.625), 90]))
    np.testing.assert_allclose(poles.numpy(), np.diff(area) / np.diff(area).mean(), rtol=1e-12)
    assert float(poles[0]) > 0 and torch.allclose(poles, poles.flip(0))
    with pytest.raises(ValueError, match="-90, 90"):
        latitude_weights([0.0, 91.0])
    with pytest.raises(ValueError, match="distinct"):
        latitude_weights([10.0, 10.0])


def test_physical_units_are_normalised_scaled_by_std():
    pred, target = make_batch(7)
    s = 3.5
    acc = MetricAccumulator(
        T, C, offset=[10.0, -4.0], scale=[s, s], channel_names=NAMES, lat_weights=torch.ones(H)
    )
    acc.update(pred, target)
    got = acc.compute()
    assert got["mse_phys"] == pytest.approx(s**2 * got["mse"], rel=1e-12)
    assert got["mae_phys"] == pytest.approx(s * got["mae"], rel=1e-12)
    assert got["rmse_phys"] == pytest.approx(s * got["rmse"], rel=1e-12)
    assert got["rmse_phys/t2"] == pytest.approx(s * got["rmse/t2"], rel=1e-12)
    assert got["mae_phys/u10"] == pytest.approx(s * got["mae/u10"], rel=1e-12)
    assert got["mse_frame_sum_phys"] == pytest.approx(s**2 * got["mse_frame_sum"], rel=1e-12)
    assert got["wrmse_phys/t2m"] == pytest.approx(s * got["wrmse/t2m"], rel=1e-12)
    assert got["psnr_phys"] == pytest.approx(got["psnr"], rel=1e-12)  # range scales with std


# ---- exact aggregation -----------------------------------------------------------------------


def test_uneven_batches_equal_the_concatenation():
    batches = [make_batch(10 + i, batch=n) for i, n in enumerate((1, 4, 2))]
    clim = torch.rand(T, C, H, W, dtype=torch.float64)
    kwargs = {"lat_weights": latitude_weights(LATS), "climatology": clim}
    streamed = build(**kwargs)
    for pred, target in batches:
        streamed.update(pred, target)
    whole = build(**kwargs)
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert_close_dicts(streamed.compute(), whole.compute(), rel=1e-12)


def test_summed_states_equal_one_accumulator(tmp_path):
    batches = [make_batch(20 + i, batch=n) for i, n in enumerate((2, 3, 1))]
    kwargs = {"lat_weights": latitude_weights(LATS), "climatology": torch.zeros(C, H, W)}
    one, first, second = build(**kwargs), build(**kwargs), build(**kwargs)
    for i, (pred, target) in enumerate(batches):
        one.update(pred, target)
        (first if i == 1 else second).update(pred, target)
    state = first.state()
    assert state.dtype == torch.float64 and state.ndim == 1
    first.load_state(state + second.state())  # what all_reduce(SUM) does across two workers
    assert_close_dicts(first.compute(), one.compute(), rel=1e-12)
    # one worker's SUM all-reduce (state, all_reduce, load_state, as the loop) leaves it alone
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)
    try:
        flat = first.state()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        first.load_state(flat)
    finally:
        dist.destroy_process_group()
    assert_close_dicts(first.compute(), one.compute(), rel=1e-12)


def test_per_lead_time_keys():
    pred, target = make_batch(30)
    acc = MetricAccumulator(T, C)
    acc.update(pred, target)
    got = acc.compute()
    for name in ("mse", "mae", "rmse", "ssim", "psnr", "mse_phys", "rmse_phys", "ssim_phys"):
        for t in range(1, T + 1):
            assert f"{name}/t{t}" in got
        assert f"{name}/t{T + 1}" not in got
    # equal counts per lead: overall sums are means of the per-lead ones
    for name in ("mse", "mae", "ssim", "psnr"):
        assert got[name] == pytest.approx(np.mean([got[f"{name}/t{t}"] for t in (1, 2, 3)]))
    assert not any(k.startswith(("wrmse", "acc")) for k in got)
    assert "mse/c0" not in got  # per-channel keys only with channel names


def test_persistence_forecast():
    x = torch.arange(2 * 4 * 1 * 2 * 2, dtype=torch.float32).view(2, 4, 1, 2, 2)
    y = persistence_forecast(x, 3)
    assert y.shape == (2, 3, 1, 2, 2)
    for t in range(3):
        assert torch.equal(y[:, t], x[:, -1])
    y[0, 0] = -1.0  # a copy, not a view of the input
    assert float(x.min()) == 0.0


# ---- bad input -------------------------------------------------------------------------------


def test_bad_input_is_rejected_with_a_clear_message():
    pred, target = make_batch(40)
    acc = build()
    with pytest.raises(RuntimeError, match="update"):
        acc.compute()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        acc.update(pred[0], target[0])
    with pytest.raises(ValueError, match="differ"):
        acc.update(pred, target[:, :, :, :-1])
    with pytest.raises(ValueError, match=r"\(T, C\) = \(3, 2\)"):
        acc.update(pred[:, :2], target[:, :2])
    with pytest.raises(ValueError, match="offset of length 2"):
        MetricAccumulator(T, C, offset=[0.0], scale=[1.0, 1.0])
    with pytest.raises(ValueError, match="scale of length 2"):
        MetricAccumulator(T, C, offset=[0.0, 0.0], scale=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="looks like t<k>"):
        MetricAccumulator(T, C, channel_names=["t2", "u"])
    with pytest.raises(ValueError, match="lat_weights"):
        build(lat_weights=torch.ones(H + 1)).update(pred, target)
    with pytest.raises(ValueError, match="climatology"):
        build(climatology=torch.zeros(T + 1, C, H, W))
    good = build(lat_weights=torch.ones(H), climatology=torch.zeros(C, H, W))
    good.update(pred, target)
    before = good.state().clone()
    with pytest.raises(ValueError, match="climatology grid"):
        good.update(pred[..., :-1], target[..., :-1])
    with pytest.raises(ValueError, match="per-batch climatology"):
        good.update(pred, target, climatology=torch.zeros(C, H, W))
    assert torch.equal(good.state(), before)  # a rejected batch leaves the sums alone
    with pytest.raises(ValueError, match="flat state"):
        acc.load_state(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_frames"):
        persistence_forecast(pred, 0)


# ---- OpenSTL's published-table metrics against scikit-image and OpenSTL's metric() -----------
# The reference follows openstl/core/metrics.py `metric()` and its loaders' conventions, written
# here in numpy from OpenSTL's code (not from ours); SSIM is scikit-image's own function.


def openstl_metric(pred, true, mean=None, std=None, channel_names=None, spatial_norm=False):
    """OpenSTL's metric(): de-normalise, MSE/MAE/RMSE (per variable group), clip, SSIM, PSNR."""
    from skimage.metrics import structural_similarity

    if mean is not None and std is not None:
        pred, true = pred * std + mean, true * std + mean

    def errors(p, t):
        norm = p.shape[-1] * p.shape[-2] * p.shape[-3] if spatial_norm else 1
        mse = np.mean((p - t) ** 2 / norm, axis=(0, 1)).sum()
        return mse, np.mean(np.abs(p - t) / norm, axis=(0, 1)).sum(), np.sqrt(mse)

    res = {}
    if channel_names is None:
        res["mse"], res["mae"], res["rmse"] = errors(pred, true)
    else:
        width = pred.shape[2] // len(channel_names)
        for i, name in enumerate(channel_names):
            part = slice(i * width, (i + 1) * width)
            values = errors(pred[:, :, part], true[:, :, part])
            for key, value in zip(("mse", "mae", "rmse"), values):
                res[f"{key}/{name}"] = value
        for key in ("mse", "mae", "rmse"):
            res[key] = sum(res[f"{key}/{n}"] for n in channel_names) / len(channel_names)
    pred = np.minimum(np.maximum(pred, 0), 1)
    ssim, psnr = [], []
    for b in range(pred.shape[0]):
        for f in range(pred.shape[1]):
            # cal_ssim(pred[b, f].swapaxes(0, 2), ..., multichannel=True) with skimage 0.19's
            # float defaults: 7x7 window, data range 2 (0.26 wants the range given explicitly)
            ssim.append(structural_similarity(
                pred[b, f].swapaxes(0, 2), true[b, f].swapaxes(0, 2), win_size=7,
                data_range=2.0, channel_axis=-1))
            psnr.append(-10 * np.log10(np.mean((pred[b, f] - true[b, f]) ** 2)))
    res["ssim"], res["psnr"] = np.mean(ssim), np.mean(psnr)
    return res


def digits_like(gen: np.random.Generator, shape) -> np.ndarray:
    """Moving-MNIST-like uint8 frames: black background, a few bright blobs, values 0..255."""
    frames = np.zeros(shape)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    for index in np.ndindex(*shape[:-2]):
        for _ in range(2):
            cy, cx = gen.uniform(4, h - 4), gen.uniform(4, w - 4)
            blob = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
            frames[index] = np.maximum(frames[index], blob)
    return np.round(frames)


def openstl_case(kind: str):
    """(our accumulator kwargs, our normalised pred/target, OpenSTL's loader arrays + metric
    kwargs) for the same physical forecast of one dataset kind."""
    gen = np.random.default_rng({"mmnist": 0, "taxibj": 1, "weather": 2, "mv": 3}[kind])
    if kind == "mmnist":  # 1 channel 0..255, fixed min-max 0 / 255; OpenSTL: x / 255
        true = digits_like(gen, (2, 3, 1, 24, 24))
        pred = np.clip(true + gen.normal(0, 40, true.shape), -30, 290)  # over- and undershoot
        ours = {"offset": [0.0], "scale": [255.0], "normalization": "minmax"}
        theirs = (pred / 255, true / 255, {})  # OpenSTL's dataset mean 0, std 1: no change
    elif kind == "taxibj":  # 2 channels stored in [-1, 1]; OpenSTL: (x + 1) / 2
        true = np.tanh(gen.normal(-0.5, 0.6, (2, 2, 2, 16, 16)))
        pred = true + gen.normal(0, 0.15, true.shape)
        ours = {"offset": [-1.0, -1.0], "scale": [2.0, 2.0], "normalization": "minmax"}
        theirs = ((pred + 1) / 2, (true + 1) / 2, {})
    else:  # weather: z-scored with the training mean / std, which metric() de-normalises with
        names = ["t2m"] if kind == "weather" else ["r_500", "r_850", "t_500", "t_850"]
        mean = np.array([278.0] if kind == "weather" else [60.0, 75.0, 252.0, 274.0])
        std = np.array([21.0] if kind == "weather" else [25.0, 18.0, 6.0, 9.0])
        shape = (2, 3, len(names), 12, 20)
        true = mean[:, None, None] + std[:, None, None] * gen.normal(0, 1, shape)
        spread = np.array([1.5] if kind == "weather" else [4.0, 4.0, 0.8, 0.8])
        pred = true + spread[:, None, None] * gen.normal(0, 1, shape)
        ours = {"offset": mean, "scale": std, "normalization": "zscore", "channel_names": names}
        scale = (std.reshape(1, 1, -1, 1, 1), mean.reshape(1, 1, -1, 1, 1))
        theirs = ((pred - scale[1]) / scale[0], (true - scale[1]) / scale[0],
                  {"mean": scale[1], "std": scale[0], "spatial_norm": True,
                   "channel_names": None if kind == "weather" else ["r", "t"]})
    offset = np.asarray(ours["offset"]).reshape(1, 1, -1, 1, 1)
    scale = np.asarray(ours["scale"]).reshape(1, 1, -1, 1, 1)
    normalised = [torch.from_numpy((a - offset) / scale) for a in (pred, true)]
    return ours, normalised, theirs


@pytest.mark.parametrize("kind", ["mmnist", "taxibj", "weather", "mv"])
def test_openstl_metrics_equal_openstl_metric_and_skimage(kind):
    ours, (pred, target), (p_openstl, t_openstl, metric_kwargs) = openstl_case(kind)
    t_len, c_len = pred.shape[1:3]
    acc = MetricAccumulator(t_len, c_len, **ours)
    acc.update(pred[:1], target[:1])
    acc.update(pred[1:], target[1:])
    got = acc.compute()
    want = openstl_metric(p_openstl, t_openstl, **metric_kwargs)
    for key in ("ssim", "psnr", "mse", "mae", "rmse"):
        assert got[f"{key}_openstl"] == pytest.approx(want[key], rel=1e-6), key
    if kind == "mv":  # per variable, then the plain mean over variables
        for key in ("mse/r", "rmse/t", "mae/t"):
            name, var = key.split("/")
            assert got[f"{name}_openstl/{var}"] == pytest.approx(want[key], rel=1e-6), key
    assert got["openstl_spatial_norm"] == (0.0 if ours["normalization"] == "minmax" else 1.0)
    if kind == "mmnist":  # physical 0..255 values where OpenSTL's [0, 1] go: the old bug
        assert got["ssim_openstl"] > 0.3 and got["psnr_openstl"] > 10
        wrong = MetricAccumulator(t_len, c_len, **{**ours, "normalization": "zscore"})
        wrong.update(pred, target)
        assert wrong.compute()["ssim_openstl"] < 0.01 and wrong.compute()["psnr_openstl"] < 0


def test_mv_rmse_is_the_mean_of_per_variable_rmses_not_the_pooled_one():
    ours, (pred, target), _ = openstl_case("mv")
    acc = MetricAccumulator(pred.shape[1], pred.shape[2], **ours)
    acc.update(pred, target)
    got = acc.compute()
    assert got["rmse_openstl"] == pytest.approx((got["rmse_openstl/r"] + got["rmse_openstl/t"]) / 2)
    assert got["rmse_openstl"] != pytest.approx(got["rmse_phys"], rel=1e-3)  # pooled differs
    assert got["mse_openstl"] == pytest.approx(got["mse_phys"], rel=1e-12)  # equal-size groups


def test_openstl_variable_groups():
    assert openstl_variables(["t2m"]) == {"all": [0]}
    assert openstl_variables(["u10", "v10"]) == {"all": [0, 1]}  # OpenSTL pools uv10
    assert openstl_variables(["r_150", "r_500", "t_150", "t_500"]) == {"r": [0, 1], "t": [2, 3]}
    assert openstl_variables(["t2m", "t_500", "t_850"]) == {"t2m": [0], "t": [1, 2]}
    with pytest.raises(ValueError, match="normalization 'robust'; valid"):
        MetricAccumulator(T, C, normalization="robust")


def test_the_training_loop_reports_the_paper_table_keys(tmp_path):
    """loop.evaluate passes the store's normalisation kind on and reports val/*_openstl."""
    from simvp_ray.train.loop import Runtime, evaluate
    from simvp_ray.train.performance import SpeedOptions

    _, (pred, target), _ = openstl_case("taxibj")
    x = pred.float()  # inputs whose last frames are the "forecast" of the model below

    class LastFrames(torch.nn.Module):
        def forward(self, inputs):
            return inputs[:, -target.shape[1]:]

    runtime = Runtime(train_batches=lambda epoch: [], val_batches=lambda: [{"x": x, "y": target}],
                      steps_per_epoch=1, checkpoint_dir=tmp_path, report=lambda *a: None,
                      metrics=MetricContext(offset=[-1.0, -1.0], scale=[2.0, 2.0],
                                            normalization="minmax"))
    metrics = evaluate(LastFrames(), runtime.val_batches(), runtime, SpeedOptions(),
                       target.shape[1], target.shape[2])
    direct = MetricAccumulator(target.shape[1], 2, offset=[-1.0, -1.0], scale=[2.0, 2.0],
                               normalization="minmax")
    direct.update(x[:, -target.shape[1]:].double(), target)
    want = direct.compute()
    for key in ("mse_openstl", "mae_openstl", "rmse_openstl", "ssim_openstl", "psnr_openstl",
                "openstl_spatial_norm"):
        assert metrics[f"val/{key}"] == pytest.approx(want[key], rel=1e-6), key
    assert metrics["val/openstl_spatial_norm"] == 0.0


# ---- the metric context: the one contract behind every accumulator ----------------------------


def test_metric_context_round_trips_exactly_and_names_a_missing_field():
    import json

    context = MetricContext(offset=np.array(MEAN), scale=np.array(STD), normalization="zscore",
                            channel_names=NAMES, latitudes=LATS.numpy())
    data = context.to_dict()
    assert data == {"offset": MEAN, "scale": STD, "normalization": "zscore",
                    "channel_names": NAMES, "latitudes": LATS.tolist()}
    assert MetricContext.from_dict(json.loads(json.dumps(data))) == context
    assert MetricContext.from_dict(data).to_dict() == data
    bare = MetricContext([0.0], [255.0], "minmax")
    assert MetricContext.from_dict(bare.to_dict()) == bare and bare.to_dict()["latitudes"] is None
    with pytest.raises(ValueError, match="missing field 'latitudes' of MetricContext"):
        MetricContext.from_dict({k: v for k, v in data.items() if k != "latitudes"})
    with pytest.raises(ValueError, match="unknown field 'mean' of MetricContext"):
        MetricContext.from_dict({**data, "mean": MEAN})
    with pytest.raises(ValueError, match="one value per channel"):
        MetricContext([0.0], [1.0, 1.0], "zscore")


def test_the_context_builds_the_accumulator_its_fields_describe(tmp_path):
    from simvp_ray.data import Stats, write_synthetic

    context = MetricContext(MEAN, STD, "zscore", NAMES, LATS)
    pred, target = make_batch(40)
    built, direct = context.accumulator(T, C), build(lat_weights=latitude_weights(LATS))
    for acc in (built, direct):
        acc.update(pred, target)
    assert built.compute() == direct.compute()
    # from a store: its training statistics of the named channels, in that order
    dataset = write_synthetic(tmp_path / "s.zarr", n_frames=64, channels=2, size=8)
    picked = MetricContext.from_dataset(dataset, ["blobs_1"])
    assert picked == MetricContext([dataset.stats.offset[1]], [dataset.stats.scale[1]],
                                   "zscore", ["blobs_1"], None)
    assert MetricContext.from_dataset(dataset).channel_names == ("blobs_0", "blobs_1")
    period = Stats("zscore", np.array([5.0]), np.array([3.0]), "test")
    assert picked.with_stats(period) == MetricContext([5.0], [3.0], "zscore", ["blobs_1"])


def test_every_view_of_the_headline_list_names_keys_the_accumulator_computes():
    """A renamed key must fail here, not turn into a NaN column of some table."""
    from simvp_ray import metric_keys, reporting
    from simvp_ray.analysis import evaluation, experiment

    acc = build(lat_weights=latitude_weights(LATS), climatology=torch.zeros(C, H, W))
    acc.update(*make_batch(50))
    got = acc.compute()
    assert tuple(got)[:len(metric_keys.SCOPE_KEYS)] == metric_keys.SCOPE_KEYS  # compute()'s order
    prefixes = {key.split("/")[0] for key in got}  # wrmse exists per channel only
    views = {
        "summary": metric_keys.SUMMARY_KEYS, "epoch": metric_keys.EPOCH_KEYS,
        "reporting": reporting.METRICS, "overall": evaluation.OVERALL,
        "per lead": [f"{key}/t1" for key in evaluation.PER_LEAD],
        "openstl image": [f"{key}_openstl" for key in evaluation.OPENSTL_IMAGE],
        "openstl weather": [f"{key}_openstl" for key in evaluation.OPENSTL_WEATHER],
        "experiment": [c for c, _, _ in experiment.QUALITY + experiment.PAPER_IMAGE
                       + experiment.PAPER_WEATHER] + experiment.PAPER_KEYS,
    }
    for view, keys in views.items():
        assert [key for key in keys if key not in got and key not in prefixes] == [], view
