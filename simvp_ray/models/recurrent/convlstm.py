"""ConvLSTM (OpenSTL's ConvLSTM_Model): stacked ConvLSTM cells on patched frames.

Keys `cell_list.{i}.conv_x/conv_h` (+ the never-used `conv_o`, `conv_last` OpenSTL builds) and
`conv_last` (1x1 readout). Gates (i, f, g, o) with no forget bias (spec/rnn.md 3.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simvp_ray.models.recurrent.common import (
    PatchedRecurrentModel,
    RecurrentSpec,
    conv_block,
    freeze_unused,
)


class ConvLSTMCell(nn.Module):
    def __init__(self, c_in: int, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.hidden = hidden
        self.conv_x = conv_block(c_in, 4 * hidden, spec)
        self.conv_h = conv_block(hidden, 4 * hidden, spec)
        # built by OpenSTL, never called: kept for its keys and parameter count
        self.conv_o = conv_block(2 * hidden, hidden, spec)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        freeze_unused(self.conv_o, self.conv_last)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        i_x, f_x, g_x, o_x = torch.split(self.conv_x(x), self.hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.hidden, dim=1)
        i = torch.sigmoid(i_x + i_h)
        f = torch.sigmoid(f_x + f_h)  # no forget bias (OpenSTL defines one and never adds it)
        g = torch.tanh(g_x + g_h)
        c_new = f * c + i * g
        o = torch.sigmoid(o_x + o_h)
        return o * torch.tanh(c_new), c_new


class ConvLSTM(PatchedRecurrentModel):
    method = "convlstm"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        spec = self.spec
        widths = spec.num_hidden
        self.cell_list = nn.ModuleList(
            ConvLSTMCell(spec.frame_channels if i == 0 else widths[i - 1], width, spec)
            for i, width in enumerate(widths))
        self.conv_last = nn.Conv2d(widths[-1], spec.frame_channels, 1, bias=False)

    def init_state(self, batch: int, like: torch.Tensor) -> dict[str, Any]:
        hp, wp = self.spec.grid
        zeros = [like.new_zeros(batch, width, hp, wp) for width in self.spec.num_hidden]
        return {"h": list(zeros), "c": list(zeros)}

    def step(self, net: torch.Tensor, state: dict[str, Any], with_loss: bool) -> torch.Tensor:
        h, c = state["h"], state["c"]
        for i, cell in enumerate(self.cell_list):
            h[i], c[i] = cell(net if i == 0 else h[i - 1], h[i], c[i])
        return h[-1]
