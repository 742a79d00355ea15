"""PredRNN++ (OpenSTL's PredRNNpp_Model): causal LSTM cells, a zig-zag memory and one gradient
highway unit between layers 0 and 1 (spec/rnn.md 3.3).

Keys `gradient_highway.{z_concat,x_concat}.0`, `cell_list.{i}.conv_x/conv_h/conv_c/conv_m/
conv_o/conv_c2m/conv_om/conv_last` (`conv_o` is built and never used), `conv_last`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simvp_ray.models.recurrent.common import (
    PatchedRecurrentModel,
    RecurrentSpec,
    check_equal_widths,
    conv_block,
    freeze_unused,
)

FORGET_BIAS = 1.0
GHU_INIT = 1e-3  # OpenSTL draws the highway's conv weights from U(-1e-3, 1e-3)


class GHU(nn.Module):
    """Gradient highway: z' = σ(u) ⊙ tanh(p) + (1 - σ(u)) ⊙ z, (p, u) from convs of x and z."""

    def __init__(self, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.hidden = hidden
        self.z_concat = conv_block(hidden, 2 * hidden, spec)
        self.x_concat = conv_block(hidden, 2 * hidden, spec)
        for block in (self.z_concat, self.x_concat):
            nn.init.uniform_(block[0].weight, -GHU_INIT, GHU_INIT)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p, u = torch.split(self.x_concat(x) + self.z_concat(z), self.hidden, dim=1)
        p, u = torch.tanh(p), torch.sigmoid(u)
        return u * p + (1 - u) * z


class CausalLSTMCell(nn.Module):
    def __init__(self, c_in: int, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.hidden = hidden
        self.conv_x = conv_block(c_in, 7 * hidden, spec)
        self.conv_h = conv_block(hidden, 4 * hidden, spec)
        self.conv_c = conv_block(hidden, 3 * hidden, spec)
        self.conv_m = conv_block(hidden, 3 * hidden, spec)
        self.conv_o = conv_block(2 * hidden, hidden, spec)  # built by OpenSTL, never used
        self.conv_c2m = conv_block(hidden, 4 * hidden, spec)
        self.conv_om = conv_block(hidden, hidden, spec)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        freeze_unused(self.conv_o)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, m: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(self.conv_x(x), self.hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.hidden, dim=1)
        i_c, f_c, g_c = torch.split(self.conv_c(c), self.hidden, dim=1)  # on the OLD cell
        i_m, f_m, m_m = torch.split(self.conv_m(m), self.hidden, dim=1)
        i = torch.sigmoid(i_x + i_h + i_c)
        f = torch.sigmoid(f_x + f_h + f_c + FORGET_BIAS)
        g = torch.tanh(g_x + g_h + g_c)
        c_new = f * c + i * g
        # conv_c2m's slices come in the order (i, g, f, o)
        i_c2m, g_c2m, f_c2m, o_c2m = torch.split(self.conv_c2m(c_new), self.hidden, dim=1)
        i_p = torch.sigmoid(i_xp + i_m + i_c2m)
        f_p = torch.sigmoid(f_xp + f_m + f_c2m + FORGET_BIAS)
        g_p = torch.tanh(g_xp + g_c2m)  # no memory term
        m_new = f_p * torch.tanh(m_m) + i_p * g_p  # the old M enters only through tanh(m_m)
        o = torch.tanh(o_x + o_h + o_c2m + self.conv_om(m_new))  # tanh, not sigmoid
        h_new = o * torch.tanh(self.conv_last(torch.cat([c_new, m_new], dim=1)))
        return h_new, c_new, m_new


class PredRNNpp(PatchedRecurrentModel):
    method = "predrnnpp"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        spec = self.spec
        if spec.num_layers < 2:
            raise ValueError(f"predrnnpp needs >= 2 layers (the gradient highway sits between "
                             f"layers 0 and 1), got num_hidden={spec.num_hidden[0]}")
        if spec.layer_norm:
            raise ValueError("predrnnpp cannot run with layer_norm=1 (OpenSTL's gradient "
                             "highway LayerNorm has the wrong width); use layer_norm=0")
        check_equal_widths(spec)
        widths = spec.num_hidden
        self.gradient_highway = GHU(widths[0], spec)
        self.cell_list = nn.ModuleList(
            CausalLSTMCell(spec.frame_channels if i == 0 else widths[i - 1], width, spec)
            for i, width in enumerate(widths))
        self.conv_last = nn.Conv2d(widths[-1], spec.frame_channels, 1, bias=False)

    def init_state(self, batch: int, like: torch.Tensor) -> dict[str, Any]:
        hp, wp = self.spec.grid
        zeros = [like.new_zeros(batch, width, hp, wp) for width in self.spec.num_hidden]
        return {"h": list(zeros), "c": list(zeros), "m": zeros[0], "z": zeros[0]}

    def step(self, net: torch.Tensor, state: dict[str, Any], with_loss: bool) -> torch.Tensor:
        h, c = state["h"], state["c"]
        h[0], c[0], state["m"] = self.cell_list[0](net, h[0], c[0], state["m"])
        state["z"] = self.gradient_highway(h[0], state["z"])
        h[1], c[1], state["m"] = self.cell_list[1](state["z"], h[1], c[1], state["m"])
        for i in range(2, len(self.cell_list)):
            h[i], c[i], state["m"] = self.cell_list[i](h[i - 1], h[i], c[i], state["m"])
        return h[-1]
