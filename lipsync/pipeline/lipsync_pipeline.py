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
streamed into one another here, in sequence or overlapped (``lipsync.pipeline.overlap``; ``overlap_mode``:
``LipSyncPipeline(..., overlap_stages=...)``, ``LIPSYNC_OVERLAP=full|read|write|off``,
``LIPSYNC_SEQUENTIAL=1``): decode + face work in a producer thread, the denoiser in the calling thread,
composite + encode in a consumer thread, with bounded queues between them, so the denoiser does not
wait on the CPU work around it. The output is bit-for-bit the sequential loop's. The default
(``DEFAULT_OVERLAP``) is set by measurement. The batch job runs the same setup and stages in
separate Ray worker pools.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.options import GenerateOptions
from lipsync.pipeline.components import Components, load_components, save_folder
from lipsync.pipeline.frames import FrameItem
from lipsync.media.formats import FPS
from lipsync.pipeline.inputs import DrivingAudio
from lipsync.pipeline.job import NO_FACE_NOTE, JobSetup
from lipsync.pipeline.overlap import run_overlapped
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
    # Busy seconds per stage (STAGES order; the denoiser's parts measured inside it, the others around
    # it). Unless ``stage_overlap`` is off, stages ran at the same time in their own threads, so they
    # add up to more than ``elapsed_seconds``.
    stages: dict[str, float] = field(default_factory=dict)
    stage_overlap: str = "off"  # OVERLAP_MODES: which stages ran in their own thread
    # Overlapped: seconds the denoiser sat idle, waiting for frames (input) or for the writer (output).
    waits: dict[str, float] = field(default_factory=dict)

    @property
    def overlapped(self) -> bool:
        return self.stage_overlap != "off"

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed_seconds if self.elapsed_seconds > 0 else float("nan")

    def summary(self) -> str:
        text = (f"{self.output}: {self.frames} frames ({self.media_seconds:.2f} s, "
                f"{self.frames_with_face} with a face) in {self.elapsed_seconds:.1f} s, "
                f"{self.frames_per_second:.2f} frames/s")
        if self.stages:
            if self.overlapped:
                text += (f"\n  stages (busy seconds; {OVERLAP_MODES[self.stage_overlap][2]} in their own thread, "
                         f"overlapping the denoiser, so they add up to more than the {self.elapsed_seconds:.1f} s "
                         "wall time): " + stage_text(self.stages))
                if self.waits:
                    text += (f"\n  the denoiser waited {self.waits.get('input', 0.0):.1f} s for frames and "
                             f"{self.waits.get('output', 0.0):.1f} s for the writer")
            else:
                text += (f"\n  stages (in sequence, {self.elapsed_seconds:.1f} s wall time): "
                         + stage_text(self.stages))
        return text


# The stages of ``lipsync generate`` as its summary reports them: setup (the speech loaded and
# encoded, the video opened), decode + face (frames decoded, faces tracked and aligned, crops and
# audio tokens per window), the denoiser's VAE encode / UNet / VAE decode, composite (cross-fade and
# paste back), encode (the output video written).
STAGES = ("setup", "decode+face", "vae_encode", "unet", "vae_decode", "composite", "encode")


# Chunks (a batch of windows with its frames) each queue of the overlapped path holds.
QUEUE_DEPTH = 2
# Set to 1 to run the stages in sequence (debugging; the output is the same).
SEQUENTIAL_ENV = "LIPSYNC_SEQUENTIAL"
# Or pick which stages get their own thread (OVERLAP_MODES), e.g. LIPSYNC_OVERLAP=full.
OVERLAP_ENV = "LIPSYNC_OVERLAP"
# mode: (decode + face in a producer thread, composite + encode in a consumer thread, in words)
OVERLAP_MODES = {"off": (False, False, "nothing"), "read": (True, False, "decode+face"),
                 "write": (False, True, "composite+encode"), "full": (True, True, "decode+face and composite+encode")}


def overlap_mode(overlap_stages: bool | str | None, device: torch.device | None = None) -> str:
    """Which stages of a job run in their own thread (OVERLAP_MODES): ``overlap_stages`` when given
    (True: full, False: off, or a mode); else off when ``LIPSYNC_SEQUENTIAL`` is 1 / true / yes,
    else ``LIPSYNC_OVERLAP``'s mode, else the device's default (DEFAULT_OVERLAP). Read at each job."""
    if overlap_stages is None:
        if os.environ.get(SEQUENTIAL_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            return "off"
        overlap_stages = os.environ.get(OVERLAP_ENV, "").strip().lower() or None
    if overlap_stages is None:
        return DEFAULT_OVERLAP.get(device.type if device is not None else "cpu", "full")
    if isinstance(overlap_stages, bool):
        return "full" if overlap_stages else "off"
    if overlap_stages not in OVERLAP_MODES:
        raise ValueError(f"stage overlap {overlap_stages!r}: use one of {', '.join(OVERLAP_MODES)}")
    return overlap_stages


# The default per device type, by measurement (benchmarks/overlap.py; README, speed section). CPU:
# off. On the tiny model the overlapped modes gave 0.7x to 1.1x the sequential frames/s (median about
# 1.0) on a shared 2-core machine: the denoiser no longer waits, but a UNet pass takes twice as long
# while the decode + face thread runs (not when that work runs in another process): the tiny UNet's
# many small ops each wait for the GIL, which mediapipe's and PyAV's Python-side work holds. CUDA:
# not measured yet; off until `benchmarks/overlap.py jobs --device cuda` shows a gain.
DEFAULT_OVERLAP = {"cpu": "off", "cuda": "off"}


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
                 dtype: str | torch.dtype | None = None, overlap_stages: bool | str | None = None):
        """``overlap_stages``: run decode + face, the denoiser and composite + encode at the same time
        (True, or a mode of OVERLAP_MODES) or in sequence (False); None: see :func:`overlap_mode`."""
        self.overlap_stages = overlap_stages
        self.components = components
        self.profile = components.profile
        self.device = pick_device(device if device is None or isinstance(device, str) else str(device))
        self.dtype = pick_dtype(dtype, self.device)
        components.to(self.device, self.dtype)
        self.regen_mask = regen_mask_of(self.profile)
        composite_spec_of(self.profile)  # a bad profile composite fails here, at load, not in every job
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
        """Generate ``output``. ``progress(done, total)`` is called after each frame is written (from
        the writing thread when the stages overlap; an exception it raises stops the job)."""
        from lipsync.face import FaceDetector
        from lipsync.media.writer import VideoWriter

        opts = options or GenerateOptions()
        if (video is None) == (image is None):
            raise ValueError("give exactly one of a video or an image")
        mode = overlap_mode(self.overlap_stages, self.device)
        t0 = time.perf_counter()
        stages = dict.fromkeys(STAGES, 0.0)
        waits: dict[str, float] = {}
        den = self.stage_denoiser.windows
        den.timings = stages  # the denoiser adds its vae_encode / unet / vae_decode (calling thread only)
        try:
            with FaceDetector(max_faces=8) as detector, \
                    self.setup.open(video=video, image=image, audio=audio, text=text, lang=lang, voice=voice,
                                    options=opts, detector=detector) as job, \
                    VideoWriter(output, fps=FPS, audio=job.speech.driving.native,
                                audio_rate=job.speech.driving.native_rate) as writer:
                stages["setup"] += time.perf_counter() - t0
                n_out = job.num_frames
                composite = composite_spec_of(self.profile, opts.composite)
                out = _Writeback(Compositor(composite, job.planner.overlap), writer, n_out, progress)
                plan_times: dict[str, float] = {}
                steps = _plan(job, opts.batch_size, plan_times)

                def denoise(windows: list[WindowInput]) -> list[np.ndarray]:
                    return self.stage_denoiser(windows, job.settings, opts.seed)

                if mode != "off":
                    # decode + face in a producer thread, the denoiser here, composite + encode in a
                    # consumer thread (lipsync.pipeline.overlap); chunks end at a batch of windows.
                    def middle(chunk: list[_PlanStep]) -> list[tuple[_PlanStep, list[np.ndarray] | None]]:
                        return [(s, denoise(s.batch) if s.batch else None) for s in chunk]

                    def sink(done: list[tuple[_PlanStep, list[np.ndarray] | None]]) -> None:
                        for s, gens in done:
                            out.step(s, gens)

                    waits = run_overlapped(lambda: _chunks(steps, _chunk_frames(job, opts.batch_size)),
                                           middle, sink, depth=QUEUE_DEPTH, name="lipsync",
                                           source_thread=OVERLAP_MODES[mode][0], sink_thread=OVERLAP_MODES[mode][1])
                else:
                    try:
                        for s in steps:
                            out.step(s, denoise(s.batch) if s.batch else None)
                    finally:
                        steps.close()
                out.flush(n_out)
                stages["decode+face"] += plan_times.get("decode+face", 0.0)
                for k in ("composite", "encode"):
                    stages[k] += out.times[k]
                # No face anywhere, by the no_face policy (default here: error): NoFaceError, and the atomic
                # writer drops the output; or passthrough: the frames, untouched, with the new speech.
                no_face = job.check_faces(out.with_face, default="error")
                tick = time.perf_counter()
            stages["encode"] += time.perf_counter() - tick  # the writer's close: the last frames, the audio muxed
        finally:
            den.timings = None
        notes = job.notes() + ([NO_FACE_NOTE] if no_face else [])
        return GenerateResult(output, n_out, out.with_face, n_out / FPS, time.perf_counter() - t0,
                              self.components.random_init, notes, stages, mode, waits)


@dataclass
class _PlanStep:
    """One frame of the job's plan (and a last one with ``record=None``): the frame to keep for the
    composite, the batch of windows to denoise now (if one is complete), and the frame index below
    which every frame can be composited and written once that batch is in."""

    record: tuple[FrameItem, np.ndarray | None, np.ndarray | None] | None  # frame, alignment, crop points
    batch: list[WindowInput] | None
    limit: int


def _plan(job, batch_size: int, times: dict[str, float]) -> Iterator[_PlanStep]:
    """``job.steps()`` cut into batches of ``batch_size`` windows (the last batch at the end of the
    frames); ``times["decode+face"]``: the seconds spent producing the steps."""
    pending: list[WindowInput] = []
    steps = job.steps()
    try:
        while True:
            t = time.perf_counter()
            step = next(steps, None)
            if step is None:
                times["decode+face"] = times.get("decode+face", 0.0) + time.perf_counter() - t
                return
            record = (step.item, step.matrix, step.points) if step.item is not None else None
            pending += step.windows
            batch = None
            if pending and (len(pending) >= batch_size or step.item is None):
                batch, pending = pending, []
            limit = min([step.settled] + [w.window.start for w in pending])
            times["decode+face"] = times.get("decode+face", 0.0) + time.perf_counter() - t
            yield _PlanStep(record, batch, limit)
    finally:
        steps.close()


def _chunk_frames(job, batch_size: int) -> int:
    """Most frames in one chunk of the overlapped path: a batch's worth of new frames (a chunk ends
    earlier, at each batch; this bounds chunks over stretches without a face)."""
    return max(1, batch_size) * max(1, job.planner.size - job.planner.overlap)


def _chunks(steps: Iterator[_PlanStep], max_frames: int) -> Iterator[list[_PlanStep]]:
    chunk: list[_PlanStep] = []
    try:
        for s in steps:
            chunk.append(s)
            if s.batch or len(chunk) >= max_frames:
                yield chunk
                chunk = []
    except Exception:
        if chunk:  # the steps before an error are written first, as in the sequential loop
            yield chunk
        raise
    else:
        if chunk:
            yield chunk
    finally:
        steps.close()  # in the producer thread: the decoder's files close there


class _Writeback:
    """The consumer side: frames wait here for their regenerated crops, then are composited and
    written in order."""

    def __init__(self, compositor: Compositor, writer, n_out: int, progress=None):
        self.compositor, self.writer, self.n_out, self.progress = compositor, writer, n_out, progress
        self.frames: dict[int, tuple[FrameItem, np.ndarray | None, np.ndarray | None]] = {}
        self.next = 0
        self.with_face = 0
        self.times = {"composite": 0.0, "encode": 0.0}

    def step(self, s: _PlanStep, gens: list[np.ndarray] | None) -> None:
        if s.record is not None:
            self.frames[s.record[0].index] = s.record
        if s.batch:
            t = time.perf_counter()
            for w, gen in zip(s.batch, gens):
                self.compositor.add(w.window, gen)
            self.times["composite"] += time.perf_counter() - t
        self.flush(s.limit)

    def flush(self, limit: int) -> None:
        while self.next < limit and self.next in self.frames:
            j = self.next
            item, matrix, points = self.frames.pop(j)
            t = time.perf_counter()
            frame, pasted = self.compositor.frame(j, item.image, matrix, points)
            t1 = time.perf_counter()
            self.with_face += pasted
            self.writer.write(frame)
            self.times["composite"] += t1 - t
            self.times["encode"] += time.perf_counter() - t1
            self.next += 1
            if self.progress:
                self.progress(self.next, self.n_out)
