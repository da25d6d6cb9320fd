"""Recipes ``unet_stage1`` and ``unet_stage2``: the lip-sync UNet (and the learned audio encoder).

Inputs are built exactly as inference builds them (:func:`lipsync.pipeline.denoise.condition_latents`
and :func:`unet_input`): noisy latent (4) + mask (1, 1 = keep the upper face) + masked-face latent
(4) + reference latent (4) = 13 channels, frozen VAE, the audio tokens of each frame. The reference
window comes from other frames of the same segment (the same face, another mouth). DDPM training
with the profile's schedule (``latentsync_scheduler``: 1000 steps, scaled-linear betas), the
profile's ``prediction_type`` (epsilon as LatentSync; the ``tiny`` profile predicts v, which keeps the
clean-image estimate usable at high noise for a small, briefly trained model), "mixed" noise (:func:`lipsync.train.losses.mixed_noise`), audio tokens zeroed with
probability ``audio_drop_prob`` (the unconditional branch of classifier-free guidance is all-zero
tokens).

Stage 1 trains the whole UNet with noise MSE; the ``tiny`` profile's mel audio encoder trains with
it (``train.train_audio_encoder``). Stage 2 (LatentSync's recipe) trains the parameters matching
``train.trainable`` (default: temporal modules + spatial transformer blocks) with noise MSE plus
losses on the decoded one-step x0 estimate (frozen VAE decoder, gradients through it): SyncNet loss
over 5- and 16-frame windows (every frozen SyncNet given, :mod:`lipsync.train.syncnet_adapter`), a
TREPA-style temporal representation loss and an inter-frame motion smoothness term
(:mod:`lipsync.train.losses`), LPIPS when VGG weights are given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.models import vae as vae_ops
from lipsync.pipeline.denoise import (condition_latents, latentsync_scheduler, predicted_x0, to_video, training_target,
                                     unet_input)
from lipsync.train.data import WindowSpec
from lipsync.train.recipes.base import Recipe


class DiffusionTrainer(nn.Module):
    """UNet + audio encoder as one module for DDP: (13-channel input, t, audio features) -> eps."""

    def __init__(self, unet, audio_encoder):
        super().__init__()
        self.unet = unet
        self.audio_encoder = audio_encoder

    def tokens(self, feats: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        from lipsync.models.audio import MelAudioEncoder

        if isinstance(self.audio_encoder, MelAudioEncoder):
            return self.audio_encoder(feats, start, stop)
        return self.audio_encoder.frame_tokens(feats, start, stop)  # frozen (Whisper): features precomputed

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, feats: torch.Tensor, start: int, stop: int,
                keep_audio: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(feats, start, stop) * keep_audio.view(-1, 1, 1, 1).to(feats.dtype)
        return self.unet(sample, timesteps, tokens.to(sample.dtype))


class UNetRecipe(Recipe):
    name = "unet_stage1"
    stage = 1

    def window_spec(self) -> WindowSpec:
        spec = WindowSpec.from_config(self.cfg["data"])
        spec.reference = True
        return spec

    # -- model -------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        from lipsync.pipeline.stages import regen_mask_of

        c = self.components()
        if c.random_init:
            self.notes.append("no init_from: the VAE is randomly initialised (train the vae recipe first and "
                              "set init_from to its export)")
        self.vae = c.vae.to(self.device).eval().requires_grad_(False)
        self.scaling, self.shift = float(c.scaling_factor), float(c.shift_factor)
        t = self.cfg["train"]
        unet, audio = c.unet, c.audio_encoder
        patterns = t["trainable"]
        if self.stage == 2 and patterns is None:
            from lipsync.models.unet import STAGE2_TRAINABLE

            patterns = list(STAGE2_TRAINABLE)
        names = unet.set_trainable(patterns)
        from lipsync.models.audio import MelAudioEncoder

        train_audio = bool(t["train_audio_encoder"]) and isinstance(audio, MelAudioEncoder)
        audio.requires_grad_(train_audio)
        self.notes.append(f"trainable: {len(names)} UNet tensors "
                          f"({sum(p.numel() for p in unet.parameters() if p.requires_grad) / 1e6:.2f} M parameters)"
                          f"{' + the audio encoder' if train_audio else ''}")
        keep = 1.0 - regen_mask_of(self.profile).astype(np.float32)
        self.keep = torch.from_numpy(keep)[None, None].to(self.device)
        self.prediction = self.profile.prediction_type
        self.alphas_cumprod = latentsync_scheduler(self.prediction).alphas_cumprod.to(self.device, torch.float32)
        self._latents: dict = {}
        if self.stage == 2:
            self._build_stage2()
        return DiffusionTrainer(unet, audio).to(self.device).train()

    def _build_stage2(self) -> None:
        from lipsync.train.losses import LPIPS, VideoEncoder
        from lipsync.train.syncnet_adapter import load_frozen

        w = self.cfg["loss"]
        self.syncnets = load_frozen(self.cfg["syncnet"], self.device) if float(w["sync"]) > 0 else []
        if float(w["sync"]) > 0 and not self.syncnets:
            self.notes.append("no syncnet folder given: the SyncNet loss is skipped")
        elif self.syncnets:
            self.notes.append("SyncNet loss over windows of " +
                              ", ".join(str(n.config.num_frames) for n in self.syncnets) + " frames")
        self.video_encoder = VideoEncoder.frozen(w["trepa_weights"]).to(self.device) if float(w["trepa"]) > 0 else None
        if self.video_encoder is not None and not w["trepa_weights"]:
            self.notes.append("TREPA: random-but-fixed 3-D conv video encoder (seed 0)")
        self.lpips = None
        if float(w["lpips"]) > 0 and w["lpips_vgg_weights"]:
            self.lpips = LPIPS(w["lpips_vgg_weights"], w["lpips_lin_weights"]).to(self.device)
        elif float(w["lpips"]) > 0:
            self.notes.append("LPIPS skipped: no VGG weights (loss.lpips_vgg_weights)")

    # -- loss --------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return vae_ops.encode(self.vae, x, self.scaling, self.shift)

    def mouth_map(self, latent_hw) -> torch.Tensor:
        """The mouth box on the latent grid (fraction of each latent cell covered), (h, w)."""
        hit = getattr(self, "_mouth", None)
        if hit is None or tuple(hit.shape) != tuple(latent_hw):
            from lipsync.face.mask import mouth_region

            m = torch.from_numpy(mouth_region(int(self.profile.resolution), float(self.profile.crop_aspect)))
            hit = F.adaptive_avg_pool2d(m[None, None], tuple(latent_hw))[0, 0].to(self.device)
            self._mouth = hit
        return hit

    def audio_features(self, model, audio: torch.Tensor) -> torch.Tensor:
        from lipsync.models.audio import MelAudioEncoder

        enc = model.module.audio_encoder if hasattr(model, "module") else model.audio_encoder
        with torch.no_grad():
            if isinstance(enc, MelAudioEncoder):
                return torch.stack([enc.input_features(a) for a in audio]).to(self.device)
            return torch.stack([enc.features(a) for a in audio]).to(self.device)

    def segment_latents(self, seg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask, masked-face latents, latents) of every frame of a segment, (1, C, N, h, w), built by
        the inference code (:func:`condition_latents`) and kept: the VAE is frozen and encodes frame
        by frame, so a window's slice of these equals encoding the window (3 VAE passes a step saved)."""
        key = (seg.clip_id, seg.index)
        hit = self._latents.get(key)
        if hit is None:
            x = torch.from_numpy(seg.crops(0, seg.num_frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            hit = condition_latents(self._encode, x.to(self.device), self.keep, 1, seg.num_frames)
            limit = int(self.cfg["data"]["latent_cache_segments"])
            if limit > 0:
                while len(self._latents) >= limit:
                    self._latents.pop(next(iter(self._latents)))
                self._latents[key] = hit
        return hit

    def conditioning(self, batch, x: torch.Tensor):
        """(z0, mask, masked-face latents, reference latents), each (B, C, F, h, w)."""
        b, f = x.shape[:2]
        if int(self.cfg["data"]["latent_cache_segments"]) > 0 and "segment" in batch and "ref_start" in batch:
            parts = []
            for i, seg in enumerate(batch["segment"]):
                mask_lat, masked, full = self.segment_latents(seg)
                s0, r0 = int(batch["start"][i]), int(batch["ref_start"][i])
                parts.append((full[:, :, s0:s0 + f], mask_lat[:, :, s0:s0 + f], masked[:, :, s0:s0 + f],
                              full[:, :, r0:r0 + f]))
            return tuple(torch.cat(p) for p in zip(*parts))
        flat = x.flatten(0, 1)
        ref = batch["ref"].to(self.device).flatten(0, 1)
        mask_lat, masked, ref_lat = condition_latents(self._encode, flat, self.keep, b, f, ref=ref)
        return to_video(self._encode(flat), b, f), mask_lat, masked, ref_lat

    def loss(self, model, batch, generator, train=True):
        w = self.cfg["loss"]
        x = batch["frames"].to(self.device)  # (B, F, 3, S, S)
        b, f = x.shape[:2]
        z0, mask_lat, masked, ref_lat = self.conditioning(batch, x)
        noise = mixed_noise_like(z0, float(w["mixed_noise_alpha"]), generator)
        t = torch.randint(0, len(self.alphas_cumprod), (b,), generator=generator, device=generator.device)
        t = t.to(self.device)
        ab = self.alphas_cumprod[t].view(b, 1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        feats = self.audio_features(model, batch["audio"])
        m = int(batch["audio_margin"])
        p = float(w["audio_drop_prob"]) if train else 0.0
        keep_audio = (torch.rand(b, generator=generator, device=generator.device) >= p).float().to(self.device)
        out = model(unet_input(zt, mask_lat, masked, ref_lat), t, feats, m, m + f, keep_audio).float()
        err = (out - training_target(self.prediction, z0, noise, ab)) ** 2
        mouth = self.mouth_map(err.shape[-2:])
        mse = err.mean()
        per_cell = err.mean(dim=(0, 1, 2))
        logs = {"noise_mse": mse.item(), "mouth_mse": ((per_cell * mouth).sum() / mouth.sum()).item()}
        mw = float(w["mouth_weight"])
        if mw > 0:
            weight = 1.0 + mw * mouth
            mse = (err * weight).mean() / weight.mean()
            logs["weighted_mse"] = mse.item()
        total = float(w["noise_mse"]) * mse
        if self.stage == 2:
            extra, extra_logs = self._pixel_losses(x, zt, out, ab, batch, generator)
            total = total + extra
            logs.update(extra_logs)
        return total, logs

    def _pixel_losses(self, x, zt, out, ab, batch, generator):
        """Stage 2: losses on the decoded one-step x0 estimate (gradients through the frozen decoder)."""
        from lipsync.train.losses import temporal_loss, trepa_loss

        w = self.cfg["loss"]
        b, f = x.shape[:2]
        pf = int(w["pixel_frames"] or f)
        pf = max(1, min(pf, f))
        s0 = int(torch.randint(0, f - pf + 1, (1,), generator=generator, device=generator.device)) if pf < f else 0
        z0_hat = predicted_x0(self.prediction, zt, out, ab)
        lat = z0_hat[:, :, s0:s0 + pf].transpose(1, 2).flatten(0, 1)  # (B*pf, C, h, w)
        img = self.vae.decode(lat / self.scaling + self.shift).sample.clamp(-1, 1)
        real = x[:, s0:s0 + pf]
        img = img.view_as(real)
        keep = self.keep.view(1, 1, 1, *self.keep.shape[-2:])
        gen = img * (1 - keep) + real * keep  # the upper face is the input's, as at inference
        total = x.new_zeros(())
        logs = {}
        if self.syncnets:
            from lipsync.train.syncnet_adapter import generated_sync_loss, segment_mel

            mels = batch.get("_mels")
            if mels is None:
                mels = [segment_mel(a, o) for a, o in zip(batch["segment_audio"], batch["segment_audio_offset"])]
                batch["_mels"] = mels
            starts = [int(st) + s0 for st in batch["start"]]
            sl = generated_sync_loss(self.syncnets, gen, mels, starts, w["sync_windows"])
            if sl is not None:
                total = total + float(w["sync"]) * sl
                logs["sync"] = sl.item()
        if float(w["temporal"]) > 0 and pf > 1:
            tl = temporal_loss(gen, real)
            total = total + float(w["temporal"]) * tl
            logs["temporal"] = tl.item()
        if self.video_encoder is not None:
            tr = trepa_loss(self.video_encoder, gen, real)
            total = total + float(w["trepa"]) * tr
            logs["trepa"] = tr.item()
        if self.lpips is not None:
            lp = self.lpips(gen.flatten(0, 1), real.flatten(0, 1))
            total = total + float(w["lpips"]) * lp
            logs["lpips"] = lp.item()
        logs["pixel_l1"] = (gen - real).abs().mean().item()
        return total, logs

    # -- export ------------------------------------------------------------------------------
    def export(self, state, extra, folder) -> Path:
        from lipsync.pipeline.components import save_folder

        comps = self.components()
        model = DiffusionTrainer(comps.unet, comps.audio_encoder)
        model.load_state_dict(state)
        from lipsync.pipeline.components import scheduler_of

        # The export carries the recipe's profile (init_from's may be older): what this UNet was trained
        # to predict (the scheduler follows it) and the inference settings that go with it.
        comps.profile = self.profile
        comps.scheduler = scheduler_of(comps.profile)
        return save_folder(comps, folder)


class UNetStage2Recipe(UNetRecipe):
    name = "unet_stage2"
    stage = 2

def mixed_noise_like(z: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    from lipsync.train.losses import mixed_noise

    return mixed_noise(tuple(z.shape), alpha, generator, device=generator.device).to(z.device, z.dtype)
