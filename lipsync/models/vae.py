"""The VAE: diffusers' AutoencoderKL, from a local sd-vae-ft-mse folder or a small `tiny` config."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lipsync.errors import CheckpointError


def tiny_vae(block_out_channels=(32, 64, 64), layers_per_block: int = 1, latent_channels: int = 4,
             norm_num_groups: int = 16):
    """A small AutoencoderKL: each extra block halves the resolution (3 blocks = 4x)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=96,
    )


def load_vae_folder(folder: str | os.PathLike):
    """AutoencoderKL from a local diffusers folder (config.json + weights); never a hub download."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(str(config), "missing: a diffusers VAE folder needs config.json "
                                           "(and diffusion_pytorch_model.safetensors)")
    weights = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    if not any(w.is_file() for w in weights):
        raise CheckpointError(str(weights[0]), "missing: the VAE weights are not in the folder")
    try:
        # low_cpu_mem_usage=False: the default wants `accelerate` and says so on every load otherwise.
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(str(folder), f"cannot load the VAE: {str(err).splitlines()[0][:300]}") from err


def downsample_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode(vae, images: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
    """Images in [-1, 1] (n, 3, H, W) -> scaled latents (n, C, H/k, W/k), the distribution's mean."""
    latents = vae.encode(images).latent_dist.mode()
    return (latents - shift_factor) * scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0,
           clamp: bool = True) -> torch.Tensor:
    """``clamp=False`` gives the raw decoder output, which LatentSync blends before it clamps."""
    out = vae.decode(latents / scaling_factor + shift_factor).sample
    return out.clamp(-1, 1) if clamp else out
