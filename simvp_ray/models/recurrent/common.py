"""What the patched recurrent models share: reading OpenSTL's configs, conv(+LayerNorm) blocks,
the masks, and the recurrent loop over frames with OpenSTL's input selection and loss.

Layouts (spec/rnn.md sections 1-2): frames (B, T, C, H, W); OpenSTL's patched tensors and
masks (B, T, H/p, W/p, p*p*C), channels last; inside the cells (B, ch, H/p, W/p).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from simvp_ray.models.recurrent.patch import reshape_patch, reshape_patch_back

REQUIRED_KEYS = ("in_shape", "pre_seq_length", "aft_seq_length", "patch_size", "num_hidden",
                 "filter_size")


@dataclass(frozen=True)
class RecurrentSpec:
    """The configs entries OpenSTL's RNN models and methods read, parsed and checked."""

    method: str  # OpenSTL method key, lower case
    in_frames: int  # pre_seq_length
    out_frames: int  # aft_seq_length
    channels: int
    height: int
    width: int
    patch_size: int
    num_hidden: tuple[int, ...]
    filter_size: int
    stride: int = 1
    layer_norm: bool = False
    reverse_scheduled_sampling: bool = False
    decouple_beta: float = 0.1

    @property
    def total_length(self) -> int:
        return self.in_frames + self.out_frames

    @property
    def num_layers(self) -> int:
        return len(self.num_hidden)

    @property
    def frame_channels(self) -> int:
        """p * p * C: the channels of one patched frame."""
        return self.patch_size * self.patch_size * self.channels

    @property
    def grid(self) -> tuple[int, int]:
        """(H/p, W/p): the grid the cells run on."""
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def mask_length(self) -> int:
        """Time slots of OpenSTL's sampling mask: total-2 under RSS, aft-1 under SS."""
        if self.reverse_scheduled_sampling:
            return self.total_length - 2
        return self.out_frames - 1


def parse_num_hidden(value: Any) -> tuple[int, ...]:
    """OpenSTL's "128,128,128,128" string (or a list of ints) -> (128, 128, 128, 128)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        widths = tuple(int(str(item).strip()) for item in items)
    except ValueError:
        raise ValueError(f"num_hidden must be comma-separated integers, got {value!r}") from None
    if not widths or min(widths) < 1:
        raise ValueError(f"num_hidden needs at least one width >= 1, got {value!r}")
    return widths


def config_value(configs: Mapping[str, Any], key: str, method: str) -> Any:
    """configs[key], or a ValueError naming the missing key (a method-specific entry)."""
    if key not in configs:
        raise ValueError(f"{method}: configs lacks {key!r} (OpenSTL's configs give it)")
    return configs[key]


def parse_configs(configs: Mapping[str, Any], method: str) -> RecurrentSpec:
    """A RecurrentSpec from OpenSTL's configs mapping; ValueError on what cannot run."""
    missing = [key for key in REQUIRED_KEYS if key not in configs]
    if missing:
        raise ValueError(f"{method} configs lack {missing}; needed: {', '.join(REQUIRED_KEYS)}")
    in_shape = list(configs["in_shape"])
    if len(in_shape) != 4:
        raise ValueError(f"in_shape must be (T, C, H, W), got {in_shape}")
    _, channels, height, width = (int(v) for v in in_shape)
    pre, aft = int(configs["pre_seq_length"]), int(configs["aft_seq_length"])
    total = int(configs.get("total_length", pre + aft))
    if pre < 1 or aft < 1:
        raise ValueError(f"{method}: pre_seq_length and aft_seq_length must be >= 1, got "
                         f"{pre} and {aft}")
    if total != pre + aft:
        raise ValueError(f"{method}: total_length {total} != pre_seq_length + aft_seq_length "
                         f"= {pre + aft} (OpenSTL's loops disagree then)")
    spec = RecurrentSpec(
        method=method, in_frames=pre, out_frames=aft, channels=channels, height=height,
        width=width, patch_size=int(configs["patch_size"]),
        num_hidden=parse_num_hidden(configs["num_hidden"]),
        filter_size=int(configs["filter_size"]), stride=int(configs.get("stride", 1)),
        layer_norm=bool(int(configs.get("layer_norm", 0))),
        reverse_scheduled_sampling=bool(int(configs.get("reverse_scheduled_sampling", 0))),
        decouple_beta=float(configs.get("decouple_beta", 0.1)))
    if spec.patch_size < 1 or height % spec.patch_size or width % spec.patch_size:
        raise ValueError(f"{method}: frame size {height}x{width} is not divisible by "
                         f"patch_size={spec.patch_size}")
    if spec.stride != 1:
        # the cells' outputs would shrink and no longer match their states
        raise ValueError(f"{method}: stride must be 1 (every OpenSTL config), got {spec.stride}")
    if spec.filter_size < 1 or spec.filter_size % 2 == 0:
        raise ValueError(f"{method}: filter_size must be odd (same-size convs), got "
                         f"{spec.filter_size}")
    return spec


def check_equal_widths(spec: RecurrentSpec) -> None:
    """The zig-zag memory passes through every layer, so all widths must be equal."""
    if len(set(spec.num_hidden)) != 1:
        raise ValueError(f"{spec.method}: the zig-zag memory needs equal layer widths, got "
                         f"num_hidden={','.join(map(str, spec.num_hidden))}")


def conv_block(c_in: int, c_out: int, spec: RecurrentSpec) -> nn.Sequential:
    """OpenSTL's `Sequential(Conv2d(k, no bias)[, LayerNorm([c_out, H/p, W/p])])`."""
    k = spec.filter_size
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=spec.stride, padding=k // 2,
                                         bias=False)]
    if spec.layer_norm:
        layers.append(nn.LayerNorm([c_out, *spec.grid]))
    return nn.Sequential(*layers)


def freeze_unused(*modules: nn.Module) -> None:
    """Parameters OpenSTL builds and never uses: kept (keys, counts) but never trained."""
    for module in modules:
        module.requires_grad_(False)


def mask_from_flags(flags: torch.Tensor, spec: RecurrentSpec) -> torch.Tensor:
    """(B, Tm) 0/1 flags -> OpenSTL's mask (B, Tm, H/p, W/p, p*p*C), constant per slot."""
    hp, wp = spec.grid
    b, tm = flags.shape
    return flags[:, :, None, None, None].expand(b, tm, hp, wp, spec.frame_channels).contiguous()


def eval_mask(spec: RecurrentSpec, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The mask OpenSTL's method forward builds: all own predictions (SS), or the true
    input frames 1 .. pre-1 then own predictions (RSS)."""
    flags = like.new_zeros(batch, spec.mask_length)
    if spec.reverse_scheduled_sampling:
        flags[:, :spec.in_frames - 1] = 1.0
    return mask_from_flags(flags, spec)


class RecurrentModel(nn.Module):
    """What every OpenSTL RNN model here shares: its parsed configs (`spec`), the frame checks,
    OpenSTL's patching and its per-step input selection under a sampling mask."""

    method = ""

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__()
        self.spec = parse_configs(configs, self.method)

    def check_frames(self, x: torch.Tensor, frames: int, what: str) -> None:
        spec = self.spec
        expected = (frames, spec.channels, spec.height, spec.width)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"{spec.method}: expected {what} of shape (B, {shape}), got "
                             f"{tuple(x.shape)}")

    def patch(self, batch_x: torch.Tensor, batch_y: torch.Tensor) -> torch.Tensor:
        """OpenSTL's method-level frames_tensor: inputs and targets along time, patched."""
        return reshape_patch(torch.cat([batch_x, batch_y], dim=1), self.spec.patch_size)

    def checked_patch(self, batch_x: torch.Tensor, batch_y: torch.Tensor) -> torch.Tensor:
        """`patch` of a training batch, after checking both shapes against the configs."""
        self.check_frames(batch_x, self.spec.in_frames, "batch_x")
        self.check_frames(batch_y, self.spec.out_frames, "batch_y")
        return self.patch(batch_x, batch_y)

    def select_input(self, t: int, frames: torch.Tensor, mask: torch.Tensor | None,
                     x_gen: torch.Tensor | None) -> torch.Tensor:
        """Step t's input (channels first): a true frame, or the mask's mix of the true frame
        and the last prediction x_gen; mask None = the test mask (own predictions after the
        inputs, without reading the unknown future)."""
        pre = self.spec.in_frames
        if mask is None:
            return frames[:, t] if t < pre else x_gen
        if self.spec.reverse_scheduled_sampling:
            if t == 0:
                return frames[:, 0]
            m = mask[:, t - 1]
        else:
            if t < pre:
                return frames[:, t]
            m = mask[:, t - pre]
        return m * frames[:, t] + (1 - m) * x_gen


class PatchedRecurrentModel(RecurrentModel):
    """OpenSTL's patched RNN pipeline around a stack of cells (subclasses build the cells).

    Subclasses set `self.conv_last` and implement `init_state(batch, like)` and
    `step(net, state, with_loss) -> top hidden state`; `step` may append extra loss terms to
    `state["extra_losses"]` (PredRNNv2's decoupling).
    """

    # -- OpenSTL's model call -------------------------------------------------------------

    def init_state(self, batch: int, like: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, net: torch.Tensor, state: dict[str, Any], with_loss: bool) -> torch.Tensor:
        raise NotImplementedError

    def extra_loss(self, state: dict[str, Any]) -> torch.Tensor | None:
        """A term added to the frame MSE in the training loss (None: plain MSE)."""
        return None

    def openstl_forward(self, frames_tensor: torch.Tensor, mask_true: torch.Tensor,
                        return_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """OpenSTL's `model(frames_tensor, mask_true, return_loss)`: patched (B, total, H/p,
        W/p, p*p*C) frames and mask in, (next_frames (B, total-1, ...), loss) out."""
        spec = self.spec
        frames = frames_tensor.permute(0, 1, 4, 2, 3)  # (B, T, p*p*C, H/p, W/p)
        mask = mask_true.permute(0, 1, 4, 2, 3)
        state = self.init_state(frames.shape[0], frames)
        next_frames = []
        x_gen = None
        for t in range(spec.total_length - 1):
            net = self.select_input(t, frames, mask, x_gen)
            x_gen = self.conv_last(self.step(net, state, return_loss))
            next_frames.append(x_gen)
        out = torch.stack(next_frames, dim=1).permute(0, 1, 3, 4, 2)  # (B, total-1, H', W', c)
        if not return_loss:
            return out, None
        # over all total-1 frames, the pre-1 reconstructed inputs included (spec quirk 1)
        loss = torch.nn.functional.mse_loss(out, frames_tensor[:, 1:])
        extra = self.extra_loss(state)
        return out, loss if extra is None else loss + extra

    # -- the shared interface ---------------------------------------------------------------

    def training_loss(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                      mask_true: torch.Tensor) -> torch.Tensor:
        """The loss OpenSTL's training_step returns for this batch and sampling mask."""
        frames = self.checked_patch(batch_x, batch_y)
        expected = (batch_x.shape[0], self.spec.mask_length, *self.spec.grid,
                    self.spec.frame_channels)
        if tuple(mask_true.shape) != expected:
            raise ValueError(f"{self.spec.method}: mask_true must have shape {expected}, got "
                             f"{tuple(mask_true.shape)}")
        _, loss = self.openstl_forward(frames, mask_true.to(batch_x))
        return loss

    def forward(self, batch_x: torch.Tensor) -> torch.Tensor:
        """(B, pre, C, H, W) -> forecast (B, aft, C, H, W) under OpenSTL's test mask.

        The unknown future enters as zeros under a zero mask, as OpenSTL multiplies the true
        future by 0 (so its NaNs would leak; ours cannot): the numbers are OpenSTL's.
        """
        spec = self.spec
        self.check_frames(batch_x, spec.in_frames, "input")
        b = batch_x.shape[0]
        future = batch_x.new_zeros(b, spec.out_frames, *batch_x.shape[2:])
        frames = self.patch(batch_x, future)
        next_frames, _ = self.openstl_forward(frames, eval_mask(spec, b, frames),
                                              return_loss=False)
        return reshape_patch_back(next_frames, spec.patch_size)[:, -spec.out_frames:]


class SampledRNN(RecurrentModel):
    """The frame for MIM, E3D-LSTM and MAU: a subclass supplies `rollout(frames, mask)`.

    `rollout` takes channels-first patches (B, T, p*p*C, H/p, W/p), T = total (or only the pre
    inputs when mask is None = the test-time mask), and returns the total-1 predictions of
    frames 1..total-1 in the same layout. All their layers share one width (zig-zag memory).
    """

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        check_equal_widths(self.spec)

    def rollout(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def channels_first_mask(self, mask_true: torch.Tensor, batch: int) -> torch.Tensor:
        """OpenSTL's (B, Tm, H/p, W/p, p*p*C) mask or (B, Tm) flags -> broadcastable to frames."""
        spec = self.spec
        if mask_true.dim() == 2:
            mask = mask_true[:, :, None, None, None]
        elif mask_true.dim() == 5:
            mask = mask_true.permute(0, 1, 4, 2, 3)
        else:
            raise ValueError(f"{spec.method}: mask_true of shape {tuple(mask_true.shape)} "
                             "must be (B, Tm) flags or OpenSTL's (B, Tm, H/p, W/p, p*p*C)")
        if mask.shape[0] != batch or mask.shape[1] != spec.mask_length:
            kind = "reverse scheduled" if spec.reverse_scheduled_sampling else "scheduled"
            raise ValueError(f"{spec.method}: mask_true has shape {tuple(mask_true.shape)}; "
                             f"{kind} sampling needs (B={batch}, {spec.mask_length}, ...)")
        return mask

    def openstl_forward(self, frames_tensor: torch.Tensor, mask_true: torch.Tensor,
                        return_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """OpenSTL's model call on its channels-last patches -> (next_frames, loss)."""
        frames = frames_tensor.permute(0, 1, 4, 2, 3)
        nxt = self.rollout(frames, self.channels_first_mask(mask_true, frames.shape[0]))
        loss = self.loss_fn(nxt, frames[:, 1:]) if return_loss else None
        return self.openstl_layout(nxt), loss

    def openstl_layout(self, next_frames: torch.Tensor) -> torch.Tensor:
        """Channels-first predictions -> OpenSTL's next_frames layout (channels last)."""
        return next_frames.permute(0, 1, 3, 4, 2)

    def loss_fn(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(pred, target)

    def forward(self, batch_x: torch.Tensor) -> torch.Tensor:
        """(B, pre, C, H, W) inputs -> (B, aft, C, H, W) forecast under the test-time mask."""
        spec = self.spec
        self.check_frames(batch_x, spec.in_frames, "input")
        # Only the inputs: the test mask never feeds a future frame (OpenSTL multiplies the
        # true future by 0, so a NaN there leaked into its forecast; here it cannot).
        patches = reshape_patch(batch_x, spec.patch_size).permute(0, 1, 4, 2, 3)
        nxt = self.rollout(patches, None)[:, -spec.out_frames:]
        return reshape_patch_back(nxt.permute(0, 1, 3, 4, 2), spec.patch_size)

    def training_loss(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                      mask_true: torch.Tensor) -> torch.Tensor:
        """OpenSTL's training-step loss over all total-1 predicted frames (spec/rnn.md 1.2)."""
        _, loss = self.openstl_forward(self.checked_patch(batch_x, batch_y), mask_true)
        return loss
