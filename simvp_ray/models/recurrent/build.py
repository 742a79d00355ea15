"""ModelConfig <-> OpenSTL's `configs` for the recurrent methods, and building them."""

from __future__ import annotations

from typing import Any

from torch import nn

from simvp_ray.config import ModelConfig, RecurrentConfig

# our method key -> OpenSTL's method name (configs["method"]; we accept either case)
OPENSTL_NAMES = {"convlstm": "ConvLSTM", "predrnn": "PredRNN", "predrnnpp": "PredRNNpp",
                 "predrnnv2": "PredRNNv2", "mim": "MIM", "e3dlstm": "E3DLSTM", "mau": "MAU",
                 "phydnet": "PhyDNet"}


def openstl_configs(model: ModelConfig) -> dict[str, Any]:
    """The `configs` OpenSTL's model and method read, from a ModelConfig."""
    rnn = model.recurrent
    return {
        "method": OPENSTL_NAMES.get(model.method, model.method),
        "in_shape": [model.in_frames, model.channels, model.height, model.width],
        "pre_seq_length": model.in_frames,
        "aft_seq_length": model.out_frames,
        "total_length": model.in_frames + model.out_frames,
        "patch_size": rnn.patch_size,
        "num_hidden": ",".join(map(str, rnn.num_hidden)),
        "filter_size": rnn.filter_size,
        "stride": rnn.stride,
        "layer_norm": int(rnn.layer_norm),
        "reverse_scheduled_sampling": int(rnn.reverse_scheduled_sampling),
        "scheduled_sampling": 1,
        "sampling_stop_iter": rnn.sampling_stop_iter,
        "sampling_start_value": 1.0,
        "sampling_changing_rate": rnn.sampling_changing_rate,
        "r_sampling_step_1": rnn.r_sampling_step_1,
        "r_sampling_step_2": rnn.r_sampling_step_2,
        "r_exp_alpha": rnn.r_exp_alpha,
        "decouple_beta": rnn.decouple_beta,
        "sr_size": rnn.sr_size,
        "tau": rnn.tau,
        "cell_mode": rnn.cell_mode,
        "model_mode": rnn.model_mode,
    }


def build_recurrent(model: ModelConfig) -> nn.Module:
    from simvp_ray.models.recurrent import RECURRENT_MODELS

    if model.method not in RECURRENT_MODELS:
        raise ValueError(f"unknown model.method {model.method!r}; valid: simvp, "
                         f"{', '.join(RECURRENT_MODELS)}")
    net = RECURRENT_MODELS[model.method](openstl_configs(model))
    # the quirks that live in the model; openstl_quirks=false fixes them (train/methods.py
    # fixes the sampler's): MIM's cell state carried across batches, PhyDNet's broadcast loss
    if model.method in CARRIED_STATE_METHODS:
        net.carry_state = model.recurrent.openstl_quirks
    if model.method in TEACHER_FORCING_METHODS:
        net.loss_quirk = model.recurrent.openstl_quirks
    return net


# How each method's training step feeds the future (spec/rnn.md section 2): scheduled sampling
# masks (reverse scheduled sampling when recurrent.reverse_scheduled_sampling), or PhyDNet's
# one teacher-forcing decision per batch.
TEACHER_FORCING_METHODS = ("phydnet",)
NO_RSS_METHODS = ("mau", "phydnet")  # their models have no RSS branch
CARRIED_STATE_METHODS = ("mim",)  # a cell state carried from batch to batch (OpenSTL's MIM)


def training_mask_shape(model: ModelConfig, batch: int) -> tuple[int, ...]:
    """Shape of the `mask_true` a method's `training_loss` takes: OpenSTL's (B, Tm, H/p, W/p,
    p*p*C) sampling mask (Tm = total-2 under RSS, aft-1 under SS); PhyDNet: () (one 0/1
    teacher-forcing flag for the batch)."""
    if model.method in TEACHER_FORCING_METHODS:
        return ()
    rnn = model.recurrent
    p = rnn.patch_size
    slots = (model.in_frames + model.out_frames - 2 if rnn.reverse_scheduled_sampling
             else model.out_frames - 1)
    return (batch, slots, model.height // p, model.width // p, p * p * model.channels)


def model_config_from_openstl(configs: dict[str, Any]) -> ModelConfig:
    """The inverse of `openstl_configs`: a ModelConfig (to train or resume with) from the
    configs of an OpenSTL recurrent run; settings OpenSTL's configs leave out keep our defaults."""
    method = str(configs.get("method", "")).lower()
    if method not in OPENSTL_NAMES:
        raise ValueError(f"unknown OpenSTL recurrent method {configs.get('method')!r}; valid: "
                         f"{', '.join(OPENSTL_NAMES.values())}")
    if "in_shape" not in configs or len(configs["in_shape"]) != 4:
        raise ValueError(f"{method} configs need in_shape = (T, C, H, W), got "
                         f"{configs.get('in_shape')}")
    frames, channels, height, width = (int(v) for v in configs["in_shape"])
    defaults = RecurrentConfig()
    num_hidden = configs.get("num_hidden", defaults.num_hidden)
    if isinstance(num_hidden, str):
        num_hidden = tuple(int(v) for v in num_hidden.split(","))
    recurrent = {name: type(getattr(defaults, name))(configs[name])
                 for name in ("filter_size", "patch_size", "stride", "decouple_beta",
                              "sampling_stop_iter", "sampling_changing_rate", "r_sampling_step_1",
                              "r_sampling_step_2", "r_exp_alpha", "sr_size", "tau", "cell_mode",
                              "model_mode") if name in configs}
    for flag in ("layer_norm", "reverse_scheduled_sampling"):
        if flag in configs:
            recurrent[flag] = bool(int(configs[flag]))
    return ModelConfig(method=method, in_frames=int(configs.get("pre_seq_length", frames)),
                       out_frames=int(configs.get("aft_seq_length", frames)), channels=channels,
                       height=height, width=width,
                       recurrent=RecurrentConfig(num_hidden=tuple(num_hidden), **recurrent))
