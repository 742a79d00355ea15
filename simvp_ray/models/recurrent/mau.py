"""MAU (Motion-Aware Unit) as OpenSTL's MAU_Model: strided conv encoder, MAU cells attending
over the last tau states, transposed-conv decoder; spec/rnn.md section 3.7. Not patched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simvp_ray.models.recurrent.common import SampledRNN, config_value

CELL_MODES = ("normal", "residual")
MODEL_MODES = ("normal", "recall")


def conv_ln(c_in: int, c_out: int, kernel: int, grid: tuple[int, int]) -> nn.Sequential:
    """Conv2d with bias, then LayerNorm over (c_out, H, W): MAU always normalises."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2),
                         nn.LayerNorm([c_out, *grid]))


class MAUCell(nn.Module):
    """Motion-aware unit: T fused with an attention-weighted trend of the last tau T states."""

    def __init__(self, c_in: int, hidden: int, grid: tuple[int, int], kernel: int,
                 residual: bool):
        super().__init__()
        self.num_hidden = hidden
        self.residual = residual
        self.scale = math.sqrt(hidden * grid[0] * grid[1])
        self.conv_t = conv_ln(c_in, 3 * hidden, kernel, grid)
        self.conv_t_next = conv_ln(c_in, hidden, kernel, grid)
        self.conv_s = conv_ln(hidden, 3 * hidden, kernel, grid)
        self.conv_s_next = conv_ln(hidden, hidden, kernel, grid)

    def forward(self, t_state: torch.Tensor, s_state: torch.Tensor, t_att: torch.Tensor,
                s_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t_att, s_att: (tau, B, nh, H, W) histories."""
        s_next = self.conv_s_next(s_state)
        t_next = self.conv_t_next(t_state)
        # Elementwise product and sum, as OpenSTL (fvcore counts no FLOPs for them).
        scores = (s_att * s_next).sum(dim=(2, 3, 4)) / self.scale  # (tau, B)
        weights = torch.softmax(scores, dim=0)[:, :, None, None, None]
        trend = (t_att * weights).sum(dim=0)
        gate = torch.sigmoid(t_next)
        fused = t_state * gate + (1 - gate) * trend
        t_g, t_t, t_s = self.conv_t(fused).split(self.num_hidden, dim=1)
        s_g, s_t, s_s = self.conv_s(s_state).split(self.num_hidden, dim=1)
        t_gate, s_gate = torch.sigmoid(t_g), torch.sigmoid(s_g)
        t_new = t_gate * t_t + (1 - t_gate) * s_t
        s_new = s_gate * s_s + (1 - s_gate) * t_s
        if self.residual:
            s_new = s_new + s_state
        return t_new, s_new


class MAU(SampledRNN):
    """OpenSTL's MAU_Model (keys `cell_list`, `encoders`, `decoders`, `srcnn`, and the unused
    `merge` / `conv_last_sr`, kept without gradient so the parameter count matches).

    Not patched: configs["patch_size"] must be 1, frames are (B, T, C, H, W) and OpenSTL's
    next_frames are channels first. Scheduled sampling only (no reverse branch). OpenSTL's
    MAU training step never stores its decayed eta (spec/rnn.md 2.1): the schedule, not this
    class, decides whether to copy that quirk.
    """

    method = "mau"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        cfg = self.spec
        if cfg.patch_size != 1:
            raise ValueError(f"MAU: patch_size={cfg.patch_size} is not supported; MAU runs on "
                             "unpatched frames (patch_size=1)")
        if cfg.reverse_scheduled_sampling:
            raise ValueError("MAU: reverse_scheduled_sampling=1 is not supported; OpenSTL's MAU "
                             "has scheduled sampling only (0)")
        sr_size = int(config_value(configs, "sr_size", "MAU"))
        levels = int(math.log2(sr_size)) if sr_size >= 1 else -1
        if sr_size < 1 or 2 ** levels != sr_size or cfg.height % sr_size or cfg.width % sr_size:
            raise ValueError(f"MAU: sr_size={sr_size} must be a power of 2 dividing the frame "
                             f"size {cfg.height}x{cfg.width}")
        self.tau = int(config_value(configs, "tau", "MAU"))
        if self.tau < 1:
            raise ValueError(f"MAU: tau={self.tau} must be >= 1")
        cell_mode = config_value(configs, "cell_mode", "MAU")
        self.model_mode = config_value(configs, "model_mode", "MAU")
        if cell_mode not in CELL_MODES or self.model_mode not in MODEL_MODES:
            raise ValueError(f"MAU: cell_mode={cell_mode!r} / model_mode={self.model_mode!r}; "
                             f"valid: {CELL_MODES} / {MODEL_MODES}")
        self.sr_size = sr_size
        self.num_hidden = nh = cfg.num_hidden
        self.num_layers = len(nh)
        grid = (cfg.height // sr_size, cfg.width // sr_size)
        self.cell_list = nn.ModuleList(
            MAUCell(nh[i - 1], nh[i], grid, cfg.filter_size, cell_mode == "residual")
            for i in range(len(nh)))
        width, frame_ch = nh[0], cfg.frame_channels
        encoders = [nn.Sequential()]
        encoders[0].add_module("encoder_t_conv-1", nn.Conv2d(frame_ch, width, 1))
        encoders[0].add_module("relu_t_-1", nn.LeakyReLU(0.2))
        for i in range(levels):
            encoder = nn.Sequential()
            encoder.add_module(f"encoder_t{i}", nn.Conv2d(width, width, 3, 2, 1))
            encoder.add_module(f"encoder_t_relu{i}", nn.LeakyReLU(0.2))
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)
        decoders = []
        for i in range(levels):
            decoder = nn.Sequential()
            decoder.add_module(f"c_decoder{i}", nn.ConvTranspose2d(nh[-1], nh[-1], 3, 2, 1, 1))
            if i < levels - 1:  # the last decoder has no activation
                decoder.add_module(f"c_decoder_relu{i}", nn.LeakyReLU(0.2))
            decoders.append(decoder)
        self.decoders = nn.ModuleList(decoders)
        self.srcnn = nn.Sequential(nn.Conv2d(nh[-1], frame_ch, 1))
        # Built by OpenSTL and never used.
        self.merge = nn.Conv2d(2 * nh[-1], nh[-1], 1)
        self.conv_last_sr = nn.Conv2d(2 * frame_ch, frame_ch, 1)
        for p in [*self.merge.parameters(), *self.conv_last_sr.parameters()]:
            p.requires_grad_(False)

    def openstl_layout(self, next_frames: torch.Tensor) -> torch.Tensor:
        return next_frames  # MAU's next_frames stay channels first

    def rollout(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch = frames.shape[0]
        grid = (frames.shape[3] // self.sr_size, frames.shape[4] // self.sr_size)
        zeros = frames.new_zeros(batch, self.num_hidden[0], *grid)
        t_hist = [[zeros] * self.tau for _ in range(self.num_layers)]
        s_hist = [[zeros] * self.tau for _ in range(self.num_layers)]
        t_state = [zeros] * self.num_layers
        x_gen, outputs = None, []
        for t in range(self.spec.total_length - 1):
            feature = self.select_input(t, frames, mask, x_gen)
            encoded = []
            for encoder in self.encoders:
                feature = encoder(feature)
                encoded.append(feature)
            s_state = feature
            for i, cell in enumerate(self.cell_list):
                t_att = torch.stack(t_hist[i][-self.tau:], dim=0)
                s_att = torch.stack(s_hist[i][-self.tau:], dim=0)
                s_hist[i].append(s_state)
                t_state[i], s_state = cell(t_state[i], s_state, t_att, s_att)
                t_hist[i].append(t_state[i])
            out = s_state
            for i, decoder in enumerate(self.decoders):
                out = decoder(out)
                if self.model_mode == "recall":
                    out = out + encoded[-2 - i]
            x_gen = self.srcnn(out)
            outputs.append(x_gen)
        return torch.stack(outputs, dim=1)
