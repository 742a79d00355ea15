"""PredRNN and PredRNNv2 (OpenSTL's PredRNN_Model, PredRNNv2_Model): spatiotemporal LSTM cells
with one memory M that zig-zags bottom-up within a step and from the top cell to the bottom
cell across steps (spec/rnn.md 3.2, 3.4).

Keys `cell_list.{i}.conv_x/conv_h/conv_m/conv_o/conv_last`, `conv_last`; v2 adds `adapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.models.recurrent.common import (
    PatchedRecurrentModel,
    RecurrentSpec,
    check_equal_widths,
    conv_block,
)

FORGET_BIAS = 1.0


class SpatioTemporalLSTMCell(nn.Module):
    """Returns (h', c', m', Δc = i ⊙ g, Δm = i' ⊙ g'); PredRNNv2 decouples the two Δs."""

    def __init__(self, c_in: int, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.hidden = hidden
        self.conv_x = conv_block(c_in, 7 * hidden, spec)
        self.conv_h = conv_block(hidden, 4 * hidden, spec)
        self.conv_m = conv_block(hidden, 3 * hidden, spec)
        self.conv_o = conv_block(2 * hidden, hidden, spec)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, m: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(self.conv_x(x), self.hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.hidden, dim=1)
        i_m, f_m, g_m = torch.split(self.conv_m(m), self.hidden, dim=1)
        i = torch.sigmoid(i_x + i_h)
        f = torch.sigmoid(f_x + f_h + FORGET_BIAS)
        g = torch.tanh(g_x + g_h)
        delta_c = i * g
        c_new = f * c + delta_c
        i_p = torch.sigmoid(i_xp + i_m)
        f_p = torch.sigmoid(f_xp + f_m + FORGET_BIAS)
        g_p = torch.tanh(g_xp + g_m)
        delta_m = i_p * g_p
        m_new = f_p * m + delta_m
        mem = torch.cat([c_new, m_new], dim=1)
        o = torch.sigmoid(o_x + o_h + self.conv_o(mem))
        h_new = o * torch.tanh(self.conv_last(mem))
        return h_new, c_new, m_new, delta_c, delta_m


class PredRNN(PatchedRecurrentModel):
    method = "predrnn"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        spec = self.spec
        check_equal_widths(spec)
        widths = spec.num_hidden
        self.cell_list = nn.ModuleList(
            SpatioTemporalLSTMCell(spec.frame_channels if i == 0 else widths[i - 1], width, spec)
            for i, width in enumerate(widths))
        self.conv_last = nn.Conv2d(widths[-1], spec.frame_channels, 1, bias=False)

    def init_state(self, batch: int, like: torch.Tensor) -> dict[str, Any]:
        hp, wp = self.spec.grid
        zeros = [like.new_zeros(batch, width, hp, wp) for width in self.spec.num_hidden]
        return {"h": list(zeros), "c": list(zeros), "m": zeros[0], "decouple": []}

    def step(self, net: torch.Tensor, state: dict[str, Any], with_loss: bool) -> torch.Tensor:
        h, c = state["h"], state["c"]
        for i, cell in enumerate(self.cell_list):
            h[i], c[i], state["m"], delta_c, delta_m = cell(
                net if i == 0 else h[i - 1], h[i], c[i], state["m"])
            if with_loss:
                self.track_deltas(delta_c, delta_m, state)
        return h[-1]

    def track_deltas(self, delta_c: torch.Tensor, delta_m: torch.Tensor,
                     state: dict[str, Any]) -> None:
        """PredRNN keeps nothing; PredRNNv2 records its decoupling term."""


class PredRNNv2(PredRNN):
    """PredRNN + the decoupling loss: beta * mean |cos(adapter(Δc), adapter(Δm))| over every
    step, layer, sample and channel, the cosine taken over space (spec/rnn.md 3.4)."""

    method = "predrnnv2"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        width = self.spec.num_hidden[0]
        self.adapter = nn.Conv2d(width, width, 1, bias=False)

    def track_deltas(self, delta_c: torch.Tensor, delta_m: torch.Tensor,
                     state: dict[str, Any]) -> None:
        b, ch = delta_c.shape[:2]
        dc = F.normalize(self.adapter(delta_c).reshape(b, ch, -1), dim=2)
        dm = F.normalize(self.adapter(delta_m).reshape(b, ch, -1), dim=2)
        state["decouple"].append(torch.mean(torch.abs(F.cosine_similarity(dc, dm, dim=2))))

    def extra_loss(self, state: dict[str, Any]) -> torch.Tensor | None:
        return self.spec.decouple_beta * torch.mean(torch.stack(state["decouple"]))
