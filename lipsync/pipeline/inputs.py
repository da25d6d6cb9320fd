"""The driving speech of a job: audio file or text, at 16 kHz for the model and at its own rate
for the output, plus voice activity per video frame."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from lipsync.errors import EmptyMediaError
from lipsync.media.formats import FPS, SAMPLE_RATE



@dataclass
class DrivingAudio:
    samples: np.ndarray  # float32 mono, 16 kHz: what the audio encoder hears
    native: np.ndarray  # float32 (channels, n) at native_rate: what the output carries
    native_rate: int
    source: str  # file name or "text:<lang>"

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def num_frames(self) -> int:
        """Output length: the audio's duration at 25 fps (rounded; at least one frame)."""
        return max(1, int(round(self.duration * FPS)))


def load_driving_audio(audio: str | None = None, text: str | None = None, lang: str = "en",
                       voice: str | None = None) -> DrivingAudio:
    if (audio is None) == (text is None):
        raise ValueError("give exactly one of an audio file or a text to speak")
    if text is not None:
        from lipsync.tts import synthesize

        speech = synthesize(text, lang=lang, voice=voice, sample_rate=SAMPLE_RATE)
        return DrivingAudio(speech.samples.astype(np.float32), speech.samples[None].astype(np.float32),
                            SAMPLE_RATE, f"text:{speech.lang}")
    from lipsync.media.uri import local_input

    with local_input(audio) as path, renamed_errors(path, audio):  # one download, one decode
        samples, native, rate = decode_speech(path)
    if len(samples) < SAMPLE_RATE / FPS:
        raise EmptyMediaError(str(audio), f"audio is too short ({len(samples) / SAMPLE_RATE:.3f} s): "
                                          "at least one video frame (40 ms) is needed")
    return DrivingAudio(samples, native, rate, str(audio))


def load_native_audio(audio: str) -> tuple[np.ndarray, int]:
    """The output track of a job driven by an audio file: (channels, n) float32 at its own rate
    (what ``load_driving_audio(audio).native`` holds), for a stage that needs only that."""
    from lipsync.media.audio import load_audio_native
    from lipsync.media.uri import local_input

    with local_input(audio) as path, renamed_errors(path, audio):
        return load_audio_native(path)


def decode_speech(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One decoding pass over a local audio (or video) file: (16 kHz mono float32 samples, (channels,
    n) float32 samples at the file's own rate, that rate). The 16 kHz samples are bit-for-bit what
    ``load_audio(path)`` gives: libswresample mixes the native chunks down as it would the decoded
    frames, then soxr resamples the same stream. (Other layouts than mono and stereo, whose mixing
    depends on the exact channel layout, are decoded a second time by ``load_audio``.)"""
    import av
    import soxr

    from lipsync.media.audio import _SOXR_QUALITY, _decoded, load_audio

    chunks: list[np.ndarray] = []
    mono: list[np.ndarray] = []
    mixer = stream = None
    rate = 0
    layouts = {1: "mono", 2: "stereo"}

    def resampled(pieces):
        nonlocal stream
        for piece in pieces:
            samples = piece.to_ndarray()[0]
            if rate != SAMPLE_RATE:
                if stream is None:
                    stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=_SOXR_QUALITY)
                samples = stream.resample_chunk(samples)
            mono.append(samples)

    for chunk, rate in _decoded(path, layout=None):
        chunks.append(chunk)
        if len(chunks) == 1 and chunk.shape[0] in layouts:
            mixer = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        if mixer is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                               layout=layouts[chunk.shape[0]])
            frame.sample_rate = rate
            resampled(mixer.resample(frame))
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise EmptyMediaError(path, "holds no audio samples")
    native = np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32)
    if mixer is None:
        return load_audio(path, SAMPLE_RATE), native, rate
    resampled(mixer.resample(None))
    if stream is not None:
        mono.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(mono) if mono else np.zeros(0, np.float32)
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), native, rate


@contextlib.contextmanager
def renamed_errors(local: str, uri: str):
    """Errors about the downloaded copy of a remote file name the file's URI, not the temp file."""
    from lipsync.errors import MediaError

    try:
        yield
    except MediaError as err:
        if err.path != str(local) or str(local) == str(uri):
            raise
        raise type(err)(str(uri), err.problem) from err


def voice_activity(samples: np.ndarray, n_frames: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE,
                   hangover: int = 3) -> np.ndarray:
    """Speech / silence per video frame from short-time energy against the file's own level.

    The threshold sits between the quiet floor (10th percentile) and the loud level (90th) on a dB
    scale, so it adapts to recording level; a few frames of hangover keep the mouth from snapping
    shut between syllables.
    """
    hop = sample_rate / fps
    rms = np.zeros(n_frames)
    for i in range(n_frames):
        seg = samples[int(i * hop): int((i + 1) * hop)]
        rms[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    db = 20 * np.log10(rms + 1e-6)
    lo, hi = np.percentile(db, 10), np.percentile(db, 90)
    if hi - lo < 6:  # no dynamics: all speech or all silence, decided by absolute level
        return np.full(n_frames, hi > -45)
    active = (db > lo + 0.35 * (hi - lo)) & (db > -55)
    out = active.copy()
    for shift in range(1, hangover + 1):  # dilate both ways
        out[shift:] |= active[:-shift]
        out[:-shift] |= active[shift:]
    return out
