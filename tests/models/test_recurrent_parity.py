"""Our recurrent models reproduce OpenSTL's own outputs, losses and gradients
(spec/parity/rnn fixtures, made by OpenSTL's model *and* method classes at 1 thread).

Every fixture of the common format runs through the shared interface only (`from_openstl`,
`model(batch_x)`, `model.training_loss`), so a method registered later is checked the same
way; a fixture whose method is not in RECURRENT_MODELS is skipped.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SHARED_DIR, shared_file

from simvp_ray.models import from_openstl, to_openstl_state_dict
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.models.recurrent.common import eval_mask, mask_from_flags

FIXTURES = sorted(p.name for p in (SHARED_DIR / "spec" / "parity" / "rnn").glob("*.pt")) or [
    "convlstm.pt", "predrnn.pt", "predrnn_ln_rss.pt", "predrnnpp.pt"]  # shown as skipped


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(name: str) -> dict:
    fx = torch.load(shared_file(f"spec/parity/rnn/{name}"), weights_only=True)
    if fx["method"].lower() not in RECURRENT_MODELS:  # OpenSTL writes "MIM", "PhyDNet"
        pytest.skip(f"method {fx['method']!r} is not registered in RECURRENT_MODELS")
    if "train" not in fx:
        pytest.skip(f"{name} has its own format (PhyDNet); its model's tests check it")
    return fx


def fresh(fx: dict) -> torch.nn.Module:
    # a new model per pass: MIM carries state across calls (fixtures: test from a fresh state)
    return from_openstl(fx["configs"], fx["state_dict"])


def assert_grads_match(model: torch.nn.Module, train: dict) -> None:
    for name, param in model.named_parameters():
        if name in train["grads"]:
            ref = train["grads"][name]
            error = (param.grad - ref).abs().max().item()
            assert error <= 1e-4 * ref.abs().max().item() + 1e-7, (name, error)
        else:
            # built by OpenSTL, never used: kept, and never gets a gradient
            assert param.grad is None and name in train["params_without_grad"], name
    assert {n for n, _ in model.named_parameters()} >= set(train["grads"])


@pytest.mark.parametrize("name", FIXTURES)
def test_training_loss_and_gradients_match_openstl(name):
    fx = load(name)
    train = fx["train"]
    model = fresh(fx).train()
    loss = model.training_loss(fx["batch_x"], fx["batch_y"], train["mask_true"])
    assert abs(loss.item() - train["loss"]) <= 1e-5 * train["loss"] + 1e-7
    loss.backward()
    assert_grads_match(model, train)


@pytest.mark.parametrize("name", FIXTURES)
def test_forecast_matches_openstl_test_pass(name):
    fx = load(name)
    model = fresh(fx).eval()
    with torch.no_grad():
        pred = model(fx["batch_x"])
    torch.testing.assert_close(pred, fx["test"]["pred_y"], rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("name", FIXTURES)
def test_float64_matches_openstl_float64(name):
    fx = load(name)
    train = fx["train"]
    model = fresh(fx).double().train()
    with torch.no_grad():
        loss = model.training_loss(fx["batch_x"].double(), fx["batch_y"].double(),
                                   train["mask_true"].double())
    assert abs(loss.item() - train["loss_fp64"]) <= 1e-12
    model = fresh(fx).double().eval()
    with torch.no_grad():
        pred = model(fx["batch_x"].double())
    torch.testing.assert_close(pred, fx["test"]["pred_y_fp64"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FIXTURES)
def test_model_level_next_frames_and_masks(name):
    """OpenSTL's model call on the stored patched frames; our patching and masks, exactly."""
    fx = load(name)
    model = fresh(fx)
    if not hasattr(model, "openstl_forward"):
        pytest.skip(f"{fx['method']} has no patched model-level call")
    train, test = fx["train"], fx["test"]
    assert torch.equal(model.patch(fx["batch_x"], fx["batch_y"]), train["frames_tensor"])
    assert torch.equal(mask_from_flags(train["mask_flags"], model.spec), train["mask_true"])
    assert torch.equal(eval_mask(model.spec, fx["batch_x"].shape[0], fx["batch_x"]),
                       test["mask_true"])
    with torch.no_grad():
        next_frames, _ = model.openstl_forward(train["frames_tensor"], train["mask_true"])
        torch.testing.assert_close(next_frames, train["next_frames"], rtol=1e-5, atol=5e-5)
        # a fresh model: MIM's first call left its carried state behind
        next64, _ = fresh(fx).double().openstl_forward(train["frames_tensor"].double(),
                                                   train["mask_true"].double())
    torch.testing.assert_close(next64, train["next_frames_fp64"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FIXTURES)
def test_state_dict_exports_openstl_keys(name):
    fx = load(name)
    exported = to_openstl_state_dict(fresh(fx))
    assert exported.keys() == fx["state_dict"].keys()
    for key, value in fx["state_dict"].items():
        assert torch.equal(exported[key], value), key


@pytest.mark.parametrize("name", FIXTURES)
def test_openstl_configs_become_a_model_config_that_builds_the_same_model(name):
    from simvp_ray.models import build_model
    from simvp_ray.models.openstl import load_checked
    from simvp_ray.models.recurrent.build import model_config_from_openstl

    fx = load(name)
    model = build_model(model_config_from_openstl(fx["configs"]))
    load_checked(model, fx["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(fx["batch_x"]), fx["test"]["pred_y"],
                                   rtol=1e-5, atol=5e-5)
