"""LatentSync's SyncNet layout (``StableSyncNet``, configs/syncnet/syncnet_16_pixel_attn.yaml), so a
user's ``stable_syncnet.pt`` loads strictly: same parameter names, shapes and arithmetic as read
in their model. Our own :class:`lipsync.models.syncnet.SyncNet` is a different, smaller design.

Each encoder: ``conv_in`` (3x3), then per level a pre-norm resnet block (GroupNorm 32, SiLU) whose
optional stride-s convolution (3x3, no padding, after a one-sided zero pad) downsamples, plus a
self-attention block after the levels marked in ``attn_blocks`` (it takes the next index in the same
``down_blocks`` list), then ``norm_out`` + ReLU. The inputs are sized so that the map ends at 1 x 1:
the video's 16 lower-half faces as 48 x 128 x 256 channels, the audio as a 1 x 80 x 52 mel window.
Embeddings are the L2-normalised final channels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.models.weights import load_strict, read_state_dict

GROUPS = 32
EPS = 1e-6


def _factor(f) -> tuple[int, int]:
    return (int(f[0]), int(f[1])) if isinstance(f, (list, tuple)) else (int(f), int(f))


class ResnetDown(nn.Module):
    def __init__(self, cin: int, cout: int, factor, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        fh, fw = _factor(factor)
        self.downsample_conv = nn.Conv2d(cout, cout, 3, stride=(fh, fw)) if (fh, fw) != (1, 1) else None
        # F.pad order (left, right, top, bottom): an axis that is not strided keeps its size with 1 + 1.
        self.pad = (1 if fw == 1 else 0, 1, 1 if fh == 1 else 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class AttentionBlock(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        from diffusers.models.attention import FeedForward
        from diffusers.models.attention_processor import Attention

        self.norm1 = nn.GroupNorm(GROUPS, dim, eps=EPS)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")
        self.conv_in = nn.Conv2d(dim, dim, 1)
        self.conv_out = nn.Conv2d(dim, dim, 1)
        self.attn = Attention(query_dim=dim, heads=8, dim_head=dim // 8, dropout=dropout, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # (b, h*w, c)
        t = self.attn(self.norm2(t)) + t
        t = self.ff(self.norm3(t)) + t
        return self.conv_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class Encoder(nn.Module):
    def __init__(self, in_channels: int, block_out_channels: Sequence[int], downsample_factors: Sequence,
                 attn_blocks: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        c = block_out_channels[0]
        for cout, factor, attn in zip(block_out_channels, downsample_factors, attn_blocks):
            self.down_blocks.append(ResnetDown(c, cout, factor, dropout))
            if attn:
                self.down_blocks.append(AttentionBlock(cout, dropout))
            c = cout
        self.norm_out = nn.GroupNorm(GROUPS, c, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return F.relu(self.norm_out(x))


class StableSyncNet(nn.Module):
    """``forward(frames (b, 3F, 128, 256) in [-1, 1], mel (b, 1, 80, 52))`` -> unit embeddings (b, C)."""

    def __init__(self, audio_encoder: dict, visual_encoder: dict):
        super().__init__()
        self.audio_encoder = Encoder(**_encoder_args(audio_encoder))
        self.visual_encoder = Encoder(**_encoder_args(visual_encoder))

    @classmethod
    def from_config(cls, model_cfg: dict) -> "StableSyncNet":
        """From the ``model:`` section of their syncnet YAML."""
        return cls(model_cfg["audio_encoder"], model_cfg["visual_encoder"])

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, model_cfg: dict) -> "StableSyncNet":
        """Their checkpoint (``{"state_dict": ...}``, any ``module.`` prefix removed), strictly."""
        with torch.device("meta"):
            model = cls.from_config(model_cfg)
        load_strict(model, read_state_dict(path), path, what="StableSyncNet", assign=True)
        return model.eval()

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.visual_encoder(frames).flatten(1)
        a = self.audio_encoder(mel).flatten(1)
        return F.normalize(v, dim=1), F.normalize(a, dim=1)


def _encoder_args(cfg: dict) -> dict:
    keys = ("in_channels", "block_out_channels", "downsample_factors", "attn_blocks", "dropout")
    return {k: cfg[k] for k in keys if k in cfg}
