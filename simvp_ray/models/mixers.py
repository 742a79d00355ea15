"""Token mixers and the sub-blocks built from them, one per OpenSTL translator `model_type`.

Every sub-block maps an (N, D, H, W) map to the same shape. Most are the shared
`MetaFormerBlock` with a different token mixer; the few with another residual layout
(ConvMixer, ConvNeXt, HorNet, Uniformer's conv block, Swin) are small classes here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simvp_ray.models.layers import (
    LayerNorm2d,
    MetaFormerBlock,
    Mlp,
    MultiHeadAttention,
    batch_norm,
    drop_path,
    group_norm_1,
    init_fan_out,
    init_trunc_normal,
    init_trunc_normal_all,
    layer_norm,
    to_map,
    to_tokens,
)

# ---------------------------------------------------------------------------------------
# Large-kernel gated attention family: gSTA (SimVPv2), TAU, VAN


class LargeKernelConv(nn.Module):
    """Depthwise 5x5 -> depthwise 7x7 dilation 3: a 21x21 receptive field, cheaply."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_spatial(self.conv0(x))


class GatedUnit(LargeKernelConv):
    """gSTA's gating unit: large kernel -> 1x1 to 2D, output sigmoid(g) * f."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.conv1 = nn.Conv2d(dim, 2 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.conv1(super().forward(x)).chunk(2, dim=1)
        return torch.sigmoid(g) * f


class LargeKernelAttentionUnit(LargeKernelConv):
    """VAN's LKA: large kernel -> 1x1, multiplied by the input."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(super().forward(x))


class TemporalUnit(LargeKernelAttentionUnit):
    """TAU: LKA's static attention times a squeeze-excite (dynamic) channel attention."""

    def __init__(self, dim: int):
        super().__init__(dim)
        hidden = dim // max(dim // 16, 4)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static = self.conv1(LargeKernelConv.forward(self, x))
        excite = self.fc(x.mean(dim=(2, 3)))[:, :, None, None]  # (N, D, 1, 1)
        return excite * static * x


class GatedAttention(nn.Module):
    """proj_1 -> GELU -> unit -> proj_2, plus the input (OpenSTL's inner shortcut)."""

    def __init__(self, dim: int, unit: nn.Module):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = unit
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x


def large_kernel_block(unit: type[nn.Module], default_init_attention: bool = False):
    def build(dim: int, spec: BlockSpec) -> nn.Module:
        block = initialised(MetaFormerBlock(
            dim, batch_norm, GatedAttention(dim, unit(dim)),
            Mlp(dim, int(dim * spec.mlp_ratio), kind="mix", dropout=spec.dropout),
            spec.drop_path, layer_scale=1e-2,
        ), init_fan_out)
        if default_init_attention:
            # OpenSTL's TAU block swaps its attention in after the init ran: torch defaults.
            block.attn = GatedAttention(dim, unit(dim))
        return block

    return build


# ---------------------------------------------------------------------------------------
# MogaNet


class MultiOrderDepthwiseConv(nn.Module):
    """Depthwise 5x5, then 3/8 of the channels through 5x5 dil 2 and 4/8 through 7x7 dil 3."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 8:
            raise ValueError(f"moga needs channel counts divisible by 8, got {dim}")
        self.dims = (dim - dim * 3 // 8 - dim // 2, dim * 3 // 8, dim // 2)  # split 1:3:4
        self.DW_conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.DW_conv1 = nn.Conv2d(self.dims[1], self.dims[1], 5, padding=4, groups=self.dims[1],
                                  dilation=2)
        self.DW_conv2 = nn.Conv2d(self.dims[2], self.dims[2], 7, padding=9, groups=self.dims[2],
                                  dilation=3)
        self.PW_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.DW_conv0(x)
        first, second, third = x0.split(self.dims, dim=1)
        return self.PW_conv(torch.cat([first, self.DW_conv1(second), self.DW_conv2(third)], 1))


class MultiOrderGatedAggregation(nn.Module):
    """MogaNet's spatial mixer: decompose -> SiLU(gate) * SiLU(multi-order value) -> 1x1."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.gate = nn.Conv2d(dim, dim, 1)
        self.value = MultiOrderDepthwiseConv(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)
        self.sigma = nn.Parameter(1e-5 * torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_1(x)
        # feature decomposition: push each map away from its spatial mean by sigma
        y = F.silu(y + self.sigma * (y - y.mean(dim=(2, 3), keepdim=True)))
        return self.proj_2(F.silu(self.gate(y)) * F.silu(self.value(y))) + x


class ChannelAggregationMlp(nn.Module):
    """MogaNet's FFN: 1x1 -> depthwise 3x3 -> GELU -> channel decomposition -> 1x1."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.decompose = nn.Conv2d(hidden, 1, 1)
        self.sigma = nn.Parameter(1e-5 * torch.ones(1, hidden, 1, 1))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.dwconv(self.fc1(x))))
        x = x + self.sigma * (x - F.gelu(self.decompose(x)))
        return self.drop(self.fc2(x))


def moga_block(dim: int, spec: BlockSpec) -> nn.Module:
    return initialised(MetaFormerBlock(
        dim, batch_norm, MultiOrderGatedAggregation(dim),
        ChannelAggregationMlp(dim, int(dim * spec.mlp_ratio), spec.dropout),
        spec.drop_path, layer_scale=1e-5, scale_shape=(1, dim, 1, 1),
    ), init_fan_out)


# ---------------------------------------------------------------------------------------
# PoolFormer


class PoolMixer(nn.Module):
    """avgpool 3x3 minus identity: the token mixer that only averages neighbours."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


def poolformer_block(dim: int, spec: BlockSpec) -> nn.Module:
    return initialised(MetaFormerBlock(
        dim, group_norm_1, PoolMixer(),
        Mlp(dim, int(dim * spec.mlp_ratio), kind="conv", dropout=spec.dropout),
        spec.drop_path, layer_scale=1e-5, mixer_name="token_mixer",
    ), init_trunc_normal_all)


# ---------------------------------------------------------------------------------------
# Token-sequence blocks: ViT, MLP-Mixer, Uniformer's attention block, Swin


def vit_block(dim: int, spec: BlockSpec) -> nn.Module:
    return initialised(MetaFormerBlock(
        dim, layer_norm, MultiHeadAttention(dim, 8, dropout=spec.dropout),
        Mlp(dim, int(dim * spec.mlp_ratio), dropout=spec.dropout), spec.drop_path,
        channels_first=False,
    ), init_trunc_normal)


class MixerBlock(MetaFormerBlock):
    """MLP-Mixer: the token MLP mixes the H*W positions of each channel."""

    def residual_pair(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[-2] * x.shape[-1]
        if tokens != self.mlp_tokens.fc1.in_features:
            raise ValueError(
                f"the mlp translator was built for {self.mlp_tokens.fc1.in_features} latent "
                f"positions and got {x.shape[-2]}x{x.shape[-1]}={tokens}: it only runs at the "
                "resolution in the model config"
            )
        return super().forward(x)


def mixer_block(dim: int, spec: BlockSpec) -> nn.Module:
    num_tokens = spec.resolution[0] * spec.resolution[1]
    # timm's MixerBlock sizes the token MLP from the channel width (0.5 * D), not from L.
    return initialised(MixerBlock(
        dim, lambda d: layer_norm(d, 1e-6),
        Mlp(num_tokens, int(0.5 * dim), dropout=spec.dropout),
        Mlp(dim, int(dim * spec.mlp_ratio), dropout=spec.dropout), spec.drop_path,
        channels_first=False, mixer_name="mlp_tokens", mlp_name="mlp_channels",
    ), init_trunc_normal)


class UniformerAttentionBlock(MetaFormerBlock):
    """Uniformer's MHSA block: a depthwise 3x3 positional term, then a ViT block with scales."""

    def __init__(self, dim: int, spec: BlockSpec):
        super().__init__(
            dim, layer_norm, MultiHeadAttention(dim, 8, dropout=spec.dropout),
            Mlp(dim, int(dim * spec.mlp_ratio), dropout=spec.dropout), spec.drop_path,
            layer_scale=1e-6, channels_first=False, scale_names=("gamma_1", "gamma_2"),
        )
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pos_embed(x))


class UniformerConvBlock(nn.Module):
    """Uniformer's conv block: positional term, 1x1 -> depthwise 5x5 -> 1x1, conv MLP."""

    def __init__(self, dim: int, spec: BlockSpec):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.drop_path = drop_path(spec.drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * spec.mlp_ratio), kind="conv", dropout=spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def uniformer_block(dim: int, spec: BlockSpec) -> nn.Module:
    # OpenSTL: attention only in the middle blocks (equal in/out width, not the first block).
    if spec.is_middle:
        return initialised(UniformerAttentionBlock(dim, spec), init_trunc_normal)
    return initialised(UniformerConvBlock(dim, spec), init_fan_out)


def swin_window_size(resolution: tuple[int, int]) -> int:
    size = 7 if resolution[0] % 7 == 0 else max(4, resolution[0] // 16)
    return min(8, size)


class WindowAttention(MultiHeadAttention):
    """Attention inside ws x ws windows with a learned relative-position bias per head."""

    def __init__(self, dim: int, window: int, num_heads: int, dropout: float):
        super().__init__(dim, num_heads, dropout=dropout)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)  # (2, ws*ws)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = relative[..., 0] * (2 * window - 1) + relative[..., 1]  # (ws*ws, ws*ws)
        # persistent, as timm 0.6 made it: OpenSTL checkpoints carry it
        self.register_buffer("relative_position_index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (windows * N, ws*ws, D)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        length = x.shape[1]
        bias = bias.view(length, length, -1).permute(2, 0, 1).unsqueeze(0).to(x.dtype)
        return super().forward(x, bias)


class SwinBlock(MetaFormerBlock):
    """Swin: window attention, windows shifted by ws/2 on odd blocks.

    As in OpenSTL, the shifted windows are attended WITHOUT the shift mask; the mask buffer
    is still built so that OpenSTL state dicts (which hold it) load.
    """

    def __init__(self, dim: int, spec: BlockSpec):
        window = swin_window_size(spec.resolution)
        height, width = spec.resolution
        if height % window or width % window:
            raise ValueError(
                f"swin needs a latent grid divisible by its window {window}, got {height}x{width}"
            )
        super().__init__(
            dim, layer_norm, WindowAttention(dim, window, 8, spec.dropout),
            Mlp(dim, int(dim * spec.mlp_ratio), dropout=spec.dropout), spec.drop_path,
            channels_first=False,
        )
        self.window = window
        self.shift = window // 2 if spec.index % 2 else 0
        if self.shift:
            self.register_buffer("attn_mask", shifted_window_mask(height, width, window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D, H, W)
        n, dim, height, width = x.shape
        ws = self.window
        tokens = to_tokens(x)
        y = self.norm1(tokens).view(n, height, width, dim)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        # (N, H, W, D) -> (N * windows, ws*ws, D)
        y = y.view(n, height // ws, ws, width // ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
        y = self.attn(y.reshape(-1, ws * ws, dim))
        y = y.view(n, height // ws, width // ws, ws, ws, dim).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, height, width, dim)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        tokens = tokens + self.drop_path(y.reshape(n, height * width, dim))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return to_map(tokens, height, width)


def shifted_window_mask(height: int, width: int, window: int) -> torch.Tensor:
    """Swin's (windows, ws*ws, ws*ws) mask: -100 between positions from different regions."""
    shift = window // 2
    regions = torch.zeros(height, width)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    ids = regions.view(height // window, window, width // window, window)
    ids = ids.permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.ne(0).float() * -100.0


# ---------------------------------------------------------------------------------------
# Convolutional blocks with their own residual layout: ConvMixer, ConvNeXt, HorNet


class ConvMixerBlock(nn.Module):
    """x + BN(GELU(depthwise 11x11)), then BN(GELU(1x1)) with no residual (as in OpenSTL)."""

    def __init__(self, dim: int, spec: BlockSpec):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 11, groups=dim, padding="same")
        self.norm_1 = nn.BatchNorm2d(dim)
        self.conv_pw = nn.Conv2d(dim, dim, 1)
        self.norm_2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm_1(F.gelu(self.conv_dw(x)))
        return self.norm_2(F.gelu(self.conv_pw(x)))


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LN(depthwise 7x7(x))), a single residual."""

    def __init__(self, dim: int, spec: BlockSpec):
        super().__init__()
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        # OpenSTL does not pass `drop` on to timm's ConvNeXt block: no dropout here.
        self.mlp = Mlp(dim, int(dim * spec.mlp_ratio), kind="conv")
        self.drop_path = drop_path(spec.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x)))
        return x + self.drop_path(self.gamma.view(1, -1, 1, 1) * y)


class RecursiveGatedConv(nn.Module):
    """HorNet's g^n conv (order 4): gates of widths D/8, D/4, D/2, D applied recursively."""

    def __init__(self, dim: int, order: int = 4):
        super().__init__()
        if dim % 2 ** (order - 1):
            raise ValueError(f"hornet needs channel counts divisible by {2 ** (order - 1)}, "
                             f"got {dim}")
        self.dims = [dim // 2**i for i in reversed(range(order))]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        self.dwconv = nn.Conv2d(sum(self.dims), sum(self.dims), 7, padding=3,
                                groups=sum(self.dims))
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList(
            nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, values = self.proj_in(x).split((self.dims[0], sum(self.dims)), dim=1)
        values = self.dwconv(values).split(self.dims, dim=1)
        x = gate * values[0]
        for pw, value in zip(self.pws, values[1:]):
            x = pw(x) * value
        return self.proj_out(x)


class HorNetBlock(nn.Module):
    """x + gamma1 * gnconv(LN(x)), then x + gamma2 * MLP(LN(x)) on channels-last tokens."""

    def __init__(self, dim: int, spec: BlockSpec):
        super().__init__()
        hidden = int(spec.mlp_ratio * dim)
        self.norm1 = LayerNorm2d(dim)
        self.gnconv = RecursiveGatedConv(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma1 = nn.Parameter(1e-6 * torch.ones(dim))
        self.gamma2 = nn.Parameter(1e-6 * torch.ones(dim))
        self.drop_path = drop_path(spec.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1.view(1, -1, 1, 1) * self.gnconv(self.norm1(x)))
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        return x + self.drop_path((self.gamma2 * y).permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSpec:
    """What a sub-block builder may need beyond its width."""

    index: int  # position in the translator (Swin shifts the odd ones)
    is_middle: bool  # not the first block and in width == out width (Uniformer's attention)
    resolution: tuple[int, int]  # latent (H', W')
    mlp_ratio: float
    dropout: float
    drop_path: float


def block(cls: type[nn.Module], init: Callable[[nn.Module], None]):
    """A builder for a block class whose constructor takes (dim, spec)."""

    def build(dim: int, spec: BlockSpec) -> nn.Module:
        return initialised(cls(dim, spec), init)

    return build


def initialised(module: nn.Module, init: Callable[[nn.Module], None]) -> nn.Module:
    module.apply(init)
    return module
