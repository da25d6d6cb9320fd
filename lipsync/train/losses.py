"""Pixel-space losses of UNet stage 2, on the decoded one-step x0 estimate.

* :func:`mixed_noise` - LatentSync's "mixed" noise: a component shared by every frame of a window
  plus a per-frame one, ``alpha`` = shared / per-frame standard-deviation ratio (variance 1 in all).
* :func:`temporal_loss` - inter-frame motion smoothness: the generated clip's frame-to-frame
  differences should match the real clip's (L1), so generated mouths neither freeze nor flicker.
* :class:`VideoEncoder` + :func:`trepa_loss` - a TREPA-style temporal representation loss: features
  of generated vs real 16-frame clips under a frozen 3-D convolutional video encoder. LatentSync
  uses VideoMAE-v2 features, which cannot be downloaded here; our encoder is small (3 strided
  3-D conv stages, about 0.2 M parameters) and **random but fixed** (seed 0) unless
  ``loss.trepa_weights`` names trained weights of the same architecture. Random convolutional
  features are a known usable perceptual/temporal distance (their receptive fields span 7 frames
  here), and a fixed seed makes the loss reproducible across runs and workers; each layer's
  features are channel-normalised before the squared distance, so every stage counts alike.
* :class:`LPIPS` - used only when VGG16 weights are supplied (``loss.lpips_vgg_weights``, torchvision
  key names ``features.N.*``); the LPIPS linear heads (``lin0..lin4`` of the lpips package's
  ``vgg.pth``) are optional (equal channel weights without them). Without VGG weights the loss is
  skipped and the training log says so.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn


def mixed_noise(shape, alpha: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, C, F, h, w) unit-variance noise: sqrt(a^2/(1+a^2)) * shared + sqrt(1/(1+a^2)) * per-frame."""
    b, c, f, h, w = shape
    ind = torch.randn(shape, generator=generator, device=device)
    if alpha <= 0:
        return ind
    shared = torch.randn((b, c, 1, h, w), generator=generator, device=device).expand(shape)
    a2 = float(alpha) ** 2
    return shared * math.sqrt(a2 / (1 + a2)) + ind * math.sqrt(1 / (1 + a2))


def temporal_loss(gen: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between the frame-to-frame differences of ``gen`` and ``real`` (B, F, 3, H, W)."""
    if gen.shape[1] < 2:
        return gen.new_zeros(())
    return (torch.diff(gen, dim=1) - torch.diff(real, dim=1)).abs().mean()


class VideoEncoder(nn.Module):
    """Small frozen 3-D conv video encoder for the TREPA-style loss (see the module doc)."""

    def __init__(self, channels=(16, 32, 64)):
        super().__init__()
        layers = []
        c = 3
        for i, ch in enumerate(channels):
            layers.append(nn.Sequential(
                nn.Conv3d(c, ch, kernel_size=3, stride=(1, 2, 2), padding=1),
                nn.GroupNorm(min(8, ch), ch), nn.GELU()))
            c = ch
        self.stages = nn.ModuleList(layers)

    @classmethod
    def frozen(cls, weights: str | os.PathLike | None = None, seed: int = 0) -> "VideoEncoder":
        if weights:
            from lipsync.models.weights import load_strict, read_state_dict

            enc = cls()
            load_strict(enc, read_state_dict(weights), weights, what="TREPA video encoder")
        else:
            g = torch.random.get_rng_state()
            torch.manual_seed(seed)
            enc = cls()
            torch.random.set_rng_state(g)
        return enc.eval().requires_grad_(False)

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """(B, F, 3, H, W) in [-1, 1] -> the features of every stage."""
        x = video.transpose(1, 2)  # (B, 3, F, H, W)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).add(1e-10).sqrt())


def trepa_loss(encoder: VideoEncoder, gen: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ref = encoder(real)
    out = encoder(gen)
    return torch.stack([(_unit(a) - _unit(b)).pow(2).sum(dim=1).mean() for a, b in zip(out, ref)]).mean()


# VGG16 "features" layer indices (torchvision) and the ReLU outputs LPIPS taps.
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS-VGG distance (images in [-1, 1]) from user-supplied weights (see the module doc)."""

    def __init__(self, vgg_weights: str | os.PathLike, lin_weights: str | os.PathLike | None = None):
        super().__init__()
        from lipsync.models.weights import read_state_dict

        layers: list[nn.Module] = []
        c = 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        state = {k: v for k, v in read_state_dict(vgg_weights).items() if k.startswith("features.")}
        missing = set(self.state_dict()) - set(state)
        if missing:
            from lipsync.errors import CheckpointError

            raise CheckpointError(str(vgg_weights), f"not VGG16 weights (missing {sorted(missing)[:3]} ...)")
        self.load_state_dict({k: state[k] for k in self.state_dict()}, strict=True)
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(1, ch, 1, 1) / ch) for ch in _LPIPS_CHANNELS])
        if lin_weights:
            lw = read_state_dict(lin_weights)
            for i in range(5):
                w = lw.get(f"lin{i}.model.1.weight")
                if w is not None:
                    self.lins[i].data.copy_(w.reshape(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(a - self.shift) / self.scale, (b - self.shift) / self.scale])
        total = 0.0
        k = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _LPIPS_TAPS:
                fa, fb = x.chunk(2)
                d = (_unit(fa) - _unit(fb)).pow(2)
                total = total + (d * self.lins[k]).sum(dim=1).mean()
                k += 1
                if k == len(_LPIPS_TAPS):
                    break
        return total
