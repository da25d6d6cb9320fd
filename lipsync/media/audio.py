"""Decoding audio (from audio files or the audio track of videos) and writing WAV."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import av
import av.error
import numpy as np
import soundfile
import soxr

from lipsync.errors import CorruptMediaError, EmptyMediaError, MediaTooLargeError, NoAudioStreamError
from lipsync.media.containers import audio_stream, check_claims, open_media
from lipsync.media.limits import max_seconds
from lipsync.media.uri import UriLike, atomic_output, local_input

# soxr "HQ" is librosa's default (res_type="soxr_hq"): transparent for speech features.
_SOXR_QUALITY = "HQ"
_MAX_CHANNELS = 64
_MIN_RATE = 1000  # below telephone quality by far: a damaged header (1 Hz would need hours of output)
_MAX_RATE = 768_000  # the highest rate of real recording gear; FFmpeg's WAV reader takes any
# Decoded samples past the stream's announced duration are dropped up to this many seconds.
_PADDING_S = 0.25


def _decoded(uri: UriLike, layout: str | None) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (float32 array (channels, n), sample rate) chunks of the first audio stream.

    Every chunk has the rate of the first decoded frame (and ``layout`` when given, else the
    first frame's layout), so streams that change format midway come out uniform.

    AAC pads its last frame to 1024 samples and MP4 records the true length only in the stream
    duration, which decoders ignore; samples beyond that duration are dropped when they are few
    enough to be such padding (a wrong duration in a broken file must not cut real audio).
    """
    name = os.fspath(uri)
    with local_input(name) as path, open_media(path, name) as container:
        stream = audio_stream(container, name)
        if stream is None:
            raise NoAudioStreamError(name, "has no audio stream")
        check_claims(container, name, (stream,))
        stream.thread_type = "AUTO"
        announced = None
        if stream.duration and stream.time_base is not None:
            announced = float(stream.duration * stream.time_base)
        resampler = None
        rate = 0
        limit = None  # samples announced by the container
        position = 0  # samples yielded so far
        held: list[np.ndarray] = []  # samples past ``limit``, maybe padding
        try:
            # The trailing None flushes the resampler.
            for frame in itertools.chain(container.decode(stream), [None]):
                if resampler is None:
                    if frame is None:
                        break
                    rate = frame.sample_rate
                    if not _MIN_RATE <= rate <= _MAX_RATE:
                        raise CorruptMediaError(name, f"audio sample rate {rate} Hz is not usable")
                    ceiling = int(max_seconds() * rate)  # the header may understate the length
                    resampler = av.AudioResampler(
                        format="fltp", layout=layout or frame.layout.name, rate=rate
                    )
                    limit = round(announced * rate) if announced else None
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray()
                    if limit is not None and position + chunk.shape[1] > limit:
                        keep = max(limit - position, 0)
                        held.append(chunk[:, keep:])
                        chunk = chunk[:, :keep]
                    position += chunk.shape[1]
                    if position > ceiling:
                        raise MediaTooLargeError(
                            name, f"audio longer than the limit of {max_seconds() / 3600:g} hours "
                                  "(LIPSYNC_MAX_MEDIA_SECONDS)")
                    if chunk.shape[1]:
                        yield chunk, rate
        except av.error.FFmpegError as err:
            raise CorruptMediaError(name, f"cannot decode audio: {err}") from err
        excess = sum(chunk.shape[1] for chunk in held)
        if held and excess > _PADDING_S * rate:
            yield np.concatenate(held, axis=1), rate


def load_audio(uri: UriLike, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate``, resampled with soxr (high quality).

    Reads wav/mp3/flac/m4a/ogg and the audio track of any video container. Channels are mixed
    down by libswresample, which weighs centre, surround and LFE channels properly.
    Memory: the decoded native-rate audio is never held whole, only the resampled output.
    """
    name = os.fspath(uri)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    pieces: list[np.ndarray] = []
    stream_resampler = None
    for chunk, rate in _decoded(uri, layout="mono"):
        samples = chunk[0]
        if rate != sample_rate:
            if stream_resampler is None:
                stream_resampler = soxr.ResampleStream(
                    rate, sample_rate, 1, dtype="float32", quality=_SOXR_QUALITY
                )
            samples = stream_resampler.resample_chunk(samples)
        pieces.append(samples)
    if stream_resampler is not None:
        pieces.append(stream_resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if audio.size == 0:
        raise EmptyMediaError(name, "holds no audio samples")
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def load_audio_native(uri: UriLike) -> tuple[np.ndarray, int]:
    """(float32 samples shaped (channels, n), sample rate) exactly as the file holds them."""
    name = os.fspath(uri)
    pieces: list[np.ndarray] = []
    rate = 0
    for chunk, rate in _decoded(uri, layout=None):
        pieces.append(chunk)
    if not pieces or sum(p.shape[1] for p in pieces) == 0:
        raise EmptyMediaError(name, "holds no audio samples")
    return np.ascontiguousarray(np.concatenate(pieces, axis=1), dtype=np.float32), rate


def as_channels_first(samples: np.ndarray) -> np.ndarray:
    """float32 (channels, n) from mono (n,) or (channels, n); integer PCM is scaled to [-1, 1]."""
    array = np.asarray(samples)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    array = array.astype(np.float32, copy=False)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"audio must be shaped (n,) or (channels, n), got {array.shape}")
    if array.shape[0] > _MAX_CHANNELS:
        raise ValueError(f"audio shaped {array.shape} looks like (n, channels); pass (channels, n)")
    return array


def save_wav(uri: UriLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM WAV atomically (local path or fsspec URI)."""
    channels_first = as_channels_first(samples)
    # libsndfile wraps rather than clips out-of-range floats when converting to PCM16.
    frames = np.clip(channels_first, -1.0, 1.0).T
    with atomic_output(uri) as tmp:
        soundfile.write(tmp, frames, int(sample_rate), subtype="PCM_16", format="WAV")
