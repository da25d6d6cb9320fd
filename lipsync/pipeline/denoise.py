"""Windows of aligned face crops + audio tokens in, regenerated crops out: VAE encode, denoising
(DDIM, or a multistep solver: DPM-Solver++, UniPC, DEIS, Euler) with audio classifier-free guidance
(on every step or in an interval of them), optionally DeepCache, VAE decode. Runs a batch of windows
at once."""

from __future__ import annotations

import time
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


# The samplers (``--scheduler``), all deterministic, all on the training schedule above. DDIM keeps
# LatentSync's "leading" spacing (its exact path); the multistep solvers use "trailing" spacing, whose
# first step is the last training timestep: with a handful of steps "leading" would start them at
# t = 801 (5 steps) from pure noise, a mismatch they cannot correct in few steps.
from lipsync.options import SCHEDULERS  # noqa: E402  (stdlib only)

SOLVER_SPACING = "trailing"


def make_scheduler(name: str, base):
    """The sampler ``name`` on ``base``'s training schedule (betas, steps, prediction type, offset).
    ``ddim`` is ``base`` itself; the others are new objects (multistep solvers keep a history of the
    UNet's outputs, so each denoising run needs its own)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    if name == "ddim":
        return base
    import diffusers

    c = base.config
    common = dict(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
                  beta_schedule=c.beta_schedule, trained_betas=c.trained_betas, prediction_type=c.prediction_type,
                  steps_offset=c.steps_offset, timestep_spacing=SOLVER_SPACING)
    if name == "dpmsolver++":  # DPM-Solver++(2M), the deterministic multistep variant
        return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    if name == "unipc":  # UniPC-bh2, order 2, with its corrector
        return diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **common)
    if name == "deis":
        return diffusers.DEISMultistepScheduler(solver_order=2, **common)
    return diffusers.EulerDiscreteScheduler(**common)  # euler


def guided_steps(num_steps: int, interval: tuple[float, float]) -> list[bool]:
    """Which of ``num_steps`` denoising steps get audio guidance: step i when ``lo <= i / n < hi``
    (``(0, 1)``: every step; ``(0, 0.6)``: the first 60 %, where the mouth's shape is decided)."""
    lo, hi = (float(v) for v in interval)
    return [lo <= i / num_steps < hi for i in range(num_steps)]


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
    scheduler: str = "ddim"  # one of SCHEDULERS; ddim is LatentSync's exact path
    # Audio guidance on steps i with lo <= i / num_steps < hi (guided_steps); the others run one
    # conditional UNet pass. (0, 1): every step, LatentSync's.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    # Guided steps: one UNet call on the unconditional and conditional inputs batched (LatentSync's),
    # or two calls. The same numbers either way up to float rounding; which is faster is measured.
    cfg_batched: bool = True

    def __post_init__(self):
        self.guidance_interval = tuple(float(v) for v in self.guidance_interval)
        lo, hi = self.guidance_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance_interval must be 0 <= start <= end <= 1, got {self.guidance_interval}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")

    @property
    def group_key(self) -> tuple:
        """Windows with equal keys can be denoised in one batch (what the denoising depends on)."""
        return (self.num_steps, self.guidance_scale, self.deepcache_interval, self.reference_shift,
                self.mask_resize, self.scheduler, self.guidance_interval, self.cfg_batched)


class WindowDenoiser:
    def __init__(self, unet, vae, scheduler, scaling_factor: float, shift_factor: float = 0.0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.scaling, self.shift = float(scaling_factor), float(shift_factor)
        self.device, self.dtype = torch.device(device), dtype
        # The DDIM state is kept at least in float32 (a half-precision model's steps would round the
        # latents 20 times) and in float64 with a float64 model (then the whole path is float64).
        self.latent_dtype = torch.promote_types(dtype, torch.float32)
        # Seconds spent per part (vae_encode, unet, vae_decode), added to when a caller sets a dict.
        self.timings: dict[str, float] | None = None

    def _timed(self, part: str, t0: float) -> float:
        now = time.perf_counter()
        if self.timings is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.timings[part] = self.timings.get(part, 0.0) + now - t0
        return now

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
        t0 = time.perf_counter()
        x = crops_to_pixels(crops, self.dtype).reshape(b * f, 3, s, s).to(self.device, self.dtype)
        # float64 only with a float64 model: some devices (mps) have no float64 at all.
        keep = torch.as_tensor(np.asarray(keep_mask, dtype=np.float64))[None, None].to(self.device, self.latent_dtype)
        mask_lat, masked, ref = condition_latents(self._encode, x, keep, b, f, mask_resize=settings.mask_resize)
        if settings.reference_shift % f:
            ref = ref.roll(-settings.reference_shift, dims=2)
        h, w = ref.shape[-2:]
        latents = noise.to(self.device, self.latent_dtype).expand(b, -1, f, -1, -1).clone()
        tokens = tokens.to(self.device, self.dtype)
        t0 = self._timed("vae_encode", t0)
        sched = make_scheduler(settings.scheduler, self.scheduler)
        sched.set_timesteps(settings.num_steps, device=self.device)
        latents = latents * sched.init_noise_sigma
        guided = guided_steps(len(sched.timesteps), settings.guidance_interval)
        cfg = settings.guidance_scale > 1.0 and any(guided)
        null = None
        if cfg:  # unconditional first, as LatentSync batches it
            null = torch.zeros_like(tokens) if null_tokens is None else null_tokens.to(tokens).expand_as(tokens)
        if trace is not None:
            trace.update(mask_latents=mask_lat, masked_image_latents=masked, ref_latents=ref,
                         timesteps=sched.timesteps.clone())
        unet = _CachedUNet(self.unet, b, f, settings.deepcache_interval, self.latent_dtype)
        for i, t in enumerate(sched.timesteps):
            inp = unet_input(sched.scale_model_input(latents, t).to(self.dtype), mask_lat, masked, ref)
            if cfg and guided[i]:
                if settings.cfg_batched:
                    uncond, cond = unet(i, torch.cat([inp, inp]), t, torch.cat([null, tokens]), "both").chunk(2)
                else:
                    uncond, cond = unet(i, inp, t, null, "uncond"), unet(i, inp, t, tokens, "cond")
                eps = uncond + settings.guidance_scale * (cond - uncond)
            else:
                eps = unet(i, inp, t, tokens, "cond")
            if trace is not None and i == 0:
                trace["first_guided_pred"] = eps
            latents = sched.step(eps, t, latents).prev_sample
        if trace is not None:
            trace["final_latents"] = latents
        t0 = self._timed("unet", t0)
        lat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, *latents.shape[1:2], h, w)
        out = vae_ops.decode(self.vae, lat.to(self.dtype), self.scaling, self.shift, clamp=False)
        self._timed("vae_decode", t0)
        return out


class _CachedUNet:
    """The UNet calls of one denoising run, with DeepCache's cached deep features when
    ``interval > 1``: steps ``i % interval == 0`` run the whole UNet and refresh the cache, the others
    reuse it. A guidance interval (guided and unguided steps) or two-call guidance needs the cache of
    other inputs: ``both`` (unconditional + conditional batched, 2B) holds the two halves, so
    ``uncond`` / ``cond`` are slices of it and ``both`` is their concatenation; a reuse step whose
    entry cannot be had runs whole. Returns the UNet's output in ``out_dtype``."""

    def __init__(self, unet, b: int, f: int, interval: int, out_dtype: torch.dtype):
        self.unet, self.b, self.f, self.interval, self.out_dtype = unet, b, f, int(interval), out_dtype
        self.entries: dict[str, dict] = {}  # which -> the UNet's cache dict
        self.step = -1  # the step the entries were made at

    def _entry(self, which: str) -> dict | None:
        e = self.entries
        if which in e:
            return e[which]
        n = self.b * self.f  # the deep feature is ((b f), C, h, w), frames of a sample adjacent
        if which in ("uncond", "cond") and "both" in e:
            both = e["both"]
            e[which] = {"deep": both["deep"][:n] if which == "uncond" else both["deep"][n:],
                        "key": (self.b,) + tuple(both["key"][1:])}
        elif which == "both" and "uncond" in e and "cond" in e:
            e[which] = {"deep": torch.cat([e["uncond"]["deep"], e["cond"]["deep"]]),
                        "key": (2 * self.b,) + tuple(e["cond"]["key"][1:])}
        return e.get(which)

    def __call__(self, i: int, inp: torch.Tensor, t, tokens: torch.Tensor, which: str) -> torch.Tensor:
        if self.interval > 1:
            entry = self._entry(which) if i % self.interval else None
            if entry is None:  # a full step: it refreshes the cache; entries of earlier steps are stale
                if self.step != i:
                    self.entries, self.step = {}, i
                entry = self.entries[which] = {}
                out = self.unet(inp, t, tokens, cache=entry, reuse_deep=False)
            else:
                out = self.unet(inp, t, tokens, cache=entry, reuse_deep=True)
        else:
            out = self.unet(inp, t, tokens)
        out = out.sample if hasattr(out, "sample") else out
        return out.to(self.out_dtype)
