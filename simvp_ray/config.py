"""One training run's configuration: frozen dataclasses, dotted overrides, exact dict round trip.

One override mechanism serves the CLIs (`--set model.translator=swin optim.lr=3e-4`), YAML
files and Tune search spaces: `override(config, {"optim.lr": 3e-4})`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecurrentConfig:
    """OpenSTL's recurrent baselines (model.method != "simvp"): their `configs` entries.

    Defaults are OpenSTL's Moving MNIST configs (spec/rnn.md section 4); the sampling
    schedules are spec/rnn.md section 2.
    """

    num_hidden: tuple[int, ...] = (128, 128, 128, 128)  # width per layer ("128,128,128,128")
    filter_size: int = 5  # conv kernel of the cells (E3D-LSTM ignores it: (2, 5, 5))
    patch_size: int = 4  # space-to-depth factor (MAU: 1; PhyDNet: 2 or 4)
    stride: int = 1
    layer_norm: bool = False  # LayerNorm after each cell conv (MAU: always on)
    reverse_scheduled_sampling: bool = False  # RSS (PredRNNv2's recipe) instead of SS
    decouple_beta: float = 0.1  # PredRNNv2's decoupling-loss weight
    sampling_stop_iter: int = 50000  # SS: eta reaches 0 at this global step
    sampling_changing_rate: float = 2e-5  # SS: eta decrement per step
    r_sampling_step_1: int = 25000  # RSS: first / second phase boundaries
    r_sampling_step_2: int = 50000
    r_exp_alpha: float = 5000.0  # RSS: time constant of the input-frame ramp
    sr_size: int = 4  # MAU: down-sampling factor of its encoder
    tau: int = 5  # MAU: attention history length
    cell_mode: str = "normal"  # MAU: normal | residual
    model_mode: str = "normal"  # MAU: normal | recall
    openstl_quirks: bool = True  # keep OpenSTL's training quirks (MAU's never-stored eta,
    # PhyDNet's MSE(scalar, targets) step, MIM's state carried across batches); False fixes
    # them (datasets/README.md)


@dataclass(frozen=True)
class ModelConfig:
    """SimVP model: encoder -> translator -> decoder. OpenSTL names in the comments.

    `method` != "simvp" builds one of OpenSTL's recurrent baselines instead (its settings in
    `recurrent`; the frame fields below are shared, the SimVP fields are then unused).
    """

    translator: str = "gsta"  # OpenSTL `model_type`; see simvp_ray.models.TRANSLATORS
    in_frames: int = 4  # T of in_shape (pre_seq_length)
    out_frames: int = 4  # aft_seq_length; != in_frames is handled by cropping or roll-out
    channels: int = 2  # C of in_shape
    height: int = 32  # H of in_shape; any size (padded to 2 ** (N_S // 2) inside the model)
    width: int = 32  # W of in_shape
    spatial_channels: int = 32  # hid_S: width of the ConvSC encoder / decoder
    translator_channels: int = 256  # hid_T: width inside the translator
    num_spatial_layers: int = 2  # N_S: ConvSC layers in the encoder and in the decoder (even)
    num_translator_blocks: int = 8  # N_T: translator blocks (>= 2)
    mlp_ratio: float = 8.0  # SimVP_Model's default; no OpenSTL config changes it
    dropout: float = 0.0  # `drop`
    drop_path: float = 0.0  # stochastic depth of the last translator block (OpenSTL schedule)
    encoder_kernel: int = 3  # spatio_kernel_enc
    decoder_kernel: int = 3  # spatio_kernel_dec
    # simvp | convlstm | predrnn | predrnnpp | predrnnv2 | mim | e3dlstm | mau | phydnet
    method: str = "simvp"
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)  # method != simvp


@dataclass(frozen=True)
class DataConfig:
    """Which Zarr store to read and how to cut it into (input, target) windows."""

    url: str = ""  # local path or s3:// URL of a store in the datasets/README.md schema;
    # "" = the embedded synthetic dataset (written once to a local cache)
    frame_step: int = 1  # use every k-th frame (e.g. 6 for 6-hourly from hourly data)
    frame_offsets: tuple[int, ...] = ()  # explicit step offsets of a window's frames (OpenSTL's
    # multi-variable WeatherBench index lists); overrides frame_step when given
    window_stride: int = 1  # distance between consecutive window starts, in steps
    channels: tuple[str, ...] = ()  # channel names to use; () = all of the store's
    windows_per_read: int = 256  # windows one Ray Data read task emits (chunk-aligned)
    batch_size: int = 16  # per training step, summed over all workers (OpenSTL: 16 on 1 GPU)
    val_batch_size: int = 16
    shuffle: bool = True  # training windows in a seeded random order (else in time order)
    shuffle_buffer_bytes: int = 256 << 20  # streaming: frames a worker holds and shuffles
    # windows across (about 8 random runs of chunks, as iter_numpy_batches does)
    mode: str = "auto"  # resident | streaming | auto (resident when the splits fit the budget)
    resident_max_bytes: int = 0  # resident budget; 0 = 0.4 x the smallest node's object store


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule, as OpenSTL's SimVP recipes train."""

    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # onecycle (per step) | cosine (per epoch, warm-up) | constant
    warmup_epochs: int = 0  # cosine only
    warmup_lr: float = 1e-5  # cosine warm-up start
    min_lr: float = 1e-6  # cosine floor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's own knobs."""

    epochs: int = 50
    seed: int = 42
    loss: str = "mse"  # mse | tau (MSE + alpha * differential divergence, OpenSTL's TAU)
    tau_alpha: float = 0.1
    precision: str = "fp32"  # fp32 | bf16 (autocast where the device supports it)
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    keep_checkpoints: int = 2  # best N by val/mse
    max_steps_per_epoch: int = 0  # 0 = the whole split; >0 caps an epoch (smoke runs)
    log_every_s: float = 30.0  # a progress line this often within an epoch; 0 = none


@dataclass(frozen=True)
class ScalingConfig:
    """How many Ray Train workers, and what each one holds."""

    num_workers: int = 1
    min_workers: int = 0  # > 0 and < num_workers: elastic, goes on with fewer after a loss
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3  # worker-group restarts from the latest checkpoint
    wait_for_resources: bool = False  # wait for an autoscaler instead of failing fast


@dataclass(frozen=True)
class RunConfig:
    name: str = "demo"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


# ---------------------------------------------------------------------------------------
# Dotted overrides


def _is_config(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def valid_keys(config: Any, prefix: str = "") -> list[str]:
    """Every dotted key that `override` accepts for this config, in declaration order."""
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _is_config(value):
            keys.extend(valid_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn `value` (a CLI string or a Python value) into `annotation`, or raise ValueError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        items = value
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            items = [part for part in text.split(",") if part.strip()] if text else []
        if not isinstance(items, list | tuple):
            raise ValueError(f"{key}: expected a sequence, got {value!r}")
        item_type = args[0] if args else str
        return tuple(_coerce(key, item, item_type) for item in items)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value)
        elif annotation is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str):
                return int(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif annotation is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)
        elif annotation is str:
            if isinstance(value, str):
                return value
        else:
            raise AssertionError(f"unsupported config field type {annotation!r}")
    except ValueError as err:
        raise ValueError(f"{key}: expected {annotation.__name__}, got {value!r} ({err})") from None
    raise ValueError(f"{key}: expected {annotation.__name__}, got {value!r}")


def _split_assignment(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    key, value = item.split("=", 1)
    return key.strip(), value


def override(config: Any, changes: Mapping[str, Any] | Iterable[str]) -> Any:
    """A copy of `config` with dotted keys replaced.

    `changes` is a mapping {"optim.lr": 3e-4} or a list of "key=value" strings. Unknown keys
    and values of the wrong type raise ValueError naming the valid keys.
    """
    if not isinstance(changes, Mapping):
        changes = dict(_split_assignment(item) for item in changes)
    for key, value in changes.items():
        config = _override_one(config, key.split("."), value, prefix="")
    return config


def _override_one(config: Any, parts: list[str], value: Any, prefix: str) -> Any:
    head, rest = parts[0], parts[1:]
    full_key = prefix + ".".join(parts)
    names = {f.name for f in dataclasses.fields(config)}
    current = getattr(config, head) if head in names else None
    if head not in names or (rest and not _is_config(current)):
        raise ValueError(
            f"unknown config key {full_key!r}; valid keys: {', '.join(valid_keys(config, prefix))}"
        )
    if _is_config(current):
        if not rest:
            raise ValueError(
                f"{full_key!r} is a section, not a value; set one of its keys: "
                f"{', '.join(valid_keys(current, full_key + '.'))}"
            )
        replaced = _override_one(current, rest, value, f"{prefix}{head}.")
        return dataclasses.replace(config, **{head: replaced})
    coerced = _coerce(full_key, value, _field_types(type(config))[head])
    return dataclasses.replace(config, **{head: coerced})


# ---------------------------------------------------------------------------------------
# Dict / JSON round trip


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), JSON-serialisable."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _is_config(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Inverse of `to_dict`; unknown keys and wrong types raise ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown keys {unknown}; valid keys: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, data[name])
        else:
            kwargs[name] = _coerce(name, data[name], annotation)
    return cls(**kwargs)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_json(cls: type, text: str) -> Any:
    return from_dict(cls, json.loads(text))


def flatten(config: Any) -> dict[str, Any]:
    """{"model.translator": "gsta", ...}: the dotted view used by Tune and analysis tables."""
    return _flatten_dict(to_dict(config))


def _flatten_dict(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
