"""LipSyncPipeline: video (or image) + speech (or text) in, lip-synced video out.

Read top to bottom, ``__call__`` is: load the speech and encode it; stream the frames with their
tracked target face; align each face to a crop; cut the stream into overlapping 16-frame windows;
denoise batches of windows (VAE encode, DDIM with audio guidance, VAE decode); cross-fade the
overlaps; composite the regenerated lower face into the original frame; encode with the speech. Frames
without a face pass through untouched. Memory is bounded by the batch of windows in flight, not by
the video's length.

The job is set up by ``lipsync.pipeline.job`` (``JobSetup``: inputs fetched and decoded once,
settings, window planner, frames, then speech features and face alignment streamed into windows);
the windows go through the stages of ``lipsync.pipeline.stages`` (``Denoiser``, ``Compositor``),
streamed into one another here. The batch job runs the same setup and stages in separate Ray
worker pools.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.options import GenerateOptions
from lipsync.pipeline.components import Components, load_components, save_folder
from lipsync.pipeline.frames import FrameItem
from lipsync.media.formats import FPS
from lipsync.pipeline.inputs import DrivingAudio
from lipsync.pipeline.job import NO_FACE_NOTE, JobSetup
from lipsync.pipeline.stages import Compositor, Denoiser, WindowInput, composite_spec_of, regen_mask_of
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
    # Seconds per stage (STAGES order; the denoiser's parts measured inside it, the others around it).
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed_seconds if self.elapsed_seconds > 0 else float("nan")

    def summary(self) -> str:
        text = (f"{self.output}: {self.frames} frames ({self.media_seconds:.2f} s, "
                f"{self.frames_with_face} with a face) in {self.elapsed_seconds:.1f} s, "
                f"{self.frames_per_second:.2f} frames/s")
        if self.stages:
            text += "\n  stages: " + stage_text(self.stages)
        return text


# The stages of ``lipsync generate`` as its summary reports them: setup (the speech loaded and
# encoded, the video opened), decode + face (frames decoded, faces tracked and aligned, crops and
# audio tokens per window), the denoiser's VAE encode / UNet / VAE decode, composite (cross-fade and
# paste back), encode (the output video written).
STAGES = ("setup", "decode+face", "vae_encode", "unet", "vae_decode", "composite", "encode")


def stage_text(stages: dict[str, float]) -> str:
    total = sum(stages.values()) or 1.0
    return ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in stages.items())


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
        self.setup = JobSetup(self.profile, components.audio_encoder)
        self.stage_denoiser = Denoiser(components, self.device, self.dtype, self.regen_mask)

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
        return self.setup.speech.encode_audio(driving)

    def audio_tokens(self, features: torch.Tensor, window: Window, silent: np.ndarray | None) -> torch.Tensor:
        return self.setup.speech.audio_tokens(features, window, silent)

    def silence_tokens(self) -> torch.Tensor:
        """What the encoder makes of digital silence: fed where voice activity says nobody speaks."""
        return self.setup.speech.silence_tokens()

    # -- the whole job ---------------------------------------------------------------------
    def __call__(self, output: str, video: str | None = None, image: str | None = None, audio: str | None = None,
                 text: str | None = None, lang: str = "en", voice: str | None = None,
                 options: GenerateOptions | None = None, progress=None) -> GenerateResult:
        from lipsync.face import FaceDetector
        from lipsync.media.writer import VideoWriter

        opts = options or GenerateOptions()
        if (video is None) == (image is None):
            raise ValueError("give exactly one of a video or an image")
        t0 = time.perf_counter()
        stages = dict.fromkeys(STAGES, 0.0)
        den = self.stage_denoiser.windows
        den.timings = stages  # the denoiser adds its vae_encode / unet / vae_decode

        def timed(stage: str, since: float) -> float:
            now = time.perf_counter()
            stages[stage] += now - since
            return now

        # frames waiting for their crops, with their alignment and crop points
        frames: dict[int, tuple[FrameItem, np.ndarray | None, np.ndarray | None]] = {}
        pending: list[WindowInput] = []
        state = {"next": 0, "with_face": 0}

        with FaceDetector(max_faces=8) as detector, \
                self.setup.open(video=video, image=image, audio=audio, text=text, lang=lang, voice=voice,
                                options=opts, detector=detector) as job, \
                VideoWriter(output, fps=FPS, audio=job.speech.driving.native,
                            audio_rate=job.speech.driving.native_rate) as writer:
            tick = timed("setup", t0)
            n_out = job.num_frames
            compositor = Compositor(self.composite, job.planner.overlap)

            def run(windows: list[WindowInput]) -> None:
                for w, gen in zip(windows, self.stage_denoiser(windows, job.settings, opts.seed)):
                    compositor.add(w.window, gen)

            def flush(limit: int) -> None:
                while state["next"] < limit and state["next"] in frames:
                    j = state["next"]
                    item, matrix, points = frames.pop(j)
                    t = time.perf_counter()
                    frame, pasted = compositor.frame(j, item.image, matrix, points)
                    t = timed("composite", t)
                    state["with_face"] += pasted
                    writer.write(frame)
                    timed("encode", t)
                    state["next"] += 1
                    if progress:
                        progress(state["next"], n_out)

            for step in job.steps():
                tick = timed("decode+face", tick)
                if step.item is not None:
                    frames[step.item.index] = (step.item, step.matrix, step.points)
                pending += step.windows
                if pending and (len(pending) >= opts.batch_size or step.item is None):
                    run(pending)
                    pending = []
                flush(min([step.settled] + [w.window.start for w in pending]))
                tick = time.perf_counter()
            flush(n_out)
            # No face anywhere, by the no_face policy (default here: error): NoFaceError, and the atomic
            # writer drops the output; or passthrough: the frames, untouched, with the new speech.
            no_face = job.check_faces(state["with_face"], default="error")
            tick = time.perf_counter()
        den.timings = None
        timed("encode", tick)  # the writer's close: the last frames encoded, the audio muxed
        notes = job.notes() + ([NO_FACE_NOTE] if no_face else [])
        return GenerateResult(output, n_out, state["with_face"], n_out / FPS, time.perf_counter() - t0,
                              self.components.random_init, notes, stages)
