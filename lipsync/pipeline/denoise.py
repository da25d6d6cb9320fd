"""Windows of aligned face crops + audio tokens in, regenerated crops out: VAE encode, DDIM
denoising with audio classifier-free guidance, VAE decode. Runs a batch of windows at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lipsync.models import vae as vae_ops


def latentsync_scheduler(prediction_type: str = "epsilon"):
    """DDIM with LatentSync's training schedule (docs/developer_guide.md, "LatentSync facts"); LatentSync's UNets predict epsilon."""
    from diffusers import DDIMScheduler

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", steps_offset=1, prediction_type=prediction_type,
                         timestep_spacing="leading", clip_sample=False, set_alpha_to_one=False)


def training_target(prediction_type: str, z0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to output for ``z_t = sqrt(ab) z0 + sqrt(1 - ab) noise``."""
    if prediction_type == "v_prediction":
        return ab.sqrt() * noise - (1 - ab).sqrt() * z0
    return noise


def predicted_x0(prediction_type: str, zt: torch.Tensor, out: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The one-step clean-latent estimate from the UNet's output ``out`` at ``z_t``."""
    if prediction_type == "v_prediction":
        return ab.sqrt() * zt - (1 - ab).sqrt() * out
    return (zt - (1 - ab).sqrt() * out) / ab.sqrt()


def to_video(t: torch.Tensor, b: int, f: int) -> torch.Tensor:
    """(B*F, C, h, w) -> (B, C, F, h, w)."""
    return t.reshape(b, f, *t.shape[1:]).permute(0, 2, 1, 3, 4)


MASK_RESIZES = ("bilinear", "nearest")


def latent_mask(keep: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """The keep mask (n, 1, S, S) at latent size. ``nearest`` is LatentSync's (``F.interpolate``'s
    default, one sample per latent pixel); ``bilinear`` averages the two rows nearest the latent
    pixel's centre. Both agree on a box whose edges lie on the latent grid (our lower-face masks);
    they differ on a soft or curved mask such as LatentSync's resized mask.png."""
    if mode not in MASK_RESIZES:
        raise ValueError(f"mask resize must be one of {MASK_RESIZES}, got {mode!r}")
    if mode == "nearest":
        return F.interpolate(keep, size=size, mode="nearest")
    return F.interpolate(keep, size=size, mode="bilinear", align_corners=False)


def mask_resize_of(profile) -> str:
    """The profile's latent mask resize (``mask.latent_resize``; LatentSync profiles: nearest)."""
    mode = str((profile.mask or {}).get("latent_resize", "bilinear"))
    if mode not in MASK_RESIZES:
        raise ValueError(f"{profile.source or profile.name}: mask.latent_resize must be one of {MASK_RESIZES}")
    return mode


def condition_latents(encode, x: torch.Tensor, keep: torch.Tensor, b: int, f: int,
                      ref: torch.Tensor | None = None,
                      mask_resize: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet's conditioning channels, built the same way for inference and training.

    ``x``: (B*F, 3, S, S) crops in [-1, 1]; ``keep``: (1, 1, S, S), 1 = keep (the upper face);
    ``encode``: crops -> scaled latents; ``ref``: the reference crops (B*F, 3, S, S), by default
    ``x`` itself (inference); training takes them from other frames of the same clip.
    Returns (mask (B, 1, F, h, w), masked-face latents, reference latents (B, C, F, h, w))."""
    ref_lat = encode(x if ref is None else ref)
    # The product is taken in the wider of the two dtypes, as LatentSync does (a float64 mask times
    # float32 pixels); a float32 model then gets it rounded once.
    wide = torch.promote_types(x.dtype, keep.dtype)
    masked = encode((x.to(wide) * keep.to(x.device, wide)).to(x.dtype))
    h, w = ref_lat.shape[-2:]
    mask_lat = latent_mask(keep, (h, w), mask_resize)
    mask_lat = mask_lat.to(ref_lat.device, ref_lat.dtype).expand(b * f, -1, -1, -1)
    return to_video(mask_lat, b, f), to_video(masked, b, f), to_video(ref_lat, b, f)


def crops_to_pixels(crops: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., S, S, 3) -> (..., 3, S, S) in [-1, 1], computed in ``dtype`` (at least float32)
    as LatentSync normalises, (x / 255 - 0.5) / 0.5, so a float64 run sees its pixels exactly."""
    x = torch.as_tensor(crops).to(torch.promote_types(dtype, torch.float32)).div(255.0).sub(0.5).div(0.5)
    return x.movedim(-1, -3)


def unet_input(latents: torch.Tensor, mask_lat: torch.Tensor, masked: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The 13 input channels in LatentSync's order: noisy latent, mask, masked-face latent, reference."""
    return torch.cat([latents, mask_lat, masked, ref], 1)


@dataclass
class DenoiseSettings:
    num_steps: int = 20
    guidance_scale: float = 1.5
    deepcache_interval: int = 0  # 0 = off; N = full UNet pass every N steps, cached deep features between
    # The reference latent of frame i is the window's frame (i + reference_shift) mod F. 0 (LatentSync):
    # the frame itself, whose original mouth a model trained on other frames' references can copy.
    reference_shift: int = 0
    # How the keep mask reaches latent size: "nearest" is LatentSync's (profiles' mask.latent_resize).
    mask_resize: str = "bilinear"


class WindowDenoiser:
    def __init__(self, unet, vae, scheduler, scaling_factor: float, shift_factor: float = 0.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.scaling, self.shift = float(scaling_factor), float(shift_factor)
        self.device, self.dtype = torch.device(device), dtype
        # The DDIM state is kept at least in float32 (a half-precision model's steps would round the
        # latents 20 times) and in float64 with a float64 model (then the whole path is float64).
        self.latent_dtype = torch.promote_types(dtype, torch.float32)

    def latent_shape(self, size: int) -> tuple[int, int]:
        k = vae_ops.downsample_factor(self.vae)
        return size // k, size // k

    def initial_noise(self, size: int, seed: int) -> torch.Tensor:
        """One noise frame (1, C, 1, h, w), drawn on the CPU so a seed gives the same result on any device."""
        h, w = self.latent_shape(size)
        g = torch.Generator("cpu").manual_seed(int(seed))
        c = self.vae.config.latent_channels
        return torch.randn((1, c, 1, h, w), generator=g, dtype=torch.float32)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return vae_ops.encode(self.vae, x.to(self.device, self.dtype), self.scaling, self.shift)

    @torch.no_grad()
    def __call__(self, crops: np.ndarray, keep_mask: np.ndarray, tokens: torch.Tensor, noise: torch.Tensor,
                 settings: DenoiseSettings, null_tokens: torch.Tensor | None = None) -> np.ndarray:
        """crops: (B, F, S, S, 3) uint8; keep_mask: (S, S) float, 1 = keep (LatentSync's convention);
        tokens: (B, F, T, D); noise: (1, C, 1, h, w) shared by every window, or (B, C, 1, h, w) one per
        window (windows of different videos and seeds batched together). Returns (B, F, S, S, 3) uint8."""
        b, f, s = crops.shape[0], crops.shape[1], crops.shape[2]
        out = self.decoded(crops, keep_mask, tokens, noise, settings, null_tokens).clamp(-1, 1).float()
        out = ((out + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
        return out.reshape(b, f, 3, s, s).permute(0, 1, 3, 4, 2).cpu().numpy()

    @torch.no_grad()
    def decoded(self, crops: np.ndarray, keep_mask: np.ndarray, tokens: torch.Tensor, noise: torch.Tensor,
                settings: DenoiseSettings, null_tokens: torch.Tensor | None = None,
                trace: dict | None = None) -> torch.Tensor:
        """As :meth:`__call__`, but returns the VAE's raw output (B*F, 3, S, S) in the model dtype,
        unclamped. ``trace``, when given, receives every intermediate under LatentSync's names
        (mask_latents, masked_image_latents, ref_latents, timesteps, first_guided_pred, final_latents)."""
        b, f, s = crops.shape[0], crops.shape[1], crops.shape[2]
        x = crops_to_pixels(crops, self.dtype).reshape(b * f, 3, s, s).to(self.device, self.dtype)
        # float64 only with a float64 model: some devices (mps) have no float64 at all.
        keep = torch.as_tensor(np.asarray(keep_mask, dtype=np.float64))[None, None].to(self.device, self.latent_dtype)
        mask_lat, masked, ref = condition_latents(self._encode, x, keep, b, f, mask_resize=settings.mask_resize)
        if settings.reference_shift % f:
            ref = ref.roll(-settings.reference_shift, dims=2)
        h, w = ref.shape[-2:]
        latents = noise.to(self.device, self.latent_dtype).expand(b, -1, f, -1, -1).clone()
        latents = latents * self.scheduler.init_noise_sigma
        tokens = tokens.to(self.device, self.dtype)
        cfg = settings.guidance_scale > 1.0
        if cfg:  # unconditional first, as LatentSync batches it
            null = torch.zeros_like(tokens) if null_tokens is None else null_tokens.to(tokens).expand_as(tokens)
            cond_in = torch.cat([null, tokens])
        else:
            cond_in = tokens
        self.scheduler.set_timesteps(settings.num_steps, device=self.device)
        if trace is not None:
            trace.update(mask_latents=mask_lat, masked_image_latents=masked, ref_latents=ref,
                         timesteps=self.scheduler.timesteps.clone())
        cache: dict | None = {} if settings.deepcache_interval > 1 else None
        for i, t in enumerate(self.scheduler.timesteps):
            inp = unet_input(self.scheduler.scale_model_input(latents, t).to(self.dtype), mask_lat, masked, ref)
            if cfg:
                inp = torch.cat([inp, inp])
            kwargs = {}
            if cache is not None:
                kwargs = {"cache": cache, "reuse_deep": i % settings.deepcache_interval != 0}
            eps = self.unet(inp, t, cond_in, **kwargs)
            eps = eps.sample if hasattr(eps, "sample") else eps
            eps = eps.to(self.latent_dtype)
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + settings.guidance_scale * (cond - uncond)
            if trace is not None and i == 0:
                trace["first_guided_pred"] = eps
            latents = self.scheduler.step(eps, t, latents).prev_sample
        if trace is not None:
            trace["final_latents"] = latents
        lat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, *latents.shape[1:2], h, w)
        return vae_ops.decode(self.vae, lat.to(self.dtype), self.scaling, self.shift, clamp=False)
