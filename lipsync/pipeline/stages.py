"""The three stages of a lip-sync job, usable together or apart.

``LipSyncPipeline.__call__`` streams them into one another in one process; the batch job
(``pipelines/dub.py``) runs each in its own pool of Ray workers. Both use these classes, so there is
one implementation of every step:

* preparation (CPU), in two halves: :class:`SpeechFeatures` (the driving speech -> audio features
  -> per-window audio tokens) and :class:`~lipsync.face.aligner.FaceAligner` (tracked faces ->
  smoothed, registered alignments -> crops and the composite's crop points). ``lipsync.pipeline.job``
  sets a job up once (inputs fetched and decoded once, settings, window planner, frames) and streams
  the two into windows, each with its crops and audio tokens.
* :class:`Denoiser` (GPU, or CPU): windows -> regenerated crops (VAE encode, DDIM or a multistep
  solver with audio guidance, VAE decode), batched, possibly across videos with different settings and seeds.
* :class:`Compositor` (CPU): cross-fades the overlapping windows and composites each frame's crop
  back into the original frame (:mod:`lipsync.face.composite`, or LatentSync's own paste-back,
  :func:`lipsync.pipeline.latentsync_exact.restore_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lipsync.face import lower_face_mask
from lipsync.face.composite import COMPOSITE_MODES, Appearance, composite_person
from lipsync.face.crop_mesh import CropMesh
from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser, mask_resize_of
from lipsync.pipeline.inputs import DrivingAudio, load_driving_audio, voice_activity
from lipsync.pipeline.windows import Blender, Window, WindowPlanner


@dataclass
class Speech:
    """The driving speech of a job, ready for the model."""

    driving: DrivingAudio
    features: torch.Tensor  # the audio encoder's file-level features
    silent: np.ndarray | None  # per output frame: True where silence gating closes the mouth

    @property
    def num_frames(self) -> int:
        return self.driving.num_frames


@dataclass
class WindowInput:
    """One window ready to denoise: what flows from the CPU stage to the GPU stage."""

    window: Window
    crops: np.ndarray  # (F, S, S, 3) uint8 aligned face crops
    tokens: torch.Tensor  # (F, T, D) float32 audio tokens


def regen_mask_of(profile) -> np.ndarray:
    """The profile's regenerated lower-face region on the crop (1 = generate): ``mask.shape`` box (the
    crop's rows below ``mask.top``) or latentsync (LatentSync's fixed mask.png)."""
    mask = profile.mask or {}
    shape = mask.get("shape", "box")
    if shape == "latentsync":
        # Their mask.png, the region their public weights were trained to fill (tests/test_latentsync_parity.py).
        from lipsync.pipeline.latentsync_exact import fixed_keep_mask

        return (1.0 - fixed_keep_mask(int(profile.resolution))).astype(np.float32)
    if shape != "box":
        raise ValueError(f"{profile.source or profile.name}: mask.shape must be box or latentsync, got {shape!r}")
    return lower_face_mask(int(profile.resolution), top=float(mask.get("top", 0.5)),
                           side=float(mask.get("side", 0.0)))


@dataclass
class CompositeSpec:
    """How regenerated crops go back into frames: the profile's ``composite`` mode, the model's
    regenerated region and the profile's framing (``align``: the latentsync mode re-cuts each
    frame's input crop as the aligner cut it)."""

    mode: str  # person (lipsync.face.composite), person_warp (+ the generated crop's mesh), latentsync
    regen_mask: np.ndarray  # the model's regenerated region on the crop (1 = generated)
    align: str = "template"  # lipsync.face.aligner.ALIGN_MODES


def composite_spec_of(profile, mode: str | None = None) -> CompositeSpec:
    """``mode``: a job's ``composite`` option; None means the profile's."""
    mode = profile.composite if mode is None else mode
    if mode not in COMPOSITE_MODES:
        raise ValueError(f"profile {profile.name!r}: composite must be one of {COMPOSITE_MODES}, got {mode!r}")
    return CompositeSpec(mode, regen_mask_of(profile), str(getattr(profile, "align", "template")))


def denoise_settings(profile, num_steps: int | None, guidance_scale: float | None,
                     deepcache_interval: int | None = None, scheduler: str | None = None,
                     guidance_interval: float | None = None) -> DenoiseSettings:
    """The denoise settings of a job: each option given, else the profile's. ``guidance_interval``
    (an option) is the guided fraction of the steps from the first, i.e. the interval (0, x)."""
    interval = profile.guidance_interval if guidance_interval is None else (0.0, float(guidance_interval))
    return DenoiseSettings(int(num_steps or profile.num_steps),
                           float(profile.guidance_scale if guidance_scale is None else guidance_scale),
                           int(profile.deepcache_interval if deepcache_interval is None else deepcache_interval),
                           int(profile.reference_shift), mask_resize_of(profile),
                           scheduler=str(scheduler or profile.scheduler),
                           guidance_interval=tuple(float(v) for v in interval),
                           cfg_batched=bool(getattr(profile, "cfg_batched", True)))


def settings_of_options(profile, opts) -> DenoiseSettings:
    """:func:`denoise_settings` from a ``GenerateOptions``."""
    return denoise_settings(profile, opts.num_steps, opts.guidance_scale, opts.deepcache_interval,
                            getattr(opts, "scheduler", None), getattr(opts, "guidance_interval", None))


def window_planner(profile, overlap: int | None) -> WindowPlanner:
    window = int(profile.window)
    overlap = int(profile.overlap if overlap is None else overlap)
    return WindowPlanner(window, min(overlap, window - 1))


class SpeechFeatures:
    """CPU, the speech half of preparation: driving speech -> the audio encoder's features; per
    window, its audio tokens (silence tokens where silence gating closes the mouth). The face half
    is :class:`lipsync.face.aligner.FaceAligner`; ``lipsync.pipeline.job`` runs the two together."""

    def __init__(self, audio_encoder):
        self.audio_encoder = audio_encoder
        self._silence_tokens = None

    def encode_audio(self, driving: DrivingAudio) -> torch.Tensor:
        with torch.no_grad():
            return self.audio_encoder.features(driving.samples)

    def speech(self, audio: str | None = None, text: str | None = None, lang: str = "en",
               voice: str | None = None, silence_gating: bool = False) -> Speech:
        """Load the driving speech (an audio file, decoded once, or a text to speak) and encode it;
        with ``silence_gating``, voice activity per output frame."""
        driving = load_driving_audio(audio, text, lang, voice)
        silent = ~voice_activity(driving.samples, driving.num_frames) if silence_gating else None
        return Speech(driving, self.encode_audio(driving), silent)

    def silence_tokens(self) -> torch.Tensor:
        """What the encoder makes of digital silence: fed where voice activity says nobody speaks."""
        if self._silence_tokens is None:
            enc = self.audio_encoder
            with torch.no_grad():
                feats = enc.features(np.zeros(16000, np.float32))
                self._silence_tokens = enc.frame_tokens(feats, 12, 13)[0].float().cpu()
        return self._silence_tokens

    def audio_tokens(self, features: torch.Tensor, window: Window, silent: np.ndarray | None) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.audio_encoder.frame_tokens(features, window.start, window.stop).float()
            if silent is not None and silent[window.start:window.stop].any():
                quiet = torch.from_numpy(silent[window.start:window.stop])
                tokens[quiet] = self.silence_tokens().to(tokens)
        return tokens

    def window_tokens(self, speech: Speech, window: Window) -> torch.Tensor:
        """(F, T, D) float32 audio tokens of ``window`` of ``speech``."""
        return self.audio_tokens(speech.features, window, speech.silent)


class Denoiser:
    """GPU stage: batches of windows -> regenerated crops.

    Windows may come from different videos: each carries its own settings and seed. Windows are
    denoised together when they have the same length and settings (the UNet sees one tensor);
    ``max_batch`` caps how many go through at once.
    """

    def __init__(self, components, device: torch.device, dtype: torch.dtype, regen_mask: np.ndarray):
        self.components = components
        self.profile = components.profile
        self.device, self.dtype = device, dtype
        self.regen_mask = regen_mask
        self.windows = WindowDenoiser(components.unet, components.vae, components.scheduler,
                                      components.scaling_factor, components.shift_factor, device, dtype)
        self._noise: dict[int, torch.Tensor] = {}

    def initial_noise(self, seed: int) -> torch.Tensor:
        seed = int(seed)
        if seed not in self._noise:
            if len(self._noise) > 64:
                self._noise.clear()
            self._noise[seed] = self.windows.initial_noise(int(self.profile.resolution), seed)
        return self._noise[seed]

    def __call__(self, inputs: Sequence[WindowInput], settings: DenoiseSettings | Sequence[DenoiseSettings],
                 seeds: int | Sequence[int], max_batch: int | None = None) -> list[np.ndarray]:
        """Regenerated crops, (F, S, S, 3) uint8, one array per input window, in input order."""
        n = len(inputs)
        settings = [settings] * n if isinstance(settings, DenoiseSettings) else list(settings)
        seeds = [seeds] * n if isinstance(seeds, (int, np.integer)) else list(seeds)
        out: list[np.ndarray | None] = [None] * n
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(inputs):
            s = settings[i]
            groups.setdefault((len(w.window),) + s.group_key, []).append(i)
        keep = 1.0 - self.regen_mask
        for idx in groups.values():
            step = max_batch or len(idx)
            for k in range(0, len(idx), step):
                part = idx[k:k + step]
                batch = np.stack([inputs[i].crops for i in part])
                tokens = torch.stack([inputs[i].tokens for i in part])
                noises = [self.initial_noise(seeds[i]) for i in part]
                # One shared noise tensor when the seeds agree (the usual case), else one per window.
                noise = noises[0] if all(x is noises[0] for x in noises) else torch.cat(noises)
                gen = self.windows(batch, keep, tokens, noise, settings[part[0]])
                for m, i in enumerate(part):
                    out[i] = gen[m]
        return out


class Compositor:
    """CPU stage: cross-fade of overlapping windows, then the composite into the original frames."""

    def __init__(self, spec: CompositeSpec, overlap: int):
        self.spec = spec
        self.overlap = int(overlap)
        self.blender = Blender()
        self.appearance = Appearance()  # one face track per job

    def add(self, window: Window, crops: np.ndarray) -> None:
        self.blender.add(window, crops, self.overlap)

    def frame(self, index: int, image: np.ndarray, matrix: np.ndarray | None,
              points: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Output frame ``index``: the image with its regenerated face composited in, and whether it
        was. A frame without a generated crop (no face) passes through untouched. ``points``: the
        frame's :func:`crop_points`, which the person composite needs. The latentsync mode does what
        LatentSync does: in crop space the generated pixels only where the mask regenerates and the
        input crop elsewhere (their paste_surrounding_pixels_back, blended by the soft mask), then
        their restore (:func:`lipsync.pipeline.latentsync_exact.restore_frame`)."""
        crop = self.blender.pop(index)
        if crop is None or matrix is None:
            return image, False
        if self.spec.mode in ("person", "person_warp"):
            if points is None or not np.isfinite(points).all():
                raise ValueError(f"frame {index}: the person composite needs the face's crop points")
            gen_points = CropMesh.for_thread().points(crop, points) if self.spec.mode == "person_warp" else None
            return composite_person(image, crop, matrix, points, self.spec.regen_mask,
                                    appearance=self.appearance, index=index, gen_points=gen_points), True
        from lipsync.face.aligner import cut_crop
        from lipsync.pipeline.latentsync_exact import restore_frame

        regen = np.asarray(self.spec.regen_mask, np.float32)[..., None]
        source = cut_crop(image, matrix, crop.shape[0], self.spec.align)
        pasted = crop.astype(np.float32) * regen + source.astype(np.float32) * (1.0 - regen)
        return restore_frame(image, pasted, matrix), True
