"""SimVP: ConvSC encoder -> translator over stacked frames -> ConvSC decoder -> 1x1 readout.

Shapes: B batch, T frames, C channels, (H, W) the frame; hid_S = `spatial_channels`,
(H', W') = ceil((H, W) / 2 ** (N_S // 2)) the latent grid. forward: (B, T_in, C, H, W) ->
(B, T_out, C, H, W). Module names `enc`, `hid`, `dec` (and `dec.readout`) are OpenSTL's.

Grids of any size: a frame whose H or W is not a multiple of the encoder's down-sampling factor
(regional crops: ERA5 UK is 33 x 49) is padded at its bottom / right edges to the next multiple
and each prediction is cropped back, so the loss and metrics see the real grid only. Padding
replicates the edge values: unlike reflection it mirrors no interior structure (a front near the
edge) into the margin, it works for any pad width (reflection needs pad < size), and unlike
zeros it puts no artificial cliff at the edge of normalised fields. A grid that divides is not
padded at all, so its outputs are bit-identical to OpenSTL's (the parity fixtures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.config import ModelConfig
from simvp_ray.models.layers import ConvSC
from simvp_ray.models.recurrent.build import build_recurrent
from simvp_ray.models.translators import build_translator, canonical_name


def downsample_flags(num_layers: int) -> list[bool]:
    """OpenSTL's stride pattern: [False, True] repeated; layer 0 never downsamples."""
    return [False, True] * (num_layers // 2)


class Encoder(nn.Module):
    def __init__(self, c_in: int, hidden: int, num_layers: int, kernel: int):
        super().__init__()
        flags = downsample_flags(num_layers)
        self.enc = nn.Sequential(*(
            ConvSC(c_in if i == 0 else hidden, hidden, kernel, downsample=down)
            for i, down in enumerate(flags)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (N, C, H, W) -> latent (N, hid_S, H', W') and the first layer's output (the skip)
        skip = x = self.enc[0](x)
        for layer in self.enc[1:]:
            x = layer(x)
        return x, skip


class Decoder(nn.Module):
    def __init__(self, hidden: int, c_out: int, num_layers: int, kernel: int):
        super().__init__()
        flags = list(reversed(downsample_flags(num_layers)))
        self.dec = nn.Sequential(*(ConvSC(hidden, hidden, kernel, upsample=up) for up in flags))
        self.readout = nn.Conv2d(hidden, c_out, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        for layer in self.dec[:-1]:
            x = layer(x)
        # the skip is ADDED to the input of the last (full-resolution) layer
        return self.readout(self.dec[-1](x + skip))


def validate_model_config(config: ModelConfig) -> None:
    canonical_name(config.translator)
    for name in ("in_frames", "out_frames", "channels", "height", "width", "spatial_channels",
                 "translator_channels", "encoder_kernel", "decoder_kernel"):
        if getattr(config, name) < 1:
            raise ValueError(f"model.{name} must be >= 1, got {getattr(config, name)}")
    if config.num_spatial_layers < 2 or config.num_spatial_layers % 2:
        raise ValueError("model.num_spatial_layers (N_S) must be an even number >= 2, got "
                         f"{config.num_spatial_layers}")
    if config.spatial_channels % 2:
        raise ValueError("model.spatial_channels must be even (GroupNorm with 2 groups), got "
                         f"{config.spatial_channels}")


class SimVP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        validate_model_config(config)
        self.config = config
        self.factor = 2 ** (config.num_spatial_layers // 2)  # the encoder's down-sampling
        latent = tuple(-(-size // self.factor) for size in (config.height, config.width))
        hid_s = config.spatial_channels
        self.enc = Encoder(config.channels, hid_s, config.num_spatial_layers,
                           config.encoder_kernel)
        self.hid = build_translator(
            config.translator, config.in_frames * hid_s, config.translator_channels,
            config.num_translator_blocks, latent, config.mlp_ratio, config.dropout,
            config.drop_path)
        self.dec = Decoder(hid_s, config.channels, config.num_spatial_layers,
                           config.decoder_kernel)

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_frames, cfg.channels)
        if x.dim() != 5:
            raise ValueError(f"expected input (B, T, C, H, W) = (B, {cfg.in_frames}, "
                             f"{cfg.channels}, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[1:3]) != expected:
            raise ValueError(f"expected {cfg.in_frames} frames of {cfg.channels} channels, got "
                             f"input shape {tuple(x.shape)}")

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One pass of OpenSTL's SimVP_Model: T_in frames in, T_in frames out (padded to the
        down-sampling factor and cropped back when the grid does not divide)."""
        b, t, c, h, w = x.shape
        frames = x.reshape(b * t, c, h, w)
        pad_h, pad_w = -h % self.factor, -w % self.factor
        if pad_h or pad_w:  # (N, C, H, W) -> (N, C, H + pad_h, W + pad_w), real grid top-left
            frames = F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        latent, skip = self.enc(frames)
        _, hid_s, h_, w_ = latent.shape
        # stack time into channels (time-major: channel t * hid_S + c)
        z = self.hid(latent.reshape(b, t * hid_s, h_, w_))
        y = self.dec(z.reshape(b * t, hid_s, h_, w_), skip)
        return y[..., :h, :w].reshape(b, t, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T_in, C, H, W) -> (B, T_out, C, H, W).

        T_out < T_in keeps the first T_out predicted frames; T_out > T_in rolls the model out
        on its own predictions and keeps the first T_out frames (OpenSTL's SimVP method).
        """
        self.check_input(x)
        out_frames = self.config.out_frames
        y = self.step(x)
        predictions, produced = [y], y.shape[1]
        while produced < out_frames:
            y = self.step(y)
            predictions.append(y)
            produced += y.shape[1]
        y = torch.cat(predictions, dim=1) if len(predictions) > 1 else y
        return y[:, :out_frames]


def build_model(model_config: ModelConfig) -> nn.Module:
    """The model a ModelConfig describes (plain PyTorch, OpenSTL key names): SimVP, or the
    recurrent baseline `model_config.method` names."""
    if model_config.method == "simvp":
        return SimVP(model_config)
    return build_recurrent(model_config)
