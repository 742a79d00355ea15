"""What MIM, E3D-LSTM and MAU share: OpenSTL config parsing and the scheduled-sampling rollout.

(To merge with h17-rnn-a's shared recurrent code: the same input selection and patching serve
ConvLSTM / PredRNN / PredRNN++ / PredRNNv2.) Shapes: frames are channels-first patches
(B, T, p*p*C, H/p, W/p); a mask is OpenSTL's (B, Tm, H/p, W/p, p*p*C) or per-slot flags (B, Tm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.models.recurrent.patch import reshape_patch, reshape_patch_back


def config_value(configs: Mapping[str, Any], key: str, method: str) -> Any:
    if key not in configs:
        raise ValueError(f"{method}: configs lacks {key!r} (OpenSTL's configs give it)")
    return configs[key]


def parse_hidden(value: str | list[int] | tuple[int, ...], method: str) -> list[int]:
    """OpenSTL writes widths as "128,128,128,128"; a list is accepted too."""
    widths = [int(x) for x in value.split(",")] if isinstance(value, str) else list(value)
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{method}: num_hidden={value!r} must be positive widths, e.g. '64,64'")
    return widths


@dataclass(frozen=True)
class SeqConfig:
    """The configs entries every OpenSTL recurrent model reads."""

    method: str
    pre: int
    aft: int
    channels: int
    height: int
    width: int
    patch_size: int
    num_hidden: list[int]
    filter_size: int
    stride: int
    layer_norm: bool
    reverse_scheduled_sampling: bool

    @property
    def total(self) -> int:
        return self.pre + self.aft

    @property
    def frame_channels(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def mask_slots(self) -> int:
        """Time slots of a training mask: aft-1 (SS) or total-2 (RSS), spec/rnn.md section 2."""
        return self.total - 2 if self.reverse_scheduled_sampling else self.aft - 1


def parse_seq_config(configs: Mapping[str, Any], method: str, *,
                     equal_widths: bool = True) -> SeqConfig:
    """Validate the shared configs entries with one-line errors naming the bad value."""
    get = lambda key: config_value(configs, key, method)  # noqa: E731
    pre, aft = int(get("pre_seq_length")), int(get("aft_seq_length"))
    if pre < 1 or aft < 1:
        raise ValueError(f"{method}: pre_seq_length={pre} and aft_seq_length={aft} must be >= 1")
    total = int(configs.get("total_length", pre + aft))
    if total != pre + aft:
        raise ValueError(f"{method}: total_length={total} must equal pre_seq_length + "
                         f"aft_seq_length = {pre + aft}")
    in_shape = list(get("in_shape"))
    if len(in_shape) != 4:
        raise ValueError(f"{method}: in_shape={in_shape} must be [T, C, H, W]")
    _, channels, height, width = (int(v) for v in in_shape)
    patch = int(get("patch_size"))
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"{method}: patch_size={patch} must divide the frame size "
                         f"{height}x{width}")
    widths = parse_hidden(get("num_hidden"), method)
    if equal_widths and len(set(widths)) != 1:
        raise ValueError(f"{method}: num_hidden={widths} must be equal widths (its memory "
                         "passes between layers)")
    filter_size = int(get("filter_size"))
    if filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"{method}: filter_size={filter_size} must be odd (padding k // 2 "
                         "keeps the grid)")
    stride = int(configs.get("stride", 1))
    if stride != 1:
        raise ValueError(f"{method}: stride={stride} is not supported; the states keep the "
                         "grid only with stride 1")
    rss = int(configs.get("reverse_scheduled_sampling", 0))
    if rss not in (0, 1):
        raise ValueError(f"{method}: reverse_scheduled_sampling={rss} must be 0 or 1")
    return SeqConfig(method=method, pre=pre, aft=aft, channels=channels, height=height,
                     width=width, patch_size=patch, num_hidden=widths, filter_size=filter_size,
                     stride=stride, layer_norm=bool(int(configs.get("layer_norm", 0))),
                     reverse_scheduled_sampling=bool(rss))


def conv_block(c_in: int, c_out: int, kernel: int, grid: tuple[int, int], layer_norm: bool,
               bias: bool = False) -> nn.Sequential:
    """OpenSTL's `Sequential(Conv2d[, LayerNorm([c_out, H, W])])` (keys `.0.weight`, `.1.*`)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=bias)]
    if layer_norm:
        layers.append(nn.LayerNorm([c_out, *grid]))
    return nn.Sequential(*layers)


class SampledRNN(nn.Module):
    """Scheduled-sampling rollout frame; a subclass supplies `rollout(frames, mask)`.

    `rollout` takes channels-first patches (B, T, p*p*C, H/p, W/p), T = total (or only the pre
    inputs when mask is None = the test-time mask), and returns the total-1 predictions of
    frames 1..total-1 in the same layout.
    """

    cfg: SeqConfig

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def reverse_scheduled_sampling(self) -> bool:
        return self.cfg.reverse_scheduled_sampling

    @property
    def mask_slots(self) -> int:
        """Tm of the training mask `training_loss` expects: aft-1 (SS) or total-2 (RSS)."""
        return self.cfg.mask_slots

    def rollout(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def select_input(self, t: int, frames: torch.Tensor, mask: torch.Tensor | None,
                     x_gen: torch.Tensor | None) -> torch.Tensor:
        """Step t's input: a true frame, or the mask's mix of the true frame and x_gen."""
        pre = self.cfg.pre
        if mask is None:  # test mask: true inputs, own predictions for the future
            return frames[:, t] if t < pre else x_gen
        if self.cfg.reverse_scheduled_sampling:
            if t == 0:
                return frames[:, 0]
            m = mask[:, t - 1]
        else:
            if t < pre:
                return frames[:, t]
            m = mask[:, t - pre]
        return m * frames[:, t] + (1 - m) * x_gen

    def channels_first_mask(self, mask_true: torch.Tensor, batch: int) -> torch.Tensor:
        """OpenSTL's (B, Tm, H/p, W/p, p*p*C) mask or (B, Tm) flags -> broadcastable to frames."""
        slots = self.cfg.mask_slots
        if mask_true.dim() == 2:
            mask = mask_true[:, :, None, None, None]
        elif mask_true.dim() == 5:
            mask = mask_true.permute(0, 1, 4, 2, 3)
        else:
            raise ValueError(f"{self.cfg.method}: mask_true of shape {tuple(mask_true.shape)} "
                             "must be (B, Tm) flags or OpenSTL's (B, Tm, H/p, W/p, p*p*C)")
        if mask.shape[0] != batch or mask.shape[1] != slots:
            kind = "reverse scheduled" if self.cfg.reverse_scheduled_sampling else "scheduled"
            raise ValueError(f"{self.cfg.method}: mask_true has shape "
                             f"{tuple(mask_true.shape)}; {kind} sampling needs (B={batch}, "
                             f"{slots}, ...)")
        return mask

    def patched(self, batch_x: torch.Tensor, batch_y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C, H, W) frames -> channels-first patches (B, T, p*p*C, H/p, W/p)."""
        frames = batch_x if batch_y is None else torch.cat([batch_x, batch_y], dim=1)
        cfg = self.cfg
        if tuple(frames.shape[2:]) != (cfg.channels, cfg.height, cfg.width):
            raise ValueError(f"{cfg.method}: frames of shape {tuple(frames.shape)} do not match "
                             f"in_shape (C, H, W) = {(cfg.channels, cfg.height, cfg.width)}")
        return reshape_patch(frames, cfg.patch_size).permute(0, 1, 4, 2, 3)

    def unpatched(self, patches: torch.Tensor) -> torch.Tensor:
        return reshape_patch_back(patches.permute(0, 1, 3, 4, 2), self.cfg.patch_size)

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
        return F.mse_loss(pred, target)

    def forward(self, batch_x: torch.Tensor) -> torch.Tensor:
        """(B, pre, C, H, W) inputs -> (B, aft, C, H, W) forecast under the test-time mask."""
        cfg = self.cfg
        if batch_x.shape[1] != cfg.pre:
            raise ValueError(f"{cfg.method}: batch_x has {batch_x.shape[1]} frames; "
                             f"pre_seq_length is {cfg.pre}")
        # Only the inputs: the test mask never feeds a future frame (OpenSTL multiplies the
        # true future by 0, so a NaN there leaked into its forecast; here it cannot).
        nxt = self.rollout(self.patched(batch_x), None)
        return self.unpatched(nxt[:, -cfg.aft:])

    def training_loss(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                      mask_true: torch.Tensor) -> torch.Tensor:
        """OpenSTL's training-step loss over all total-1 predicted frames (spec/rnn.md 1.2)."""
        frames = self.patched(batch_x, batch_y)
        if frames.shape[1] != self.cfg.total:
            raise ValueError(f"{self.cfg.method}: batch_x + batch_y give {frames.shape[1]} "
                             f"frames; total_length is {self.cfg.total}")
        nxt = self.rollout(frames, self.channels_first_mask(mask_true, frames.shape[0]))
        return self.loss_fn(nxt, frames[:, 1:])
