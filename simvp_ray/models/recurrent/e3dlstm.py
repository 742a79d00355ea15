"""E3D-LSTM (Eidetic 3D LSTM) as OpenSTL's E3DLSTM_Model: 3-D convs over a 2-frame window and
an attention recall over all past cell states; spec/rnn.md section 3.6.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.models.recurrent.common import SampledRNN

WINDOW = 2  # OpenSTL hard-codes window_length 2, window_stride 1 and the (2, 5, 5) kernel
KERNEL = (2, 5, 5)


class TFConv3d(nn.Module):
    """OpenSTL's tf_Conv3d: Conv3d, then nearest resize back to the input's (T, H, W)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int],
                 padding: int | tuple[int, int, int] = 0):
        super().__init__()
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, 1, padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3d(x)
        if out.shape[-3:] == x.shape[-3:]:
            return out
        if out.shape[-3] == 1 and out.shape[-2:] == x.shape[-2:]:
            return out.expand(*out.shape[:2], *x.shape[-3:])  # nearest resize = repeat in T
        return F.interpolate(out, size=x.shape[-3:], mode="nearest")


def conv3d_block(c_in: int, c_out: int, grid: tuple[int, int], layer_norm: bool
                 ) -> nn.Sequential:
    layers: list[nn.Module] = [TFConv3d(c_in, c_out, KERNEL, (0, KERNEL[1] // 2, KERNEL[2] // 2))]
    if layer_norm:
        layers.append(nn.LayerNorm([c_out, WINDOW, *grid]))
    return nn.Sequential(*layers)


def recall(query: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Eidetic attention: tokens are a raw row-major reshape into rows of nh numbers (not
    per-position channel vectors), unscaled softmax; keys = values = the cell history."""
    batch, channels = query.shape[:2]
    q = query.reshape(batch, -1, channels)
    kv = history.reshape(batch, -1, channels)
    attn = torch.softmax(torch.einsum("bxc,byc->bxy", q, kv), dim=2)
    return torch.einsum("bxy,byc->bxc", attn, kv).reshape(query.shape)


class Eidetic3DLSTMCell(nn.Module):
    """conv_x splits (i, g, r, o, i', g', f'), conv_h (i, g, r, o), conv_gm (i', f', g', m).

    Returns the incoming global memory, not the new one (OpenSTL's quirk): the memory stays
    zero, conv_gm only ever sees zeros and its weights get exactly zero gradient.
    """

    def __init__(self, c_in: int, hidden: int, grid: tuple[int, int], layer_norm: bool):
        super().__init__()
        self.num_hidden = hidden
        self._norm_c_t = nn.LayerNorm([hidden, WINDOW, *grid])  # always on
        self.conv_x = conv3d_block(c_in, 7 * hidden, grid, layer_norm)
        self.conv_h = conv3d_block(hidden, 4 * hidden, grid, layer_norm)
        self.conv_gm = conv3d_block(hidden, 4 * hidden, grid, layer_norm)
        self.conv_new_cell = conv3d_block(hidden, hidden, grid, layer_norm)
        self.conv_new_gm = conv3d_block(hidden, hidden, grid, layer_norm)
        self.conv_last = TFConv3d(2 * hidden, hidden, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, memory: torch.Tensor,
                history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nh = self.num_hidden
        i_h, g_h, r_h, o_h = self.conv_h(h).split(nh, dim=1)
        i_x, g_x, r_x, o_x, i_xp, g_xp, f_xp = self.conv_x(x).split(nh, dim=1)
        r = torch.sigmoid(r_x + r_h)
        c_new = (self._norm_c_t(c + recall(r, history))
                 + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h))
        i_m, f_m, g_m, m_m = self.conv_gm(memory).split(nh, dim=1)
        m_new = (torch.sigmoid(f_xp + f_m + 1.0) * torch.tanh(m_m)
                 + torch.sigmoid(i_xp + i_m) * torch.tanh(g_xp + g_m))
        o = torch.tanh(o_x + o_h + self.conv_new_cell(c_new) + self.conv_new_gm(m_new))
        h_new = torch.tanh(self.conv_last(torch.cat([c_new, m_new], dim=1))) * torch.sigmoid(o)
        return h_new, c_new, memory


class E3DLSTM(SampledRNN):
    """OpenSTL's E3DLSTM_Model (keys `cell_list.{i}.*`, `conv_last`): each layer sees the
    window [input_{t-1}, input_t] as a 2-slice 3-D tensor; the readout Conv3d (2, 1, 1) merges
    the slices. Loss MSE + L1. configs["filter_size"] is ignored, as in OpenSTL (the kernel
    is (2, 5, 5)).
    """

    method = "e3dlstm"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        cfg = self.spec
        self.num_hidden = widths = cfg.num_hidden
        self.num_layers = len(widths)
        self.cell_list = nn.ModuleList(
            Eidetic3DLSTMCell(cfg.frame_channels if i == 0 else widths[i - 1], widths[i],
                              cfg.grid, cfg.layer_norm) for i in range(len(widths)))
        self.conv_last = nn.Conv3d(widths[-1], cfg.frame_channels, (WINDOW, 1, 1),
                                   (WINDOW, 1, 1), bias=False)

    def loss_fn(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target) + F.l1_loss(pred, target)

    def rollout(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, _, _, height, width = frames.shape
        zeros = frames.new_zeros(batch, self.num_hidden[0], WINDOW, height, width)
        h, c = [zeros] * self.num_layers, [zeros] * self.num_layers
        history = [zeros] * self.num_layers
        memory = zeros
        previous = torch.zeros_like(frames[:, 0])
        x_gen, outputs = None, []
        for t in range(self.spec.total_length - 1):
            net = self.select_input(t, frames, mask, x_gen)
            window = torch.stack([previous, net], dim=2)  # (B, C, 2, H, W)
            previous = net
            for i, cell in enumerate(self.cell_list):
                history[i] = c[i] if t == 0 else torch.cat([history[i], c[i]], dim=1)
                h[i], c[i], memory = cell(window if i == 0 else h[i - 1], h[i], c[i], memory,
                                          history[i])
            x_gen = self.conv_last(h[-1]).squeeze(2)
            outputs.append(x_gen)
        return torch.stack(outputs, dim=1)
