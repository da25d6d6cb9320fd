"""LipSyncPipeline: video (or image) + speech (or text) in, lip-synced video out.

Read top to bottom, ``__call__`` is: load the speech and encode it; stream the frames with their
tracked target face; align each face to a crop; cut the stream into overlapping 16-frame windows;
denoise batches of windows (VAE encode, DDIM with audio guidance, VAE decode); cross-fade the
overlaps; composite the regenerated lower face into the original frame; encode with the speech. Frames
without a face pass through untouched. Memory is bounded by the batch of windows in flight, not by
the video's length.

The steps are the stages of ``lipsync.pipeline.stages`` (``Preparer``, ``Denoiser``,
``Compositor``), streamed into one another here; the batch job runs the same stages in separate
Ray worker pools.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.errors import NoFaceError
from lipsync.options import GenerateOptions
from lipsync.pipeline.components import Components, load_components, save_folder
from lipsync.pipeline.denoise import DenoiseSettings
from lipsync.pipeline.frames import FrameItem, FrameSource
from lipsync.pipeline.inputs import FPS, DrivingAudio
from lipsync.pipeline.stages import (Compositor, Denoiser, Preparer, WindowInput, composite_spec_of, denoise_settings,
                                     regen_mask_of, window_planner)
from lipsync.pipeline.windows import Window
from lipsync.profiles import load_profile

@dataclass
class GenerateResult:
    output: str
    frames: int
    frames_with_face: int
    media_seconds: float
    elapsed_seconds: float
    random_init: bool
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed_seconds if self.elapsed_seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"{self.output}: {self.frames} frames ({self.media_seconds:.2f} s, "
                f"{self.frames_with_face} with a face) in {self.elapsed_seconds:.1f} s, "
                f"{self.frames_per_second:.2f} frames/s")


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is available")
    return d


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16")
    return table[dtype]


class LipSyncPipeline:
    def __init__(self, components: Components, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None):
        self.components = components
        self.profile = components.profile
        self.device = pick_device(device if device is None or isinstance(device, str) else str(device))
        self.dtype = pick_dtype(dtype, self.device)
        components.to(self.device, self.dtype)
        self.regen_mask = regen_mask_of(self.profile)
        self.composite = composite_spec_of(self.profile)
        self.preparer = Preparer(self.profile, components.audio_encoder)
        self.stage_denoiser = Denoiser(components, self.device, self.dtype, self.regen_mask)
        self.denoiser = self.stage_denoiser.windows  # the WindowDenoiser

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: str = "tiny", checkpoint_dir: str | None = None, device: str | None = None,
                     dtype: str | None = None) -> "LipSyncPipeline":
        return cls(load_components(load_profile(profile), checkpoint_dir), device, dtype)

    @classmethod
    def from_pretrained(cls, folder: str, device: str | None = None, dtype: str | None = None) -> "LipSyncPipeline":
        from lipsync.pipeline.components import load_folder

        return cls(load_folder(folder), device, dtype)

    def save_pretrained(self, folder: str) -> None:
        save_folder(self.components, folder)

    # -- steps (the stages' methods, kept here for callers of the single-process pipeline) -------
    def encode_audio(self, driving: DrivingAudio) -> torch.Tensor:
        return self.preparer.encode_audio(driving)

    def audio_tokens(self, features: torch.Tensor, window: Window, silent: np.ndarray | None) -> torch.Tensor:
        return self.preparer.audio_tokens(features, window, silent)

    def silence_tokens(self) -> torch.Tensor:
        """What the encoder makes of digital silence: fed where voice activity says nobody speaks."""
        return self.preparer.silence_tokens()

    def denoise(self, windows: list[Window], crops: dict[int, np.ndarray], features: torch.Tensor,
                silent: np.ndarray | None, noise: torch.Tensor | int, settings: DenoiseSettings) -> list[np.ndarray]:
        """Denoise windows of the same length together; returns generated crops per window.
        ``noise`` is a seed (or, as before, an initial-noise tensor)."""
        inputs = [WindowInput(w, np.stack([crops[j] for j in w.frames]), self.audio_tokens(features, w, silent))
                  for w in windows]
        if isinstance(noise, torch.Tensor):
            out: list[np.ndarray | None] = [None] * len(windows)
            by_len: dict[int, list[int]] = {}
            for i, w in enumerate(windows):
                by_len.setdefault(len(w), []).append(i)
            for idx in by_len.values():
                gen = self.denoiser(np.stack([inputs[i].crops for i in idx]), 1.0 - self.regen_mask,
                                    torch.stack([inputs[i].tokens for i in idx]), noise, settings)
                for k, i in enumerate(idx):
                    out[i] = gen[k]
            return out
        return self.stage_denoiser(inputs, settings, int(noise))

    # -- the whole job ---------------------------------------------------------------------
    def __call__(self, output: str, video: str | None = None, image: str | None = None, audio: str | None = None,
                 text: str | None = None, lang: str = "en", voice: str | None = None,
                 options: GenerateOptions | None = None, progress=None) -> GenerateResult:
        from lipsync.face import FaceDetector
        from lipsync.media.probe import probe
        from lipsync.media.uri import is_remote, local_input
        from lipsync.media.writer import VideoWriter

        opts = options or GenerateOptions()
        if (video is None) == (image is None):
            raise ValueError("give exactly one of a video or an image")
        t0 = time.perf_counter()
        speech = self.preparer.speech(audio, text, lang, voice, opts.silence_gating)
        driving, n_out = speech.driving, speech.num_frames
        settings = denoise_settings(self.profile, opts.num_steps, opts.guidance_scale, opts.deepcache_interval)
        planner = window_planner(self.profile, opts.overlap)
        compositor = Compositor(self.composite, planner.overlap)
        # frames waiting for their crops, with their alignment and crop points
        frames: dict[int, tuple[FrameItem, np.ndarray | None, np.ndarray | None]] = {}
        pending: list[WindowInput] = []
        state = {"next": 0, "with_face": 0}

        def run(windows: list[WindowInput]) -> None:
            for w, gen in zip(windows, self.stage_denoiser(windows, settings, opts.seed)):
                compositor.add(w.window, gen)

        def flush(writer, limit: int) -> None:
            while state["next"] < limit and state["next"] in frames:
                j = state["next"]
                item, matrix, points = frames.pop(j)
                frame, pasted = compositor.frame(j, item.image, matrix, points)
                state["with_face"] += pasted
                writer.write(frame)
                state["next"] += 1
                if progress:
                    progress(state["next"], n_out)

        source_uri = video if video is not None else image
        if is_remote(source_uri):
            probe(source_uri)  # a bad remote file is reported under its URI, not a temp name
        with local_input(source_uri) as local_src, FaceDetector(max_faces=8) as detector, \
                VideoWriter(output, fps=FPS, audio=driving.native, audio_rate=driving.native_rate) as writer:
            # One download for remote input: looping re-reads the file by seeking.
            source = FrameSource(local_src, n_out, detector, face=opts.face, loop=opts.loop,
                                 is_image=image is not None, name=source_uri)
            for step in self.preparer.stream(source, speech, planner):
                if step.item is not None:
                    frames[step.item.index] = (step.item, step.matrix, step.points)
                pending += step.windows
                if pending and (len(pending) >= opts.batch_size or step.item is None):
                    run(pending)
                    pending = []
                flush(writer, min([step.settled] + [w.window.start for w in pending]))
            flush(writer, n_out)
            if state["with_face"] == 0:
                # The atomic writer drops the output: a clip with no face anywhere is an error, not a copy.
                raise NoFaceError(source_uri, "no face found in any frame (nothing to lip-sync)")
        notes = []
        if source.n_src is not None and source.n_src < n_out and video is not None:
            notes.append(f"speech ({driving.duration:.2f} s) is longer than the video "
                         f"({source.n_src / FPS:.2f} s): video looped ({opts.loop})")
        return GenerateResult(output, n_out, state["with_face"], n_out / FPS, time.perf_counter() - t0,
                              self.components.random_init, notes)
