"""Losses: MSE and OpenSTL's TAU objective against numpy references; the name registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simvp_ray.train.losses import (
    LOSSES,
    build_loss,
    differential_divergence,
    mse_loss,
    tau_loss,
)


def np_differential_divergence(pred: np.ndarray, target: np.ndarray, tau=0.1, eps=1e-12):
    b, t = pred.shape[:2]
    if t <= 2:
        return 0.0

    def softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        ez = np.exp(z)
        return ez / ez.sum(axis=-1, keepdims=True)

    p = softmax(np.diff(pred, axis=1).reshape(b, t - 1, -1) / tau)
    q = softmax(np.diff(target, axis=1).reshape(b, t - 1, -1) / tau)
    return float(np.mean(p * np.log(p / (q + eps) + eps)))


def make(t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, t, 3, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randn(2, t, 3, 5, 6, generator=gen, dtype=torch.float64)
    return pred, target


def test_mse_matches_numpy():
    pred, target = make(4)
    expected = np.mean((pred.numpy() - target.numpy()) ** 2)
    assert float(mse_loss(pred, target)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [3, 5])
def test_tau_loss_matches_numpy(t):
    pred, target = make(t, seed=t)
    p, y = pred.numpy(), target.numpy()
    div = np_differential_divergence(p, y)
    assert div > 0
    assert float(differential_divergence(pred, target)) == pytest.approx(div, rel=1e-10)
    expected = np.mean((p - y) ** 2) + 0.3 * div
    assert float(tau_loss(pred, target, alpha=0.3)) == pytest.approx(expected, rel=1e-10)
    assert float(build_loss("tau", tau_alpha=0.3)(pred, target)) == pytest.approx(expected)


@pytest.mark.parametrize("t", [1, 2])
def test_tau_is_mse_for_short_horizons(t):
    pred, target = make(t)
    assert float(differential_divergence(pred, target)) == 0.0
    assert float(tau_loss(pred, target)) == pytest.approx(float(mse_loss(pred, target)))


def test_divergence_of_a_perfect_forecast_is_zero():
    _, target = make(4)
    assert abs(float(differential_divergence(target, target))) < 1e-9


def test_tau_loss_has_gradients():
    pred, target = make(4)
    pred = pred.float().requires_grad_()
    tau_loss(pred, target.float()).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert float(pred.grad.abs().sum()) > 0


def test_registry_and_unknown_name():
    assert set(LOSSES) == {"mse", "tau"}
    assert build_loss("mse") is mse_loss
    with pytest.raises(ValueError, match=r"unknown loss 'l1'.*\['mse', 'tau'\]"):
        build_loss("l1")


def test_shape_mismatch_is_rejected():
    pred, target = make(3)
    with pytest.raises(ValueError, match="differ"):
        mse_loss(pred, target[:, :2])
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        tau_loss(pred[0], target[0])
