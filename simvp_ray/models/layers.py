"""Small shared layers: ConvSC, DropPath, norms, MLPs, attention and the MetaFormer skeleton.

Shapes: N = batch * time (frames folded into the batch), D = channels, (H, W) a 2-D map,
L = H * W tokens. Module attribute names follow OpenSTL so its state dicts load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------
# Initialisation (OpenSTL's per-family rules; see spec/models.md "Weight init summary")


def init_fan_out(module: nn.Module) -> None:
    """Conv2d ~ N(0, sqrt(2 / fan_out)), Linear ~ trunc_normal(0.02), norms 1 / 0."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        fan_out //= module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    else:
        init_trunc_normal(module)


def init_trunc_normal_all(module: nn.Module) -> None:
    """PoolFormer: convs too ~ trunc_normal(0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    else:
        init_trunc_normal(module)


def init_trunc_normal(module: nn.Module) -> None:
    """Linear ~ trunc_normal(0.02), bias 0; norms weight 1, bias 0; convs keep torch defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.BatchNorm2d | LayerNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------
# Encoder / decoder block


class ConvNormAct(nn.Module):
    """Conv2d (or Conv2d -> PixelShuffle(2) when upsampling) -> GroupNorm(2) -> SiLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, upsample: bool):
        super().__init__()
        padding = (kernel - stride + 1) // 2
        if upsample:
            # 4x the channels at stride 1, then PixelShuffle(2): (N, 4C, H, W) -> (N, C, 2H, 2W)
            self.conv = nn.Sequential(
                nn.Conv2d(c_in, c_out * 4, kernel, stride=1, padding=padding), nn.PixelShuffle(2)
            )
        else:
            self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        self.norm = nn.GroupNorm(2, c_out)
        self.act = nn.SiLU()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvSC(nn.Module):
    """SimVP's only encoder/decoder block (OpenSTL `ConvSC`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, downsample=False, upsample=False):
        super().__init__()
        self.conv = ConvNormAct(c_in, c_out, kernel, stride=2 if downsample else 1,
                                upsample=upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# ---------------------------------------------------------------------------------------
# Regularisation and norms


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample, rescale the kept ones by 1/keep."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4g}"


def drop_path(rate: float) -> nn.Module:
    # OpenSTL builds an Identity only when the rate is exactly 0.
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an (N, D, H, W) map (ConvNeXt's / HorNet's channels-first)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def batch_norm(dim: int) -> nn.Module:
    return nn.BatchNorm2d(dim)


def group_norm_1(dim: int) -> nn.Module:
    return nn.GroupNorm(1, dim)


def layer_norm(dim: int, eps: float = 1e-5) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps)


# ---------------------------------------------------------------------------------------
# MLPs


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv, wrapped so its key is `dwconv.dwconv` as in OpenSTL's MixMlp."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class Mlp(nn.Module):
    """fc1 -> [depthwise 3x3] -> GELU -> dropout -> fc2 -> dropout.

    `kind`: "linear" on (..., D) tokens; "conv" with 1x1 convs on (N, D, H, W) maps; "mix" is
    "conv" plus the depthwise conv after fc1 (VAN / gSTA's MixMlp).
    """

    def __init__(self, dim: int, hidden: int, kind: str = "linear", dropout: float = 0.0,
                 out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim or dim
        if kind == "linear":
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out_dim)
        else:
            self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, out_dim, 1)
        if kind == "mix":
            self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if hasattr(self, "dwconv"):
            x = self.dwconv(x)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


# ---------------------------------------------------------------------------------------
# Attention on token sequences


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention on (N, L, D) tokens (timm's `Attention`: `qkv`, `proj`)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        n, length, dim = x.shape
        # (N, L, 3D) -> 3 x (N, heads, L, D / heads)
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(n, length, dim)))


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) -> (N, H*W, D)."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H*W, D) -> (N, D, H, W)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


# ---------------------------------------------------------------------------------------
# The MetaFormer skeleton shared by most translators


class MetaFormerBlock(nn.Module):
    """x + DropPath(s1 * mixer(norm1(x))), then x + DropPath(s2 * mlp(norm2(x))).

    The token mixer is the only thing translators change. It is registered under
    `mixer_name` (OpenSTL's `attn`, `token_mixer`, `mlp_tokens`, ...) and the layer scales
    under `scale_names`, so OpenSTL's keys load. Works on (N, D, H, W) maps
    (`channels_first=True`) and on (N, L, D) tokens.
    """

    def __init__(self, dim: int, norm: Callable[[int], nn.Module], mixer: nn.Module,
                 mlp: nn.Module, drop_path_rate: float, layer_scale: float | None = None,
                 scale_shape: tuple[int, ...] | None = None, channels_first: bool = True,
                 mixer_name: str = "attn", mlp_name: str = "mlp",
                 scale_names: tuple[str, str] = ("layer_scale_1", "layer_scale_2")):
        super().__init__()
        self.norm1 = norm(dim)
        self.mixer_name, self.mlp_name = mixer_name, mlp_name
        self.add_module(mixer_name, mixer)
        self.norm2 = norm(dim)
        self.add_module(mlp_name, mlp)
        self.drop_path = drop_path(drop_path_rate)
        self.channels_first = channels_first
        self.scale_names = scale_names if layer_scale is not None else None
        if self.scale_names:
            for name in scale_names:
                shape = scale_shape or (dim,)
                self.register_parameter(name, nn.Parameter(layer_scale * torch.ones(shape)))

    def _scaled(self, index: int, y: torch.Tensor) -> torch.Tensor:
        if not self.scale_names:
            return y
        scale = getattr(self, self.scale_names[index])
        return scale.view(1, -1, 1, 1) * y if self.channels_first else scale * y

    def residual_pair(self, x: torch.Tensor) -> torch.Tensor:
        mixer, mlp = getattr(self, self.mixer_name), getattr(self, self.mlp_name)
        x = x + self.drop_path(self._scaled(0, mixer(self.norm1(x))))
        return x + self.drop_path(self._scaled(1, mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return self.residual_pair(x)
        height, width = x.shape[-2:]
        return to_map(self.residual_pair(to_tokens(x)), height, width)
