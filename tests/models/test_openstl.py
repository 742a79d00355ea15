"""OpenSTL interop: constructor arguments, state dict prefixes and mismatches."""

from __future__ import annotations

import pytest
import torch

from simvp_ray.models import build_model, from_openstl, to_openstl_state_dict
from simvp_ray.models.openstl import config_from_openstl, openstl_kwargs

SMALL_KWARGS = {"in_shape": [4, 2, 32, 32], "hid_S": 16, "hid_T": 32, "N_S": 2, "N_T": 3,
                "model_type": "gSTA", "mlp_ratio": 4.0, "drop": 0.0, "drop_path": 0.0,
                "spatio_kernel_enc": 3, "spatio_kernel_dec": 3}


def test_kwargs_round_trip():
    config = config_from_openstl(SMALL_KWARGS)
    assert config.translator == "gsta" and config.spatial_channels == 16
    assert config_from_openstl(openstl_kwargs(config)) == config


def test_state_dict_round_trip_between_two_models():
    torch.manual_seed(0)
    source = from_openstl(SMALL_KWARGS)
    target = from_openstl(SMALL_KWARGS, to_openstl_state_dict(source)).eval()
    x = torch.rand(1, 4, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source.eval()(x), target(x), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["model.", "module.", "_orig_mod.", "model.module."])
def test_wrapper_prefixes_are_stripped(prefix):
    state = {prefix + key: value for key, value in from_openstl(SMALL_KWARGS).state_dict().items()}
    from_openstl(SMALL_KWARGS, state)


def test_compiled_or_ddp_wrapped_model_exports_plain_keys():
    model = from_openstl(SMALL_KWARGS)
    wrapped = torch.nn.Sequential()
    wrapped.add_module("module", model)
    assert set(to_openstl_state_dict(wrapped)) == set(model.state_dict())


def test_missing_unexpected_and_wrong_shape_keys_are_listed():
    state = from_openstl(SMALL_KWARGS).state_dict()
    state.pop("dec.readout.bias")
    state["hid.enc.9.block.extra"] = torch.zeros(1)
    state["enc.enc.0.conv.conv.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError) as error:
        from_openstl(SMALL_KWARGS, state)
    message = str(error.value)
    assert "missing keys (1): dec.readout.bias" in message
    assert "unexpected keys (1): hid.enc.9.block.extra" in message
    assert "enc.enc.0.conv.conv.weight: expected (16, 2, 3, 3), got (16, 3, 3, 3)" in message


def test_state_dict_of_another_translator_is_rejected():
    other = build_model(config_from_openstl({**SMALL_KWARGS, "model_type": "IncepU"}))
    with pytest.raises(ValueError, match="state dict does not match the model"):
        from_openstl(SMALL_KWARGS, other.state_dict())


@pytest.mark.parametrize("kwargs, message", [
    ({**SMALL_KWARGS, "hid_Z": 3}, "unknown SimVP_Model arguments \\['hid_Z'\\]"),
    ({k: v for k, v in SMALL_KWARGS.items() if k != "in_shape"}, "need in_shape"),
    ({**SMALL_KWARGS, "in_shape": [4, 2, 32]}, "in_shape must be \\(T, C, H, W\\)"),
    ({**SMALL_KWARGS, "model_type": "lstm"}, "unknown translator 'lstm'"),
])
def test_bad_openstl_kwargs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_openstl(kwargs)
