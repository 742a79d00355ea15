"""Training losses on (B, T, C, H, W) predictions, chosen by name: `mse` (SimVP) and `tau`
(MSE + alpha * differential divergence, OpenSTL's TAU method, Tan et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element (torch's `MSELoss()`, reduction mean)."""
    _check_shapes(pred, target)
    return F.mse_loss(pred, target)


def differential_divergence(
    pred: Tensor, target: Tensor, temperature: float = 0.1, eps: float = 1e-12
) -> Tensor:
    """TAU's differential-divergence regulariser (OpenSTL `diff_div_reg`); 0 when T <= 2.

    The frame differences x[:, 1:] - x[:, :-1], each flattened over (C, H, W), become
    distributions by softmax(diff / temperature); the loss is the elementwise mean over
    (B, T - 1, C*H*W) of p * log(p / (q + eps) + eps), p from pred and q from target: a KL
    divergence divided by the element count rather than summed per distribution.
    """
    _check_shapes(pred, target)
    b, t = pred.shape[:2]
    if t <= 2:
        # OpenSTL skips the term for short horizons; a tensor keeps the graph uniform
        return pred.new_zeros(())
    diff_pred = (pred[:, 1:] - pred[:, :-1]).reshape(b, t - 1, -1)  # (B, T-1, C*H*W)
    diff_target = (target[:, 1:] - target[:, :-1]).reshape(b, t - 1, -1)
    p = F.softmax(diff_pred / temperature, dim=-1)
    q = F.softmax(diff_target / temperature, dim=-1)
    return (p * torch.log(p / (q + eps) + eps)).mean()


def tau_loss(pred: Tensor, target: Tensor, alpha: float = 0.1) -> Tensor:
    """OpenSTL's TAU objective: MSE + alpha * differential divergence (alpha 0.1 in its configs)."""
    return mse_loss(pred, target) + alpha * differential_divergence(pred, target)


LOSSES: dict[str, Callable[..., Tensor]] = {"mse": mse_loss, "tau": tau_loss}


def build_loss(name: str, tau_alpha: float = 0.1) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss `loss(pred, target) -> scalar` named by `TrainConfig.loss`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}")
    if name == "tau":
        return partial(tau_loss, alpha=tau_alpha)
    return LOSSES[name]


def _check_shapes(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 5:
        raise ValueError(f"expected pred of shape (B, T, C, H, W), got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
