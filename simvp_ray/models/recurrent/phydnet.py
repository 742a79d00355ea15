"""PhyDNet as OpenSTL's PhyDNet_Model: a conv encoder, a physics branch (PhyCell) and a residual
ConvLSTM branch, a shared decoder, and moment constraints on the PhyCell kernels;
spec/rnn.md sections 2.3 and 3.8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.models.recurrent.common import config_value

LATENT = 64  # PhyDNet's widths are hard-coded in OpenSTL
PHY_HIDDEN = 49
CONVLSTM_WIDTHS = (128, 128, 64)
MOMENT_SIZE = 7


class DCGAN(nn.Module):
    """OpenSTL's dcgan_conv / dcgan_upconv: 3x3 (transposed) conv -> GroupNorm(16) -> LReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, transposed: bool = False):
        super().__init__()
        if transposed:
            conv = nn.ConvTranspose2d(c_in, c_out, 3, stride, 1, output_padding=int(stride == 2))
        else:
            conv = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.main = nn.Sequential(conv, nn.GroupNorm(16, c_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class Chain(nn.Module):
    """Named blocks applied in order (OpenSTL's encoder_E `c1..c3`, decoder_D `upc1..upc3`)."""

    def __init__(self, **blocks: nn.Module):
        super().__init__()
        for name, block in blocks.items():
            self.add_module(name, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class PhyCellCell(nn.Module):
    """H~ = H + F(H) (physics prediction), then H' = H~ + K * (x - H~) (correction)."""

    def __init__(self) -> None:
        super().__init__()
        self.F = nn.Sequential()
        self.F.add_module("conv1", nn.Conv2d(LATENT, PHY_HIDDEN, 7, 1, 3))
        self.F.add_module("bn1", nn.GroupNorm(7, PHY_HIDDEN))
        self.F.add_module("conv2", nn.Conv2d(PHY_HIDDEN, LATENT, 1))
        self.convgate = nn.Conv2d(2 * LATENT, LATENT, 3, 1, 1)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.convgate(torch.cat([x, hidden], dim=1)))
        tilde = hidden + self.F(hidden)
        return tilde + gate * (x - tilde)


class ConvLSTMCell(nn.Module):
    """One conv on [x, h] with bias, gates (i, f, o, g), no forget bias."""

    def __init__(self, c_in: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(c_in + hidden, 4 * hidden, 3, 1, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, o, g = self.conv(torch.cat([x, h], dim=1)).split(self.hidden, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new


class K2M(nn.Module):
    """Kernel -> moment matrix: m = M w M^T with M[a, j] = (j - 3)^a / a! (float64 buffers)."""

    def __init__(self, size: int = MOMENT_SIZE):
        super().__init__()
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) // 2
        moments = torch.stack([offsets ** a / math.factorial(a) for a in range(size)])
        inverse = torch.linalg.inv(moments)
        # OpenSTL's buffer names and order; the inverses are kept only for its state_dict.
        self.register_buffer("_M0", moments)
        self.register_buffer("_invM0", inverse)
        self.register_buffer("_M1", moments.clone())
        self.register_buffer("_invM1", inverse.clone())

    def forward(self, kernels: torch.Tensor) -> torch.Tensor:
        """(..., 7, 7) float64 kernels -> (..., 7, 7) moments."""
        return self._M0.double() @ kernels @ self._M1.double().T


class PhyDNet(nn.Module):
    """OpenSTL's PhyDNet_Model with its key names: `phycell.*` and `convcell.*` registered
    twice (also as `encoder.phycell.*` / `encoder.convcell.*`, as OpenSTL does), `encoder.*`,
    `k2m._M0/_invM0/_M1/_invM1`.

    - `model(batch_x)`: OpenSTL's `inference` forecast (pre-1 encoder steps on the inputs,
      then aft steps on its own outputs).
    - `model_loss(batch_x, batch_y, teacher_forcing)`: the model's own loss, a **sum** of the
      pre-1 + aft per-frame MSEs and 64 moment MSEs (moments in float64, cast to float32).
    - `training_loss(batch_x, batch_y)`: what OpenSTL's training step back-propagates. By
      default its quirk (spec/rnn.md 3.8): `mean((model_loss - batch_y) ** 2)`, the scalar
      broadcast against the targets; `loss_quirk = False` returns `model_loss` itself.
    - Teacher forcing (decoder fed the true targets instead of its outputs) is decided once
      per batch; the trainer draws it, `random() < teacher_forcing_ratio(epoch)` in OpenSTL,
      and sets `teacher_forcing` (or passes it to `training_loss`).
    `patch_size` is the latent downsampling (2 or 4); frames are never reshape-patched. The
    two "partial reconstruction" decoder passes OpenSTL computes and discards are skipped
    (fvcore's count drops them too).
    """

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__()
        get = lambda key: config_value(configs, key, "PhyDNet")  # noqa: E731
        self.pre, self.aft = int(get("pre_seq_length")), int(get("aft_seq_length"))
        if self.pre < 2 or self.aft < 1:
            raise ValueError(f"PhyDNet: pre_seq_length={self.pre} must be >= 2 (its states "
                             f"reset at the first encoder step) and aft_seq_length={self.aft} "
                             ">= 1")
        in_shape = [int(v) for v in get("in_shape")]
        if len(in_shape) != 4:
            raise ValueError(f"PhyDNet: in_shape={in_shape} must be [T, C, H, W]")
        _, channels, height, width = in_shape
        patch = int(get("patch_size"))
        if patch not in (2, 4) or height % patch or width % patch:
            raise ValueError(f"PhyDNet: patch_size={patch} must be 2 or 4 and divide the frame "
                             f"size {height}x{width} (OpenSTL silently uses 4 for others)")
        self.patch_size = patch
        self.channels, self.height, self.width = channels, height, width
        self.teacher_forcing = True
        self.loss_quirk = True

        self.phycell = nn.Module()
        self.phycell.cell_list = nn.ModuleList([PhyCellCell()])
        self.convcell = nn.Module()
        self.convcell.cell_list = nn.ModuleList(
            ConvLSTMCell(c_in, hidden) for c_in, hidden in
            zip((LATENT, *CONVLSTM_WIDTHS[:-1]), CONVLSTM_WIDTHS, strict=True))
        enc = self.encoder = nn.Module()
        enc.encoder_E = Chain(c1=DCGAN(channels, 32, 2), c2=DCGAN(32, 32, 1),
                              c3=DCGAN(32, 64, patch // 2))
        for name in ("encoder_Ep", "encoder_Er"):
            enc.add_module(name, Chain(c1=DCGAN(64, 64, 1), c2=DCGAN(64, 64, 1)))
        for name in ("decoder_Dp", "decoder_Dr"):
            enc.add_module(name, Chain(upc1=DCGAN(64, 64, 1, True), upc2=DCGAN(64, 64, 1, True)))
        enc.decoder_D = Chain(
            upc1=DCGAN(64, 32, 2, True), upc2=DCGAN(32, 32, 1, True),
            upc3=nn.ConvTranspose2d(32, channels, 3, patch // 2, 1,
                                    output_padding=int(patch == 4)))
        enc.phycell = self.phycell  # shared, as OpenSTL registers them (14 keys twice)
        enc.convcell = self.convcell
        self.k2m = K2M()

    @staticmethod
    def teacher_forcing_ratio(epoch: int) -> float:
        """OpenSTL's probability of teacher forcing a batch in epoch `epoch` (spec/rnn.md 2.3)."""
        return max(0.0, 1.0 - 0.003 * epoch)

    def step(self, frame: torch.Tensor, state: list[torch.Tensor]) -> torch.Tensor:
        """One encoder call: frame (B, C, H, W) -> output image; updates state in place."""
        enc = self.encoder
        latent = enc.encoder_E(frame)
        state[0] = self.phycell.cell_list[0](enc.encoder_Ep(latent), state[0])
        x = enc.encoder_Er(latent)
        for j, cell in enumerate(self.convcell.cell_list):
            state[1 + 2 * j], state[2 + 2 * j] = cell(x, state[1 + 2 * j], state[2 + 2 * j])
            x = state[1 + 2 * j]
        return torch.sigmoid(enc.decoder_D(enc.decoder_Dp(state[0]) + enc.decoder_Dr(x)))

    def initial_state(self, frames: torch.Tensor) -> list[torch.Tensor]:
        grid = (self.height // self.patch_size, self.width // self.patch_size)
        state = [frames.new_zeros(frames.shape[0], LATENT, *grid)]
        for hidden in CONVLSTM_WIDTHS:
            state += [frames.new_zeros(frames.shape[0], hidden, *grid)] * 2
        return state

    def check(self, batch_x: torch.Tensor, batch_y: torch.Tensor | None = None) -> None:
        want = (self.channels, self.height, self.width)
        for name, frames, steps in [("batch_x", batch_x, self.pre), ("batch_y", batch_y, self.aft)]:
            if frames is not None and (frames.shape[1] != steps or tuple(frames.shape[2:]) != want):
                raise ValueError(f"PhyDNet: {name} of shape {tuple(frames.shape)} must be "
                                 f"(B, {steps}, {', '.join(map(str, want))})")

    def rollout(self, batch_x: torch.Tensor, batch_y: torch.Tensor | None,
                teacher_forcing: bool) -> torch.Tensor:
        """All pre-1 + aft output images (B, pre-1+aft, C, H, W); batch_y is fed back only
        under teacher forcing."""
        state = self.initial_state(batch_x)
        outputs = [self.step(batch_x[:, t], state) for t in range(self.pre - 1)]
        frame = batch_x[:, -1]
        for t in range(self.aft):
            outputs.append(self.step(frame, state))
            frame = batch_y[:, t] if teacher_forcing else outputs[-1]
        return torch.stack(outputs, dim=1)

    def moment_losses(self) -> list[torch.Tensor]:
        """64 MSEs between each input channel's 49 kernels' moments and the one-hot targets."""
        weight = self.phycell.cell_list[0].F.conv1.weight  # (49, 64, 7, 7)
        moments = self.k2m(weight.double().transpose(0, 1)).float()  # (64, 49, 7, 7)
        targets = torch.eye(PHY_HIDDEN, dtype=moments.dtype, device=moments.device)
        targets = targets.view(PHY_HIDDEN, MOMENT_SIZE, MOMENT_SIZE)
        return [F.mse_loss(m, targets) for m in moments.unbind(0)]

    def model_loss(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                   teacher_forcing: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(OpenSTL's summed model loss, the output images it compares)."""
        self.check(batch_x, batch_y)
        outputs = self.rollout(batch_x, batch_y, teacher_forcing)
        targets = torch.cat([batch_x[:, 1:], batch_y], dim=1)
        loss = 0
        for t in range(outputs.shape[1]):
            loss = loss + F.mse_loss(outputs[:, t], targets[:, t])
        for term in self.moment_losses():
            loss = loss + term
        return loss, outputs

    def training_loss(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                      mask_true: torch.Tensor | None = None, *,
                      teacher_forcing: bool | None = None) -> torch.Tensor:
        """The loss OpenSTL's training step returns (see the class docstring). `mask_true`:
        the trainer's 0-dim 0/1 teacher-forcing flag for this batch (training_mask_shape is
        ()), or None for the `teacher_forcing` attribute; the keyword overrides both."""
        if mask_true is not None:
            if mask_true.dim() != 0:
                raise ValueError(f"PhyDNet: mask_true of shape {tuple(mask_true.shape)} must be "
                                 "a 0-dim teacher-forcing flag; PhyDNet has no scheduled "
                                 "sampling")
            # a meta tensor (the FLOP count) holds no value; both choices cost the same
            forcing = mask_true.is_meta or bool(mask_true.item())
        else:
            forcing = self.teacher_forcing
        if teacher_forcing is not None:
            forcing = teacher_forcing
        loss, _ = self.model_loss(batch_x, batch_y, forcing)
        if self.loss_quirk:  # OpenSTL: MSELoss()(scalar, batch_y), broadcast
            return ((loss - batch_y) ** 2).mean()
        return loss

    def forward(self, batch_x: torch.Tensor) -> torch.Tensor:
        """(B, pre, C, H, W) -> (B, aft, C, H, W): OpenSTL's inference forecast."""
        self.check(batch_x)
        return self.rollout(batch_x, None, teacher_forcing=False)[:, self.pre - 1:]
