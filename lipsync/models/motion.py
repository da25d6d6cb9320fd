"""Temporal ("motion") modules of the UNet: self-attention over the frame axis, AnimateDiff style.

One :class:`MotionModule` follows every resnet(/spatial-attention) pair of every down and up block.
Its math is AnimateDiff's ``VanillaTemporalModule`` as LatentSync configures it (one temporal
transformer block holding two temporal self-attentions, sinusoidal positions of max length 24,
zero-initialised output projection), re-derived here; parameter names match LatentSync checkpoints::

    motion_modules.N.temporal_transformer.norm              GroupNorm(groups, C, eps=1e-6), per frame
    motion_modules.N.temporal_transformer.proj_in           Linear(C, C)
    motion_modules.N.temporal_transformer.transformer_blocks.0
        .attention_blocks.{0,1}.{to_q,to_k,to_v}            Linear(C, C, bias=False)
        .attention_blocks.{0,1}.to_out.0                    Linear(C, C)
        .attention_blocks.{0,1}.pos_encoder.pe              buffer [1, max_len, C] (in the state dict)
        .norms.{0,1}, .ff_norm                              LayerNorm(C), pre-norm + residual
        .ff.net.0.proj, .ff.net.2                           GEGLU feed-forward, inner width 4C
    motion_modules.N.temporal_transformer.proj_out          Linear(C, C), zero at init

Layout: the UNet keeps activations as ``((b f), c, h, w)``. A module normalises each frame, then
regroups once into ``((b h w), f, c)`` sequences (one per sample and pixel, so nothing ever mixes
across batch items or pixels), runs all its token-wise layers and both temporal attentions in that
layout (LayerNorm, Linear and the feed-forward act per token, so their order of layout is
irrelevant), and regroups back before the outer residual.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """The transformer sinusoid ``[1, max_len, dim]`` (float32): even channels sin, odd cos."""
    if dim % 2:
        raise ValueError(f"the temporal position table needs an even channel count, got {dim}")
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim, dtype=torch.float32)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoid of each frame index to the frame's token (persistent buffer ``pe``)."""

    def __init__(self, dim: int, max_len: int = 24):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim))

    @property
    def max_len(self) -> int:
        return self.pe.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, f, c)
        frames = x.shape[1]
        if frames > self.max_len:
            raise ValueError(f"{frames} frames exceed the temporal position table ({self.max_len})")
        return x + self.pe[:, :frames].to(x.dtype)


class TemporalAttention(nn.Module):
    """Multi-head self-attention across frames (AnimateDiff's VersatileAttention, mode Temporal).

    Positions are added to the (normalised) input before the q/k/v projections; softmax scale is
    ``head_dim ** -0.5``.
    """

    def __init__(self, dim: int, heads: int, max_len: int = 24, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"temporal attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, f, c) -> (n, f, c)
        n, f, c = x.shape
        x = self.pos_encoder(x)
        q, k, v = (proj(x).reshape(n, f, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, f, c)
        for layer in self.to_out:
            out = layer(out)
        return out


class GEGLU(nn.Module):
    """``a * gelu(b)`` where ``[a, b]`` is one Linear projection to twice the inner width."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU -> dropout -> Linear, keys ``net.0.proj`` / ``net.2`` (diffusers' FeedForward layout)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalTransformerBlock(nn.Module):
    """Pre-norm residual: each temporal attention, then the GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, num_attention_blocks: int = 2, max_len: int = 24):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, max_len) for _ in range(num_attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, f, c)
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    """GroupNorm (per frame) -> proj_in -> temporal blocks -> proj_out (zero-init) -> + input."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attention_blocks: int = 2,
                 norm_num_groups: int = 32, max_len: int = 24, zero_init: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, num_attention_blocks, max_len) for _ in range(num_blocks)])
        self.proj_out = nn.Linear(channels, channels)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: ``((b f), c, h, w)`` with frames of a sample adjacent; same shape out."""
        bf, c, h, w = x.shape
        b = bf // frames
        y = self.norm(x)  # per frame: each (b f) entry is normalised on its own
        # ((b f), c, h, w) -> (b, h*w, f, c) -> ((b h w), f, c)
        y = y.reshape(b, frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, frames, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self.proj_out(y)
        y = y.reshape(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return y + x


class MotionModule(nn.Module):
    """AnimateDiff's VanillaTemporalModule: a container of ``temporal_transformer`` (key prefix)."""

    def __init__(self, channels: int, heads: int = 8, num_blocks: int = 1, num_attention_blocks: int = 2,
                 norm_num_groups: int = 32, max_len: int = 24, zero_init: bool = True):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, num_blocks, num_attention_blocks,
                                                        norm_num_groups, max_len, zero_init)

    @property
    def max_len(self) -> int:
        return self.temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.max_len

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
