"""Grids of any size: SimVP pads a frame that its encoder cannot halve evenly (replicating the
edges, at the bottom / right) and crops every prediction back to the real grid."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from simvp_ray.config import ModelConfig
from simvp_ray.models import build_model
from simvp_ray.models.profile import count_flops

# ERA5 UK's grid (33 x 49) at N_S = 4: down-sampling factor 4, padded to 36 x 52
ODD = ModelConfig(in_frames=3, out_frames=3, channels=2, height=33, width=49,
                  spatial_channels=8, translator_channels=16, num_spatial_layers=4,
                  num_translator_blocks=2, mlp_ratio=2.0)


def unpadded_reference(model, x: torch.Tensor) -> torch.Tensor:
    """OpenSTL's SimVP_Model.forward, written out over the model's own modules (no padding)."""
    b, t, c, h, w = x.shape
    embed, skip = model.enc(x.reshape(b * t, c, h, w))
    _, c_, h_, w_ = embed.shape
    hid = model.hid(embed.view(b, t * c_, h_, w_)).reshape(b * t, c_, h_, w_)
    return model.dec(hid, skip).reshape(b, t, c, h, w)


@pytest.mark.parametrize("translator", ["gsta", "incepu", "tau", "convmixer", "mlp"])
def test_odd_grid_shapes_and_gradients(translator):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ODD, translator=translator)).train()
    x = torch.rand(2, 3, 2, 33, 49)
    y = model(x)
    assert y.shape == (2, 3, 2, 33, 49) and torch.isfinite(y).all()
    F.mse_loss(y, torch.rand_like(y)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{translator}: {name} has an all-zero gradient"


def test_prediction_is_the_padded_run_cropped():
    """model(x) on 33 x 49 == OpenSTL's forward on x edge-replicated to 36 x 52, cropped; the
    gradients of a loss on the real grid agree too."""
    torch.manual_seed(0)
    model = build_model(ODD).eval()
    x = torch.rand(2, 3, 2, 33, 49)
    padded = F.pad(x.reshape(6, 2, 33, 49), (0, 3, 0, 3), mode="replicate").reshape(2, 3, 2, 36,
                                                                                      52)
    assert torch.equal(padded[..., 35, 51], x[..., 32, 48])  # the corner replicates
    y = model(x)
    reference = unpadded_reference(model, padded)[..., :33, :49]
    assert torch.equal(y, reference)
    target = torch.rand_like(y)
    grads = torch.autograd.grad(F.mse_loss(y, target), list(model.parameters()))
    ref_grads = torch.autograd.grad(F.mse_loss(reference, target), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("translator", ["gsta", "incepu"])
def test_a_grid_that_divides_is_not_padded(translator):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ODD, translator=translator, height=32,
                                            width=48)).eval()
    x = torch.rand(2, 3, 2, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), unpadded_reference(model, x))  # bit-identical


def test_flops_count_the_padded_grid():
    assert count_flops(ODD) == count_flops(dataclasses.replace(ODD, height=36, width=52))
