"""MIM, MAU, PhyDNet and E3D-LSTM reproduce OpenSTL's outputs, losses and gradients
(spec/parity/rnn fixtures, tolerances from its README) and its params / fvcore FLOPs.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import shared_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from simvp_ray.models.profile import FVCORE_FLOP_MAPPINGS
from simvp_ray.models.recurrent.e3dlstm import E3DLSTM, recall
from simvp_ray.models.recurrent.mau import MAU
from simvp_ray.models.recurrent.mim import MIM
from simvp_ray.models.recurrent.patch import reshape_patch, reshape_patch_back
from simvp_ray.models.recurrent.phydnet import PhyDNet

SAMPLED = {"mim.pt": MIM, "mau.pt": MAU, "mau_recall_residual.pt": MAU}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load(name: str) -> dict:
    return torch.load(shared_file(f"spec/parity/rnn/{name}"), weights_only=True)


def build(cls: type[nn.Module], fx: dict) -> nn.Module:
    model = cls(fx["configs"])
    model.load_state_dict(fx["state_dict"], strict=True)
    return model


def assert_grads_match(model: nn.Module, grads: dict, without_grad: list[str]) -> None:
    for name, param in model.named_parameters():
        if name in grads:
            ref = grads[name]
            err = (param.grad - ref).abs().max().item()
            assert err <= 1e-4 * ref.abs().max().item() + 1e-7, (name, err)
        else:
            assert param.grad is None and name in without_grad, name
            assert not param.requires_grad, name
    assert set(without_grad) <= {n for n, _ in model.named_parameters()}


def assert_loss_close(loss: torch.Tensor, ref: float) -> None:
    assert abs(loss.item() - ref) <= 1e-5 * abs(ref) + 1e-7, (loss.item(), ref)


# ---------------------------------------------------------------------------------------
# Scheduled-sampling models: MIM, MAU (both configurations)


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_training_pass_matches_openstl(name):
    fx = load(name)
    tr = fx["train"]
    model = build(SAMPLED[name], fx).train()
    next_frames, loss = model.openstl_forward(tr["frames_tensor"], tr["mask_true"])
    torch.testing.assert_close(next_frames, tr["next_frames"], rtol=1e-5, atol=5e-5)
    assert_loss_close(loss, tr["loss"])
    loss.backward()
    assert_grads_match(model, tr["grads"], tr["params_without_grad"])


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_training_loss_from_batches_and_flags(name):
    # The trainer's entry point: raw frames, patched inside; the mask as OpenSTL's tensor or
    # as its per-slot flags gives the same loss.
    fx = load(name)
    tr = fx["train"]
    model = build(SAMPLED[name], fx).train()
    assert_loss_close(model.training_loss(fx["batch_x"], fx["batch_y"], tr["mask_true"]),
                      tr["loss"])
    if name == "mim.pt":
        model.reset_state()
    assert_loss_close(model.training_loss(fx["batch_x"], fx["batch_y"], tr["mask_flags"]),
                      tr["loss"])


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_eval_forecast_matches_openstl(name):
    fx = load(name)
    model = build(SAMPLED[name], fx).eval()
    with torch.no_grad():
        pred = model(fx["batch_x"])
    torch.testing.assert_close(pred, fx["test"]["pred_y"], rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_float64_matches_openstl_twins(name):
    fx = load(name)
    tr = fx["train"]
    model = build(SAMPLED[name], fx).double()
    next_frames, loss = model.openstl_forward(tr["frames_tensor"].double(),
                                              tr["mask_true"].double())
    torch.testing.assert_close(next_frames, tr["next_frames_fp64"], rtol=0, atol=1e-10)
    assert abs(loss.item() - tr["loss_fp64"]) <= 1e-10
    if name == "mim.pt":
        model.reset_state()
    with torch.no_grad():
        pred = model.eval()(fx["batch_x"].double())
    torch.testing.assert_close(pred, fx["test"]["pred_y_fp64"], rtol=0, atol=1e-10)


def test_mim_carries_its_stationary_memory_like_openstl():
    fx = load("mim.pt")
    tr, chained = fx["train"], fx["mim"]["test_chained"]
    model = build(MIM, fx)
    model.openstl_forward(tr["frames_tensor"], tr["mask_true"])
    for state, ref in zip(model.stationary_state(), fx["mim"]["state_after_train"], strict=True):
        torch.testing.assert_close(state, ref, rtol=1e-5, atol=5e-5)
    with torch.no_grad():  # validation right after training starts from the carried state
        pred = model.eval()(fx["batch_x"])
    torch.testing.assert_close(pred, chained["pred_y"], rtol=1e-5, atol=5e-5)

    model = build(MIM, fx).double()  # the float64 twin chains its own float64 training pass
    model.openstl_forward(tr["frames_tensor"].double(), tr["mask_true"].double())
    with torch.no_grad():
        pred = model.eval()(fx["batch_x"].double())
    torch.testing.assert_close(pred, chained["pred_y_fp64"], rtol=0, atol=1e-10)


def test_mim_batch_size_change_is_an_error_and_carry_can_be_switched_off():
    fx = load("mim.pt")
    model = build(MIM, fx).eval()
    with torch.no_grad():
        model(fx["batch_x"])
        with pytest.raises(ValueError, match="same size: got a batch of 1 after one of 2"):
            model(fx["batch_x"][:1])
        model.carry_state = False
        first, second = model(fx["batch_x"]), model(fx["batch_x"])
    assert torch.equal(first, second)
    torch.testing.assert_close(first, fx["test"]["pred_y"], rtol=1e-5, atol=5e-5)


# ---------------------------------------------------------------------------------------
# PhyDNet (its own interface: no patching, no masks, teacher forcing per batch)


def unpack_nibbles(entry: dict) -> torch.Tensor:
    """The README's 4-bit packing: w = scale * (q_k - 7.5), low nibble first, row-major."""
    q, shape = entry["q"], entry["shape"]
    nibbles = torch.stack([q & 15, q >> 4], dim=1).flatten()[:torch.Size(shape).numel()]
    return (entry["scale"] * (nibbles.float() - 7.5)).reshape(shape)


@pytest.fixture(scope="module")
def phydnet_fx() -> dict:
    fx = load("phydnet.pt")
    state = dict(fx["state_dict"])
    state.update({k: unpack_nibbles(e) for k, e in fx["state_dict_packed"].items()})
    state.update({alias: state[key] for alias, key in fx["state_dict_aliases"].items()})
    return {**fx, "full_state_dict": state}


def build_phydnet(fx: dict) -> PhyDNet:
    model = PhyDNet(fx["configs"])
    model.load_state_dict(fx["full_state_dict"], strict=True)
    return model


def assert_phydnet_grads(model: PhyDNet, step: dict, factor: float = 1.0) -> None:
    for name, param in model.named_parameters():
        if name in step["grads"]:
            grad, ref = param.grad, step["grads"][name] * factor
        else:
            sample = step["grad_samples"][name]
            grad, ref = param.grad.flatten()[::sample["stride"]], sample["values"] * factor
        err = (grad - ref).abs().max().item()
        assert err <= 1e-4 * ref.abs().max().item() + 1e-7, (name, err)


@pytest.mark.parametrize("step", ["train_tf_on", "train_tf_off"])
def test_phydnet_training_pass_matches_openstl(phydnet_fx, step):
    fx, ref = phydnet_fx, phydnet_fx[step]
    model = build_phydnet(fx).train()
    loss, images = model.model_loss(fx["batch_x"], fx["batch_y"], ref["use_teacher_forcing"])
    torch.testing.assert_close(images, ref["output_images"], rtol=1e-5, atol=5e-5)
    assert_loss_close(loss, ref["model_loss"])
    loss.backward()
    assert_phydnet_grads(model, ref)

    # What OpenSTL's training step back-propagates: its broadcast quirk, by default.
    model.zero_grad()
    model.teacher_forcing = ref["use_teacher_forcing"]
    method_loss = model.training_loss(fx["batch_x"], fx["batch_y"])
    assert_loss_close(method_loss, ref["method_loss"])
    method_loss.backward()
    assert_phydnet_grads(model, ref, factor=ref["dmethod_loss_dmodel_loss"])
    model.loss_quirk = False
    assert_loss_close(model.training_loss(fx["batch_x"], fx["batch_y"]), ref["model_loss"])


def test_phydnet_forecast_and_float64_match_openstl(phydnet_fx):
    fx = phydnet_fx
    model = build_phydnet(fx).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fx["batch_x"]), fx["test"]["pred_y"], rtol=1e-5,
                                   atol=5e-5)
        model.double()
        torch.testing.assert_close(model(fx["batch_x"].double()), fx["test"]["pred_y_fp64"],
                                   rtol=0, atol=1e-10)
        for step in ("train_tf_on", "train_tf_off"):
            ref = fx[step]
            loss, _ = model.model_loss(fx["batch_x"].double(), fx["batch_y"].double(),
                                       ref["use_teacher_forcing"])
            assert abs(loss.item() - ref["model_loss_fp64"]) <= 1e-10


def test_phydnet_keeps_openstl_buffers_aliases_and_schedule(phydnet_fx):
    fresh = PhyDNet(phydnet_fx["configs"]).state_dict()
    for key in ("k2m._M0", "k2m._invM0", "k2m._M1", "k2m._invM1"):
        torch.testing.assert_close(fresh[key], phydnet_fx["state_dict"][key], rtol=0,
                                   atol=1e-12)
    for alias, key in phydnet_fx["state_dict_aliases"].items():
        assert fresh[alias].data_ptr() == fresh[key].data_ptr()  # one tensor, two names
    ratio = PhyDNet.teacher_forcing_ratio
    assert (ratio(0), ratio(100), ratio(334)) == (1.0, pytest.approx(0.7), 0.0)
    assert ratio(199) == pytest.approx(0.403)


# ---------------------------------------------------------------------------------------
# Params and fvcore FLOPs of the full Moving-MNIST presets


def measured(key: str) -> dict:
    path = shared_file("spec/parity/rnn/mmnist_measure.json")
    return next(r for r in json.loads(path.read_text())["results"] if r["key"] == key)


def fvcore_flops(model: nn.Module, run, custom_mapping=None) -> int:
    """Multiply-adds as fvcore counts them: convs / matmuls / einsums (torch counts 2 FLOPs
    per multiply-add) plus 5 per element of every affine LayerNorm / GroupNorm input."""
    norm = 0

    def count_norm(module, inputs, output):
        nonlocal norm
        norm += inputs[0].numel() * (5 if module.weight is not None else 4)

    hooks = [m.register_forward_hook(count_norm) for m in model.modules()
             if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    with FlopCounterMode(display=False, custom_mapping=custom_mapping or {}) as counter:
        run()
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2 + norm


def sampled_dummy_pass(model, record: dict) -> None:
    """OpenSTL's FLOPs input: a batch-1, fully teacher-forced training pass (spec/rnn.md 6)."""
    cfg = record["hparams"]
    _, c, h, w = cfg["in_shape"]
    p = cfg["patch_size"]
    frames = torch.ones(1, cfg["total_length"], h // p, w // p, p * p * c)
    mask = torch.ones(1, cfg["aft_seq_length"] - 1, h // p, w // p, p * p * c)
    model.openstl_forward(frames, mask)


def phydnet_dummy_pass(model, record: dict) -> None:
    """PhyDNet's: its training forward on ones with teacher_forcing_ratio 0."""
    _, c, h, w = record["hparams"]["in_shape"]
    frames = torch.ones(1, record["hparams"]["pre_seq_length"], c, h, w)
    model.model_loss(frames, frames, teacher_forcing=False)


MEASURED = {"mim": (MIM, sampled_dummy_pass, None), "mau": (MAU, sampled_dummy_pass, None),
            "phydnet": (PhyDNet, phydnet_dummy_pass, None),
            "e3dlstm": (E3DLSTM, sampled_dummy_pass, FVCORE_FLOP_MAPPINGS["e3dlstm"])}


@pytest.mark.parametrize("key", sorted(MEASURED))
def test_params_and_flops_equal_openstl_measure(key):
    record = measured(key)
    cls, dummy_pass, custom = MEASURED[key]
    configs = {**record["hparams"], **record["scheduled_sampling"]}
    with torch.device("meta"):
        model = cls(configs)
        assert sum(p.numel() for p in model.parameters()) == record["params"]
        frozen = {n: p.numel() for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen == record["params_without_grad"]
        flops = fvcore_flops(model, lambda: dummy_pass(model, record), custom)
        assert flops == record["fvcore_flops"]


# ---------------------------------------------------------------------------------------
# E3D-LSTM: no fixture here (OpenSTL's is held out), so a training-mode smoke test


E3D_CFG = {"in_shape": [3, 1, 8, 8], "pre_seq_length": 3, "aft_seq_length": 3,
           "total_length": 6, "patch_size": 2, "num_hidden": "4,4", "filter_size": 5,
           "stride": 1, "layer_norm": 0, "reverse_scheduled_sampling": 0}


@pytest.mark.parametrize("layer_norm", [0, 1])
def test_e3dlstm_trains_with_mse_plus_l1_and_zero_memory_gradient(layer_norm):
    torch.manual_seed(0)
    model = E3DLSTM({**E3D_CFG, "layer_norm": layer_norm}).train()
    x, y = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    flags = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = model.training_loss(x, y, flags)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        # The global memory is never updated (OpenSTL's cell returns its input memory), so
        # conv_gm sees only zeros: exactly zero gradient, as OpenSTL's (spec/rnn.md 3.6); with
        # layer_norm its LayerNorm sees a constant map, so only that LayerNorm's bias learns.
        if ".conv_gm." in name and not name.endswith("conv_gm.1.bias"):
            assert torch.count_nonzero(param.grad) == 0, name
        else:
            assert torch.count_nonzero(param.grad) > 0, name

    frames = torch.cat([x, y], dim=1)
    patched = reshape_patch(frames, 2)
    next_frames, model_loss = model.openstl_forward(patched, flags[:, :, None, None, None]
                                                    .expand(2, 2, 4, 4, 4))
    assert next_frames.shape == (2, 5, 4, 4, 4)
    target = patched[:, 1:]
    expected = F.mse_loss(next_frames, target) + F.l1_loss(next_frames, target)
    torch.testing.assert_close(model_loss, expected)
    torch.testing.assert_close(loss, expected)


def test_e3dlstm_recall_tokens_are_a_raw_reshape_and_unscaled():
    # spec/rnn.md 3.6: the (nh, 2, H, W) map is cut row-major into rows of nh numbers. With
    # nh = 2, T = 2, H = W = 1 the query [1, 2, 3, 4] gives tokens [1, 2] and [3, 4] (per-position
    # channel vectors would be [1, 3] and [2, 4]); keys = values = [1, 0] and [0, 1].
    query = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 2, 1, 1)
    history = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 2, 2, 1, 1)
    rows = [torch.softmax(torch.tensor(scores), dim=0) for scores in ([1.0, 2.0], [3.0, 4.0])]
    expected = torch.cat(rows).view(1, 2, 2, 1, 1)  # out token = weights @ [[1, 0], [0, 1]]
    torch.testing.assert_close(recall(query, history), expected)


def test_e3dlstm_forecast_is_the_test_mask_pass_also_under_reverse_sampling():
    torch.manual_seed(0)
    model = E3DLSTM({**E3D_CFG, "reverse_scheduled_sampling": 1}).eval()
    x, y = torch.rand(2, 3, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    # OpenSTL's RSS test mask: true inputs 1..pre-1, own predictions after (2 + 2 slots).
    test_mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(2, 4)
    with torch.no_grad():
        pred = model(x)
        patched = reshape_patch(torch.cat([x, y], dim=1), 2)
        next_frames, _ = model.openstl_forward(patched, test_mask[:, :, None, None, None]
                                               .expand(2, 4, 4, 4, 4))
    assert pred.shape == (2, 3, 1, 8, 8)
    torch.testing.assert_close(pred, reshape_patch_back(next_frames[:, -3:], 2), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Configs a method cannot run


MIM_CFG = {"in_shape": [4, 1, 16, 16], "pre_seq_length": 4, "aft_seq_length": 4,
           "total_length": 8, "patch_size": 2, "num_hidden": "8,8", "filter_size": 3,
           "stride": 1, "layer_norm": 0, "reverse_scheduled_sampling": 0}
MAU_CFG = {**MIM_CFG, "patch_size": 1, "sr_size": 2, "tau": 2, "cell_mode": "normal",
           "model_mode": "normal"}
PHYDNET_CFG = {"in_shape": [4, 1, 16, 16], "pre_seq_length": 4, "aft_seq_length": 4,
               "total_length": 8, "patch_size": 4}


@pytest.mark.parametrize(("cls", "base", "change", "message"), [
    (MIM, MIM_CFG, {"num_hidden": "8"}, "needs at least 2 layers"),
    (MIM, MIM_CFG, {"num_hidden": "8,16"}, "needs equal layer widths"),
    (MIM, MIM_CFG, {"patch_size": 3}, "not divisible by patch_size=3"),
    (MIM, MIM_CFG, {"total_length": 9}, "total_length 9 != pre_seq_length"),
    (MIM, MIM_CFG, {"aft_seq_length": 0, "total_length": 4}, "must be >= 1"),
    (MIM, MIM_CFG, {"stride": 2}, "stride must be 1"),
    (MAU, MAU_CFG, {"patch_size": 4}, "patch_size=4 is not supported"),
    (MAU, MAU_CFG, {"sr_size": 3}, "sr_size=3 must be a power of 2"),
    (MAU, MAU_CFG, {"cell_mode": "gated"}, "cell_mode='gated'"),
    (MAU, MAU_CFG, {"reverse_scheduled_sampling": 1}, "scheduled sampling only"),
    (MAU, {k: v for k, v in MAU_CFG.items() if k != "tau"}, {}, "configs lacks 'tau'"),
    (PhyDNet, PHYDNET_CFG, {"patch_size": 1}, "patch_size=1 must be 2 or 4"),
    (PhyDNet, PHYDNET_CFG, {"pre_seq_length": 1}, "pre_seq_length=1 must be >= 2"),
])
def test_bad_configs_are_one_line_errors(cls, base, change, message):
    with pytest.raises(ValueError, match=message):
        cls({**base, **change})


def test_bad_mask_and_frames_are_errors():
    model = MIM(MIM_CFG)
    assert (model.spec.mask_length,
            MIM({**MIM_CFG, "reverse_scheduled_sampling": 1}).spec.mask_length) == \
        (3, 6)
    x, y = torch.rand(2, 4, 1, 16, 16), torch.rand(2, 4, 1, 16, 16)
    with pytest.raises(ValueError, match=r"needs \(B=2, 3, ...\)"):
        model.training_loss(x, y, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 4, 1, 16, 16\)"):
        model(torch.rand(2, 4, 2, 16, 16))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 4, 1, 16, 16\)"):
        model(torch.rand(2, 3, 1, 16, 16))
    phydnet = PhyDNet(PHYDNET_CFG)
    with pytest.raises(ValueError, match="must be a 0-dim teacher-forcing flag"):
        phydnet.training_loss(x, y, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"batch_y of shape \(2, 3, 1, 16, 16\) must be"):
        phydnet.training_loss(x, y[:, :3])
