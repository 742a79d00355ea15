"""MIM (Memory In Memory) as OpenSTL's MIM_Model: a PredRNN cell, then MIM blocks with
non-stationary (MIMN) and stationary (MIMS) memories; spec/rnn.md sections 3.2 and 3.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simvp_ray.models.recurrent.common import RecurrentSpec, SampledRNN, conv_block
from simvp_ray.models.recurrent.predrnn import SpatioTemporalLSTMCell


def peephole_lstm(cell: MIMN | MIMBlock, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The MIMN / MIMS recurrence: gates (i, g, f, o), elementwise peepholes on c, forget +1."""
    nh = cell.num_hidden
    i_h, g_h, f_h, o_h = cell.conv_h_concat(h).split(nh, dim=1)
    i_c, f_c = (c.repeat(1, 2, 1, 1) * cell.ct_weight).split(nh, dim=1)
    i_x, g_x, f_x, o_x = cell.conv_x_concat(x).split(nh, dim=1)
    i = torch.sigmoid(i_h + i_c + i_x)
    f = torch.sigmoid(f_h + f_c + f_x + 1.0)
    c_new = f * c + i * torch.tanh(g_h + g_x)
    h_new = torch.sigmoid(o_h + o_x + c_new * cell.oc_weight) * torch.tanh(c_new)
    return h_new, c_new


class MIMN(nn.Module):
    """Non-stationary module: a peephole ConvLSTM over differences (`conv_last` is never used)."""

    def __init__(self, c_in: int, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.num_hidden = hidden
        self.ct_weight = nn.Parameter(torch.zeros(2 * hidden, *spec.grid))
        self.oc_weight = nn.Parameter(torch.zeros(hidden, *spec.grid))
        self.conv_h_concat = conv_block(c_in, 4 * hidden, spec)
        self.conv_x_concat = conv_block(c_in, 4 * hidden, spec)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)
        self.conv_last.weight.requires_grad_(False)  # built by OpenSTL, never used

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return peephole_lstm(self, x, h, c)


class MIMBlock(nn.Module):
    """MIM block: temporal cell replaced by the stationary module's output (spec/rnn.md 3.5).

    `convlstm_c` (the MIMS cell state S) lives on the module across calls, read detached.
    """

    def __init__(self, c_in: int, hidden: int, spec: RecurrentSpec):
        super().__init__()
        self.num_hidden = hidden
        self.convlstm_c: torch.Tensor | None = None
        self.ct_weight = nn.Parameter(torch.zeros(2 * hidden, *spec.grid))
        self.oc_weight = nn.Parameter(torch.zeros(hidden, *spec.grid))
        self.conv_t_cc = conv_block(c_in, 3 * hidden, spec)
        self.conv_s_cc = conv_block(hidden, 4 * hidden, spec)
        self.conv_x_cc = conv_block(hidden, 4 * hidden, spec)
        self.conv_h_concat = conv_block(hidden, 4 * hidden, spec)
        self.conv_x_concat = conv_block(hidden, 4 * hidden, spec)
        self.conv_last = nn.Conv2d(2 * hidden, hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, diff: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nh = self.num_hidden
        i_t, g_t, o_t = self.conv_t_cc(h).split(nh, dim=1)
        i_s, g_s, f_s, o_s = self.conv_s_cc(m).split(nh, dim=1)
        i_x, g_x, f_x, o_x = self.conv_x_cc(x).split(nh, dim=1)
        m_new = (torch.sigmoid(f_x + f_s + 1.0) * m
                 + torch.sigmoid(i_x + i_s) * torch.tanh(g_x + g_s))
        s = self.convlstm_c
        if s is None:
            s = torch.zeros_like(x)
        elif s.shape != x.shape:
            raise ValueError(
                f"MIM carries its stationary memory across batches (OpenSTL's behaviour), so "
                f"every batch needs the same size: got a batch of {x.shape[0]} after one of "
                f"{s.shape[0]}; use drop_last and equal train/validation batch sizes, or call "
                "model.reset_state()")
        t_cell, s_new = peephole_lstm(self, diff, c, s.to(x))  # follows .double() / .to(device)
        self.convlstm_c = s_new.detach()  # OpenSTL reads it detached: no gradient across calls
        c_new = t_cell + torch.sigmoid(i_x + i_t) * torch.tanh(g_x + g_t)
        o = torch.sigmoid(o_x + o_t + o_s)
        return o * torch.tanh(self.conv_last(torch.cat([c_new, m_new], dim=1))), c_new, m_new


class MIM(SampledRNN):
    """OpenSTL's MIM_Model: `stlstm_layer.0` a PredRNN cell, `stlstm_layer.{1..}` MIM blocks,
    `stlstm_layer_diff.{j}` the MIMN modules between them, `conv_last` the 1x1 readout.

    Stateful, as in OpenSTL: every MIMBlock keeps its stationary memory S (`convlstm_c`) from
    the last step of one call to the first step of the next (batch to batch, training to
    validation), detached. So the same input gives a different output on a second call, and
    the batch size may not change between calls (a ValueError says so). Set
    `model.carry_state = False` (`build_model` does under model.recurrent.openstl_quirks=false)
    to start every call from zeros instead, or call
    `model.reset_state()` (for example before evaluating). The state is not in the state_dict
    (nor in OpenSTL's), so a resumed run starts it from zeros. The MIMN calls OpenSTL makes on
    zeros at t = 0 and discards are skipped (its FLOP count does not include them either).
    """

    method = "mim"

    def __init__(self, configs: Mapping[str, Any]):
        super().__init__(configs)
        cfg = self.spec
        widths = cfg.num_hidden
        if len(widths) < 2:
            raise ValueError(f"mim: num_hidden={widths} needs at least 2 layers (layer 0 is a "
                             "PredRNN cell, MIM blocks start at layer 1)")
        self.num_layers = len(widths)
        self.num_hidden = widths
        self.carry_state = True
        self.stlstm_layer = nn.ModuleList(
            [SpatioTemporalLSTMCell(cfg.frame_channels, widths[0], cfg)]
            + [MIMBlock(widths[i - 1], widths[i], cfg) for i in range(1, len(widths))])
        self.stlstm_layer_diff = nn.ModuleList(
            MIMN(widths[i], widths[i + 1], cfg) for i in range(len(widths) - 1))
        self.conv_last = nn.Conv2d(widths[-1], cfg.frame_channels, 1, bias=False)

    def reset_state(self) -> None:
        """Forget the stationary memories (the next call starts from zeros, as a fresh model)."""
        for block in self.stlstm_layer[1:]:
            block.convlstm_c = None

    def stationary_state(self) -> list[torch.Tensor | None]:
        return [block.convlstm_c for block in self.stlstm_layer[1:]]

    def load_stationary_state(self, states: list[torch.Tensor]) -> None:
        for block, state in zip(self.stlstm_layer[1:], states, strict=True):
            block.convlstm_c = state.detach()

    def rollout(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.carry_state:
            self.reset_state()
        cfg, layers = self.spec, self.num_layers
        batch, _, _, height, width = frames.shape
        zeros = frames.new_zeros(batch, self.num_hidden[0], height, width)
        h, c = [zeros] * layers, [zeros] * layers
        diff_h, diff_c = [zeros] * (layers - 1), [zeros] * (layers - 1)
        memory = zeros
        x_gen, outputs = None, []
        for t in range(cfg.total_length - 1):
            net = self.select_input(t, frames, mask, x_gen)
            h_prev = h[0]
            h[0], c[0], memory = self.stlstm_layer[0](net, h[0], c[0], memory)[:3]
            for i in range(1, layers):
                if t > 0:  # at t = 0 OpenSTL runs MIMN on zeros and drops the result
                    x_diff = h[0] - h_prev if i == 1 else diff_h[i - 2]
                    diff_h[i - 1], diff_c[i - 1] = self.stlstm_layer_diff[i - 1](
                        x_diff, diff_h[i - 1], diff_c[i - 1])
                h[i], c[i], memory = self.stlstm_layer[i](h[i - 1], diff_h[i - 1], h[i], c[i],
                                                          memory)
            x_gen = self.conv_last(h[-1])
            outputs.append(x_gen)
        return torch.stack(outputs, dim=1)
