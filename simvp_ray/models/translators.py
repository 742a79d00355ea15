"""The translator registry: OpenSTL `model_type` name -> translator over stacked frames.

A translator maps (B, T*hid_S, H', W') -> the same shape (time-major channels: index
t * hid_S + c). `incepu` (SimVP v1) is an Inception U-Net; every other name is a stack of
N_T MetaFormer blocks that differ only in their sub-block (`mixers.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from simvp_ray.models import mixers
from simvp_ray.models.layers import init_fan_out, init_trunc_normal
from simvp_ray.models.mixers import BlockSpec

# (width, spec) -> an initialised (N, D, H, W) block; the comments say where each comes from
SubBlock = Callable[[int, BlockSpec], nn.Module]

# One dict replaces OpenSTL's if/elif ladder. `incepu` is handled by `build_translator`.
SUB_BLOCKS: dict[str, SubBlock] = {
    # SimVPv2 gated spatiotemporal attention
    "gsta": mixers.large_kernel_block(mixers.GatedUnit),
    "tau": mixers.large_kernel_block(mixers.TemporalUnit,  # TAU temporal attention unit
                                     default_init_attention=True),
    "van": mixers.large_kernel_block(mixers.LargeKernelAttentionUnit),  # Visual Attention Network
    "moga": mixers.moga_block,  # MogaNet
    "convmixer": mixers.block(mixers.ConvMixerBlock, init_fan_out),  # ConvMixer
    "convnext": mixers.block(mixers.ConvNeXtBlock, init_fan_out),  # ConvNeXt
    "hornet": mixers.block(mixers.HorNetBlock, init_fan_out),  # HorNet
    "poolformer": mixers.poolformer_block,  # PoolFormer
    "mlp": mixers.mixer_block,  # MLP-Mixer
    "swin": mixers.block(mixers.SwinBlock, init_trunc_normal),  # Swin Transformer
    "uniformer": mixers.uniformer_block,  # UniFormer
    "vit": mixers.vit_block,  # Vision Transformer
}

TRANSLATORS: tuple[str, ...] = ("incepu", *SUB_BLOCKS)

# OpenSTL accepts these spellings of model_type too.
ALIASES = {"mlpmixer": "mlp", "moganet": "moga"}


def canonical_name(name: str) -> str:
    """OpenSTL's `model_type` (any case, e.g. `gSTA`, `IncepU`) -> our registry key."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TRANSLATORS:
        raise ValueError(f"unknown translator {name!r}; valid: {', '.join(TRANSLATORS)}")
    return key


# ---------------------------------------------------------------------------------------
# MetaFormer translator (OpenSTL MidMetaNet)


class MetaBlock(nn.Module):
    """A sub-block at its input width, then a 1x1 `reduction` conv when the width changes."""

    def __init__(self, c_in: int, c_out: int, sub_block: SubBlock, spec: BlockSpec):
        super().__init__()
        self.block = sub_block(c_in, spec)
        if c_in != c_out:
            self.reduction = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return self.reduction(x) if hasattr(self, "reduction") else x


def drop_path_rates(drop_path: float, num_blocks: int) -> list[float]:
    """OpenSTL's schedule: linspace(0.01, drop_path, N) for all but the last, drop_path last.

    So even drop_path=0 leaves the first N-1 blocks with small non-zero rates (0.01 .. ~0);
    we keep this to train like OpenSTL.
    """
    rates = torch.linspace(1e-2, drop_path, num_blocks, device="cpu").tolist()
    return rates[:-1] + [drop_path]


class MetaTranslator(nn.Module):
    def __init__(self, channels: int, hidden: int, num_blocks: int, sub_block: SubBlock,
                 resolution: tuple[int, int], mlp_ratio: float, dropout: float,
                 drop_path: float):
        super().__init__()
        widths = [channels] + [hidden] * (num_blocks - 1) + [channels]
        rates = drop_path_rates(drop_path, num_blocks)
        self.enc = nn.Sequential(*(
            MetaBlock(widths[i], widths[i + 1], sub_block, BlockSpec(
                index=i, is_middle=i > 0 and widths[i] == widths[i + 1], resolution=resolution,
                mlp_ratio=mlp_ratio, dropout=dropout, drop_path=rates[i]))
            for i in range(num_blocks)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)


# ---------------------------------------------------------------------------------------
# Inception U-Net translator (SimVP v1, OpenSTL MidIncepNet)


class GroupConvNormAct(nn.Module):
    """Grouped conv -> GroupNorm(groups) -> LeakyReLU(0.2): one Inception branch."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__()
        groups = groups if c_in % groups == 0 else 1
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups)
        self.norm = nn.GroupNorm(groups, c_out)
        self.activate = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.norm(self.conv(x)))


class InceptionBlock(nn.Module):
    """OpenSTL gInception_ST: 1x1 to c_hid, then the SUM of 3/5/7/11 grouped branches."""

    KERNELS = (3, 5, 7, 11)

    def __init__(self, c_in: int, c_hid: int, c_out: int, groups: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_hid, 1)
        self.layers = nn.Sequential(
            *(GroupConvNormAct(c_hid, c_out, k, groups) for k in self.KERNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return sum(branch(x) for branch in self.layers)


class InceptionUNet(nn.Module):
    """N_T encoder and N_T decoder Inception blocks; decoder i >= 1 takes cat(z, skip)."""

    def __init__(self, channels: int, hidden: int, num_blocks: int):
        super().__init__()
        self.enc = nn.Sequential(
            InceptionBlock(channels, hidden // 2, hidden),
            *(InceptionBlock(hidden, hidden // 2, hidden) for _ in range(num_blocks - 1)))
        self.dec = nn.Sequential(
            InceptionBlock(hidden, hidden // 2, hidden),
            *(InceptionBlock(2 * hidden, hidden // 2, hidden) for _ in range(num_blocks - 2)),
            InceptionBlock(2 * hidden, hidden // 2, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, layer in enumerate(self.enc):
            x = layer(x)
            if i < len(self.enc) - 1:
                skips.append(x)
        x = self.dec[0](x)
        for layer, skip in zip(self.dec[1:], reversed(skips)):
            x = layer(torch.cat([x, skip], dim=1))
        return x


def build_translator(name: str, channels: int, hidden: int, num_blocks: int,
                     resolution: tuple[int, int], mlp_ratio: float, dropout: float,
                     drop_path: float) -> nn.Module:
    """Translator `name` over `channels` = T * hid_S stacked channels at latent `resolution`."""
    key = canonical_name(name)
    if num_blocks < 2:
        raise ValueError(f"a translator needs at least 2 blocks (N_T >= 2), got {num_blocks}")
    if key == "incepu":
        return InceptionUNet(channels, hidden, num_blocks)
    return MetaTranslator(channels, hidden, num_blocks, SUB_BLOCKS[key], resolution,
                          mlp_ratio, dropout, drop_path)
