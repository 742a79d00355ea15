"""OpenSTL's recurrent baselines (ConvLSTM, PredRNN, PredRNN++, PredRNNv2, MIM, E3D-LSTM, MAU,
PhyDNet) in plain PyTorch, with OpenSTL's parameter names and state_dict keys.

Every model takes OpenSTL's `configs` mapping and offers the same two calls:
- `model(batch_x)` (eval): the forecast (B, T_out, C, H, W) under OpenSTL's test-time mask;
- `model.training_loss(batch_x, batch_y, mask_true)`: the loss OpenSTL's training step returns,
  given a sampling mask in OpenSTL's layout (spec/rnn.md section 2).

`RECURRENT_MODELS` maps OpenSTL's method key (`configs["method"]`, lower case) to the class.
"""

from __future__ import annotations

from torch import nn

from simvp_ray.models.recurrent.convlstm import ConvLSTM
from simvp_ray.models.recurrent.e3dlstm import E3DLSTM
from simvp_ray.models.recurrent.mau import MAU
from simvp_ray.models.recurrent.mim import MIM
from simvp_ray.models.recurrent.phydnet import PhyDNet
from simvp_ray.models.recurrent.predrnn import PredRNN, PredRNNv2
from simvp_ray.models.recurrent.predrnnpp import PredRNNpp

RECURRENT_MODELS: dict[str, type[nn.Module]] = {
    "convlstm": ConvLSTM,
    "predrnn": PredRNN,
    "predrnnv2": PredRNNv2,
    "predrnnpp": PredRNNpp,
    "mim": MIM,
    "e3dlstm": E3DLSTM,
    "mau": MAU,
    "phydnet": PhyDNet,
}
