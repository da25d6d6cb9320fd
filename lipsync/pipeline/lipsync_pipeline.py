"""LipSyncPipeline: video (or image) + speech (or text) in, lip-synced video out.

Read top to bottom, ``__call__`` is: load the speech and encode it; stream the frames with their
tracked target face; align each face to a crop; cut the stream into overlapping 16-frame windows;
denoise batches of windows (VAE encode, DDIM with audio guidance, VAE decode); cross-fade the
overlaps; paste the mouth region back into the original frame; encode with the speech. Frames
without a face pass through untouched. Memory is bounded by the batch of windows in flight, not by
the video's length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.errors import NoFaceError
from lipsync.face import estimate_alignment, lower_face_mask, paste_back, warp_to_crop
from lipsync.pipeline.components import Components, load_components, save_folder
from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser
from lipsync.pipeline.frames import FrameItem, FrameSource, face_landmarks
from lipsync.pipeline.inputs import FPS, DrivingAudio, load_driving_audio, voice_activity
from lipsync.pipeline.windows import Blender, Window, WindowPlanner
from lipsync.profiles import load_profile

DEFAULT_SEED = 1247


@dataclass
class GenerateOptions:
    num_steps: int | None = None  # None = the profile's default
    guidance_scale: float | None = None
    seed: int = DEFAULT_SEED
    face: str | int = "largest"
    batch_size: int = 1  # windows denoised together
    loop: str = "pingpong"  # when the speech outlasts the video: pingpong | repeat | freeze
    silence_gating: bool = False  # close the mouth where the speech is silent (voice activity)
    overlap: int | None = None  # frames shared by consecutive windows; None = profile default
    deepcache_interval: int = 0  # 0 = off; N = full UNet pass every N steps


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
        self.denoiser = WindowDenoiser(components.unet, components.vae, components.scheduler,
                                       components.scaling_factor, components.shift_factor, self.device, self.dtype)
        size = self.profile.resolution
        mask = self.profile.mask or {}
        self.regen_mask = lower_face_mask(size, top=float(mask.get("top", 0.5)), side=float(mask.get("side", 0.0)))
        self._silence_tokens = None

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

    # -- steps -----------------------------------------------------------------------------
    def encode_audio(self, driving: DrivingAudio) -> torch.Tensor:
        enc = self.components.audio_encoder
        with torch.no_grad():
            return enc.features(driving.samples)

    def audio_tokens(self, features: torch.Tensor, window: Window, silent: np.ndarray | None) -> torch.Tensor:
        enc = self.components.audio_encoder
        with torch.no_grad():
            tokens = enc.frame_tokens(features, window.start, window.stop).float()
            if silent is not None and silent[window.start:window.stop].any():
                quiet = torch.from_numpy(silent[window.start:window.stop])
                tokens[quiet] = self.silence_tokens().to(tokens)
        return tokens

    def silence_tokens(self) -> torch.Tensor:
        """What the encoder makes of digital silence: fed where voice activity says nobody speaks."""
        if self._silence_tokens is None:
            enc = self.components.audio_encoder
            with torch.no_grad():
                feats = enc.features(np.zeros(16000, np.float32))
                self._silence_tokens = enc.frame_tokens(feats, 12, 13)[0].float().cpu()
        return self._silence_tokens

    def align(self, item: FrameItem) -> tuple[np.ndarray, np.ndarray]:
        size = self.profile.resolution
        M = estimate_alignment(face_landmarks(item.face), size, aspect=float(self.profile.crop_aspect))
        return warp_to_crop(item.image, M, size), M

    def composite(self, image: np.ndarray, crop: np.ndarray, M: np.ndarray) -> np.ndarray:
        return paste_back(image, crop, M, self.regen_mask)

    def denoise(self, windows: list[Window], crops: dict[int, np.ndarray], features: torch.Tensor,
                silent: np.ndarray | None, noise: torch.Tensor, settings: DenoiseSettings) -> list[np.ndarray]:
        """Denoise windows of the same length together; returns generated crops per window."""
        out: list[np.ndarray | None] = [None] * len(windows)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(i)
        for idx in by_len.values():
            batch = np.stack([np.stack([crops[j] for j in windows[i].frames]) for i in idx])
            tokens = torch.stack([self.audio_tokens(features, windows[i], silent) for i in idx])
            gen = self.denoiser(batch, 1.0 - self.regen_mask, tokens, noise, settings)
            for k, i in enumerate(idx):
                out[i] = gen[k]
        return out

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
        driving = load_driving_audio(audio, text, lang, voice)
        n_out = driving.num_frames
        features = self.encode_audio(driving)
        silent = ~voice_activity(driving.samples, n_out) if opts.silence_gating else None
        settings = DenoiseSettings(opts.num_steps or self.profile.num_steps,
                                   self.profile.guidance_scale if opts.guidance_scale is None else opts.guidance_scale,
                                   opts.deepcache_interval)
        overlap = self.profile.overlap if opts.overlap is None else opts.overlap
        window = int(self.profile.window)
        planner = WindowPlanner(window, min(overlap, window - 1))
        noise = self.denoiser.initial_noise(self.profile.resolution, opts.seed)
        blender = Blender()
        buffer: dict[int, FrameItem] = {}
        aligned: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        pending: list[Window] = []
        state = {"next": 0, "with_face": 0}

        def run(windows: list[Window]) -> None:
            crops = {j: aligned[j][0] for w in windows for j in w.frames}
            for w, gen in zip(windows, self.denoise(windows, crops, features, silent, noise, settings)):
                blender.add(w, gen, planner.overlap)

        def flush(writer, limit: int) -> None:
            while state["next"] < limit and state["next"] in buffer:
                j = state["next"]
                item = buffer.pop(j)
                crop = blender.pop(j)
                frame = item.image
                if crop is not None:
                    frame = self.composite(item.image, crop, aligned[j][1])
                    state["with_face"] += 1
                aligned.pop(j, None)
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
            for item in source:
                buffer[item.index] = item
                if item.face is not None:
                    aligned[item.index] = self.align(item)
                pending += planner.push(item.index, item.face is not None)
                if len(pending) >= opts.batch_size:
                    run(pending)
                    pending = []
                limit = min([planner.earliest_future_start()] + [w.start for w in pending])
                flush(writer, limit)
            pending += planner.finish()
            if pending:
                run(pending)
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
