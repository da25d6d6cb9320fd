"""Encoding RGB frames (and an audio track) to an H.264 + AAC file in one pass."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from fractions import Fraction

import av
import av.error
import numpy as np
import soxr

from lipsync.errors import EmptyMediaError, UnsupportedFormatError
from lipsync.media.audio import as_channels_first
from lipsync.media.uri import UriLike, atomic_output, suffix_of

_MP4_FAMILY = {".mp4", ".m4v", ".mov"}
_AAC_FALLBACK_RATE = 48000
# Audio is encoded this far ahead of the video written so far, so the muxer always has packets
# of both streams to interleave and never has to buffer a long run of one of them.
_AUDIO_LEAD_S = 0.5
# AVCOL_* value 1 is BT.709 for colorspace, primaries and transfer; range 1 is limited ("tv").
_BT709 = 1
_LIMITED_RANGE = 1


def _rate(fps: float | Fraction) -> Fraction:
    """Frame rate as a fraction; NTSC rates given as decimals (29.97, 23.976, 59.94) become
    the exact 30000/1001, 24000/1001, 60000/1001 that their sources use."""
    if isinstance(fps, Fraction):
        rate = fps
    else:
        rate = Fraction(fps).limit_denominator(1001)
        ntsc = round(float(fps) * 1.001)
        if rate.denominator != 1 and abs(float(fps) * 1.001 - ntsc) < 0.005:
            rate = Fraction(ntsc * 1000, 1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


class VideoWriter:
    """Write H.264 (yuv420p) video plus an optional AAC track, muxed in a single pass.

    Use as a context manager; ``write`` takes H x W x 3 uint8 RGB frames (a ``VideoFrame`` is
    accepted too), and the first frame fixes the size. The file appears at ``uri`` (local path
    or fsspec URI) only when the ``with`` block ends without an exception.

    ``audio`` is float32, mono (n,) or (channels, n), at ``audio_rate``; it is written exactly as
    given, whether it is longer or shorter than the video.

    Odd sizes: yuv420p stores chroma per 2 x 2 block, so H.264 in yuv420p needs even width and
    height. An odd dimension is padded by one by repeating the last row / column (rather than
    scaling, which would blur the whole frame, or cropping, which would lose picture); the file
    is then one pixel larger in that dimension and otherwise keeps the input resolution.
    """

    def __init__(
        self,
        uri: UriLike,
        fps: float | Fraction = 25,
        audio: np.ndarray | None = None,
        audio_rate: int | None = None,
        # 16, not x264's usual 18: a dub must leave the untouched face as it was, and on a detailed
        # portrait the eyes came back at 37.4 dB at 18, 38.3 dB at 16 (+30 % bytes).
        crf: int = 16,
        preset: str = "veryfast",
    ):
        self.uri = os.fspath(uri)
        self.fps = _rate(fps)
        self.crf = crf
        self.preset = preset
        self.frames_written = 0
        self._audio = None
        self._audio_rate = 0
        if audio is not None:
            if not audio_rate:
                raise ValueError("audio_rate is required when audio is given")
            self._audio, self._audio_rate = self._prepare_audio(audio, int(audio_rate))
        self._audio_pos = 0
        self._atomic = None
        self._path = None
        self._container = None
        self._video = None
        self._audio_stream = None
        self._size = None  # (height, width) of the frames as given

    @staticmethod
    def _prepare_audio(audio: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        samples = as_channels_first(audio)
        if rate not in av.Codec("aac", "w").audio_rates:
            samples = soxr.resample(samples.T, rate, _AAC_FALLBACK_RATE, quality="HQ").T
            rate = _AAC_FALLBACK_RATE
        return np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32), rate

    def __enter__(self) -> "VideoWriter":
        self._atomic = atomic_output(self.uri)
        self._path = self._atomic.__enter__()
        options = {"movflags": "+faststart"} if suffix_of(self.uri) in _MP4_FAMILY else {}
        try:
            self._container = av.open(self._path, mode="w", options=options)
        except (av.error.FFmpegError, ValueError) as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise UnsupportedFormatError(self.uri, f"cannot write this container: {err}") from err
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._abort(type(err), err, err.__traceback__)
                raise
            self._atomic.__exit__(None, None, None)
        else:
            self._abort(exc_type, exc, tb)
        return False

    def _abort(self, exc_type, exc, tb) -> None:
        try:
            self._container.close()
        except Exception:  # the output is discarded anyway; the caller's error matters
            pass
        try:
            self._atomic.__exit__(exc_type, exc, tb)
        except BaseException as err:
            if err is not exc:
                raise

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise EmptyMediaError(self.uri, "no frames were written")
        self._mux(self._video.encode(None))
        if self._audio_stream is not None:
            self._encode_audio(self._audio.shape[1], final=True)
            self._mux(self._audio_stream.encode(None))
        self._container.close()

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _open_streams(self, height: int, width: int) -> None:
        try:
            self._add_streams(height, width)
        except (av.error.FFmpegError, ValueError) as err:
            raise UnsupportedFormatError(
                self.uri, f"cannot hold H.264/AAC in this container: {err}"
            ) from err

    def _add_streams(self, height: int, width: int) -> None:
        video = self._container.add_stream("libx264", rate=self.fps)
        video.width, video.height = width + width % 2, height + height % 2
        video.pix_fmt = "yuv420p"
        video.time_base = 1 / self.fps
        video.codec_context.time_base = 1 / self.fps
        video.options = {"crf": str(self.crf), "preset": self.preset}
        ctx = video.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc = _BT709, _BT709, _BT709
        ctx.color_range = _LIMITED_RANGE
        self._video = video
        if self._audio is not None:
            channels = self._audio.shape[0]
            layout = {1: "mono", 2: "stereo"}.get(channels) or av.AudioLayout(channels).name
            audio = self._container.add_stream("aac", rate=self._audio_rate, layout=layout)
            audio.format = "fltp"
            audio.bit_rate = 64_000 * (channels + 1)  # 128 kb/s mono, 192 kb/s stereo
            audio.time_base = Fraction(1, self._audio_rate)
            self._audio_stream = audio
        self._container.start_encoding()  # writes the header: the muxer vets the codecs here

    def write(self, image) -> None:
        """Encode one H x W x 3 uint8 RGB frame (or a ``VideoFrame``)."""
        if self._container is None:
            raise RuntimeError("VideoWriter must be used as a context manager")
        image = np.asarray(getattr(image, "image", image))
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frames must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
        if self._size is None:
            self._size = image.shape[:2]
            self._open_streams(*self._size)
        elif image.shape[:2] != self._size:
            raise ValueError(
                f"frame size {image.shape[:2]} differs from the first frame's {self._size}"
            )
        height, width = self._size
        if height % 2 or width % 2:
            image = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.pts = self.frames_written
        frame.time_base = 1 / self.fps
        self._mux(self._video.encode(frame))
        self.frames_written += 1
        if self._audio_stream is not None:
            until = (self.frames_written / self.fps + Fraction(_AUDIO_LEAD_S)) * self._audio_rate
            self._encode_audio(min(self._audio.shape[1], math.ceil(until)))

    def _encode_audio(self, until: int, final: bool = False) -> None:
        """Encode audio up to sample ``until`` in encoder-sized frames (the tail if ``final``)."""
        size = self._audio_stream.codec_context.frame_size or 1024
        layout = self._audio_stream.codec_context.layout.name
        while self._audio_pos < until:
            stop = min(self._audio_pos + size, self._audio.shape[1])
            if stop - self._audio_pos < size and not final:
                break
            chunk = np.ascontiguousarray(self._audio[:, self._audio_pos : stop])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = self._audio_rate
            frame.pts = self._audio_pos
            frame.time_base = Fraction(1, self._audio_rate)
            self._mux(self._audio_stream.encode(frame))
            self._audio_pos = stop


def encode_video(
    uri: UriLike,
    frames: Iterable,
    fps: float | Fraction = 25,
    audio: np.ndarray | None = None,
    audio_rate: int | None = None,
    **kwargs,
) -> int:
    """Write ``frames`` (RGB arrays or ``VideoFrame``s) plus optional audio; return the count."""
    with VideoWriter(uri, fps=fps, audio=audio, audio_rate=audio_rate, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written
