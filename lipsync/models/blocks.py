"""3-D down / mid / up blocks of the UNet, built from diffusers' 2-D layers plus our motion modules.

Activations travel as ``((b f), c, h, w)``: the frames of one sample are adjacent along the batch
axis, so every convolution, up/down-sampler and spatial transformer is a plain per-frame 2-D layer
(diffusers' own modules, hence diffusers' parameter names and shapes). Two things are 3-D:

* the GroupNorms inside resnets (``norm1``, ``norm2``) take statistics over all frames of a sample's
  window (:func:`window_group_norm`), as LatentSync's ``ResnetBlock3D`` does with ``nn.GroupNorm`` on
  the 5-D tensor; the spatial transformers' GroupNorm/LayerNorms stay per frame;
* a :class:`~lipsync.models.motion.MotionModule` after each resnet(/attention) pair mixes frames.

Each layer (resnet -> attention -> motion module) is one gradient-checkpointing unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn
from torch.utils.checkpoint import checkpoint

from lipsync.models.motion import MotionModule


def window_group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: int) -> torch.Tensor:
    """``norm`` over each sample's whole window: ``x`` is ``((b f), c, h, w)``; statistics per (sample,
    group) are taken over that group's channels in all ``frames`` frames (= ``norm`` applied to the
    5-D ``(b, c, f, h, w)`` tensor)."""
    if frames == 1:
        return norm(x)
    bf, c, h, w = x.shape
    y = norm(x.reshape(bf // frames, frames, c, h, w).transpose(1, 2))
    return y.transpose(1, 2).reshape(bf, c, h, w)


class ResnetBlock3D(ResnetBlock2D):
    """diffusers' ResnetBlock2D parameters; forward with window-wide GroupNorm statistics.

    Supports the configuration the SD-1.5 layout uses (``time_embedding_norm="default"``, no
    up/down sampling inside the resnet)."""

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
        h = self.nonlinearity(window_group_norm(self.norm1, x, frames))
        h = self.conv1(h)
        if self.time_emb_proj is not None and temb is not None:
            t = self.time_emb_proj(self.nonlinearity(temb))  # (b, c): one embedding per sample
            h = h + t.repeat_interleave(frames, dim=0)[:, :, None, None]
        h = self.nonlinearity(window_group_norm(self.norm2, h, frames))
        h = self.conv2(self.dropout(h))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


@dataclass(frozen=True)
class BlockSpec:
    """What every block needs beyond its channel counts (shared by all blocks of one UNet)."""

    temb_channels: int
    eps: float
    groups: int
    heads: int
    cross_attention_dim: int
    motion: dict | None  # MotionModule kwargs, or None without motion modules
    downsample_padding: int = 1


def _resnet(spec: BlockSpec, cin: int, cout: int) -> ResnetBlock3D:
    return ResnetBlock3D(in_channels=cin, out_channels=cout, temb_channels=spec.temb_channels, eps=spec.eps,
                         groups=spec.groups, dropout=0.0, time_embedding_norm="default", non_linearity="silu",
                         output_scale_factor=1.0, pre_norm=True)


def _transformer(spec: BlockSpec, channels: int) -> Transformer2DModel:
    return Transformer2DModel(spec.heads, channels // spec.heads, in_channels=channels, num_layers=1,
                              cross_attention_dim=spec.cross_attention_dim, norm_num_groups=spec.groups,
                              use_linear_projection=False, only_cross_attention=False, upcast_attention=False)


class _Block(nn.Module):
    """Shared layer loop: resnet -> spatial attention (optional) -> motion module (optional)."""

    gradient_checkpointing = False

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
               frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb, frames)
        if self.attentions is not None:
            x = self.attentions[i](x, encoder_hidden_states=context, return_dict=False)[0]
        if self.motion_modules is not None:
            x = self.motion_modules[i](x, frames)
        return x

    def _run_layer(self, i, x, temb, context, frames):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._layer, i, x, temb, context, frames, use_reentrant=False)
        return self._layer(i, x, temb, context, frames)


def _motion_list(spec: BlockSpec, channels: int, n: int) -> nn.ModuleList | None:
    if spec.motion is None:
        return None
    return nn.ModuleList([MotionModule(channels, **spec.motion) for _ in range(n)])


class DownBlock3D(_Block):
    """``num_layers`` x (resnet [-> attention] [-> motion]) then an optional strided-conv downsampler.

    ``cross_attention=True`` is LatentSync's CrossAttnDownBlock3D, ``False`` its DownBlock3D."""

    def __init__(self, spec: BlockSpec, in_channels: int, out_channels: int, num_layers: int,
                 cross_attention: bool, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(spec, in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)])
        self.attentions = (nn.ModuleList([_transformer(spec, out_channels) for _ in range(num_layers)])
                           if cross_attention else None)
        self.motion_modules = _motion_list(spec, out_channels, num_layers)
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                         padding=spec.downsample_padding, name="op")])
                             if add_downsample else None)

    def forward(self, x, temb, context, frames: int, skip_downsample: bool = False):
        """Returns ``(x, skips)``: one skip per layer, plus the downsampled map when downsampling."""
        skips = []
        for i in range(len(self.resnets)):
            x = self._run_layer(i, x, temb, context, frames)
            skips.append(x)
        if self.downsamplers is not None and not skip_downsample:
            for down in self.downsamplers:
                x = down(x)
            skips.append(x)
        return x, skips


class MidBlock3D(_Block):
    """resnet -> (attention -> resnet); no motion modules (as in LatentSync)."""

    def __init__(self, spec: BlockSpec, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(spec, channels, channels), _resnet(spec, channels, channels)])
        self.attentions = nn.ModuleList([_transformer(spec, channels)])
        self.motion_modules = None

    def _layer(self, i, x, temb, context, frames):
        x = self.attentions[i](x, encoder_hidden_states=context, return_dict=False)[0]
        return self.resnets[i + 1](x, temb, frames)

    def forward(self, x, temb, context, frames: int):
        x = self.resnets[0](x, temb, frames)
        for i in range(len(self.attentions)):
            x = self._run_layer(i, x, temb, context, frames)
        return x


class UpBlock3D(_Block):
    """``num_layers`` x (concat skip -> resnet [-> attention] [-> motion]) then an optional upsampler."""

    def __init__(self, spec: BlockSpec, in_channels: int, prev_output_channels: int, out_channels: int,
                 num_layers: int, cross_attention: bool, add_upsample: bool):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            cin = prev_output_channels if i == 0 else out_channels
            resnets.append(_resnet(spec, cin + skip, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = (nn.ModuleList([_transformer(spec, out_channels) for _ in range(num_layers)])
                           if cross_attention else None)
        self.motion_modules = _motion_list(spec, out_channels, num_layers)
        self.upsamplers = (nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def forward(self, x, skips: list[torch.Tensor], temb, context, frames: int, upsample_size=None):
        """``skips`` are consumed from the end (the deepest first), one per layer."""
        skips = list(skips)
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._run_layer(i, x, temb, context, frames)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, upsample_size)
        return x


DOWN_TYPES = {"CrossAttnDownBlock3D": True, "DownBlock3D": False,
              "CrossAttnDownBlock2D": True, "DownBlock2D": False}  # value: has cross attention
UP_TYPES = {"CrossAttnUpBlock3D": True, "UpBlock3D": False, "CrossAttnUpBlock2D": True, "UpBlock2D": False}


def set_gradient_checkpointing(module: nn.Module, enabled: bool) -> None:
    for m in module.modules():
        if isinstance(m, _Block):
            m.gradient_checkpointing = enabled

