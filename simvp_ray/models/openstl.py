"""Interop with OpenSTL: its `SimVP_Model` keyword arguments (or, for the recurrent methods, its
`configs` with a `method` key) and state dicts, both ways.

Our module tree has OpenSTL's key names, so a state dict loads with no renaming; this module
maps the constructor arguments, strips wrapper prefixes and turns mismatches into clear errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simvp_ray.config import ModelConfig
from simvp_ray.models.recurrent import RECURRENT_MODELS
from simvp_ray.models.simvp import build_model
from simvp_ray.models.translators import canonical_name

# OpenSTL SimVP_Model kwarg -> ModelConfig field (in_shape is split into four fields).
KWARG_TO_FIELD = {
    "hid_S": "spatial_channels",
    "hid_T": "translator_channels",
    "N_S": "num_spatial_layers",
    "N_T": "num_translator_blocks",
    "model_type": "translator",
    "mlp_ratio": "mlp_ratio",
    "drop": "dropout",
    "drop_path": "drop_path",
    "spatio_kernel_enc": "encoder_kernel",
    "spatio_kernel_dec": "decoder_kernel",
}

# Prefixes that trainers and wrappers put in front of the model's keys.
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")


def config_from_openstl(kwargs: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig from OpenSTL's SimVP_Model(**kwargs); unknown keys are an error."""
    unknown = sorted(set(kwargs) - set(KWARG_TO_FIELD) - {"in_shape", "act_inplace"})
    if unknown:
        raise ValueError(f"unknown SimVP_Model arguments {unknown}; valid: in_shape, "
                         f"{', '.join(KWARG_TO_FIELD)}")
    if "in_shape" not in kwargs:
        raise ValueError("SimVP_Model arguments need in_shape = (T, C, H, W)")
    in_shape = list(kwargs["in_shape"])
    if len(in_shape) != 4:
        raise ValueError(f"in_shape must be (T, C, H, W), got {in_shape}")
    frames, channels, height, width = (int(v) for v in in_shape)
    fields = {KWARG_TO_FIELD[key]: value for key, value in kwargs.items() if key in KWARG_TO_FIELD}
    if "translator" in fields:
        fields["translator"] = canonical_name(str(fields["translator"]))
    return ModelConfig(in_frames=frames, out_frames=frames, channels=channels, height=height,
                       width=width, **{k: _as_field_type(k, v) for k, v in fields.items()})


def _as_field_type(name: str, value: Any) -> Any:
    default = getattr(ModelConfig(), name)
    return type(default)(value)


def openstl_kwargs(config: ModelConfig) -> dict[str, Any]:
    """The inverse: SimVP_Model keyword arguments for a ModelConfig."""
    kwargs = {key: getattr(config, field) for key, field in KWARG_TO_FIELD.items()}
    kwargs["in_shape"] = [config.in_frames, config.channels, config.height, config.width]
    return kwargs


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a common `model.` / `module.` / `_orig_mod.` prefix (Lightning, DDP, compile)."""
    state = dict(state_dict)
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """load_state_dict(strict=True) with one ValueError listing every mismatch."""
    expected = model.state_dict()
    state = strip_wrapper_prefixes(state_dict)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(state[key].shape)}"
        for key in expected if key in state and expected[key].shape != state[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes ({len(wrong_shape)}): {_preview(wrong_shape)}")
    if problems:
        raise ValueError("state dict does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def from_openstl(openstl_kwargs: Mapping[str, Any],
                 state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Our model from OpenSTL SimVP_Model kwargs, or from the configs of a recurrent method
    (`configs["method"]`, e.g. "PredRNN"), optionally loaded with its state dict (strict)."""
    method = str(openstl_kwargs.get("method", "simvp")).lower()
    if method == "simvp":
        kwargs = {k: v for k, v in openstl_kwargs.items() if k != "method"}
        model = build_model(config_from_openstl(kwargs))
    elif method in RECURRENT_MODELS:
        model = RECURRENT_MODELS[method](openstl_kwargs)
    else:
        raise ValueError(f"unknown OpenSTL method {openstl_kwargs['method']!r}; valid: SimVP, "
                         f"{', '.join(RECURRENT_MODELS)}")
    if state_dict is not None:
        load_checked(model, state_dict)
    return model


def to_openstl_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict OpenSTL's SimVP_Model loads with strict=True (DDP / compile unwrapped)."""
    return strip_wrapper_prefixes(model.state_dict())
