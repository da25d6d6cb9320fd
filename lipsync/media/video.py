"""Decoding video (and still images) into upright RGB frames at a constant frame rate."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.error
import numpy as np

from lipsync.media import limits as _limits

# OpenCV's own ceiling on decoded image size (read once, when cv2 is first imported): the
# header check in decode_image is the real guard, this one catches formats it cannot parse.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(_limits.max_pixels()))
import cv2  # noqa: E402

from lipsync.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaNotFoundError,
    MediaTooLargeError,
    NoVideoStreamError,
    UnsupportedFormatError,
)
from lipsync.media.containers import (
    check_claims,
    looks_like_text,
    open_media,
    upright,
    video_stream,
)
from lipsync.media.formats import IMAGE_SUFFIXES
from lipsync.media.limits import (
    check_pixels,
    check_seconds,
    image_header_size,
    max_pixels,
    png_problem,
)
from lipsync.media.uri import UriLike, local_input, suffix_of

# A source frame whose timestamp is within this many seconds after an output instant still counts
# as shown at that instant: absorbs rounding of timestamps stored in coarse time bases (1/1000 s).
_EPSILON = 1e-3
# A file that decodes to fewer than this share of the frames its header announces is truncated.
_TRUNCATED_SHARE = 0.9


@dataclass
class VideoFrame:
    index: int  # output frame number (at the target rate, or the source frame number if fps=None)
    time: float  # seconds since the first video frame
    image: np.ndarray  # H x W x 3 uint8 RGB, C-contiguous, upright


def is_image_path(uri: UriLike) -> bool:
    """True when ``uri`` names a still image (by extension)."""
    return suffix_of(uri) in IMAGE_SUFFIXES


def read_image(uri: UriLike) -> np.ndarray:
    """Read a still image as H x W x 3 uint8 RGB, EXIF orientation applied."""
    name = os.fspath(uri)
    with local_input(name) as path:
        return decode_image(path, name)


def decode_image(path: str, name: str) -> np.ndarray:
    """:func:`read_image` of the local file ``path``; errors name ``name``."""
    try:
        size = os.path.getsize(path)
        # No image within the pixel limit needs more than this (an uncompressed 16-bit RGBA BMP).
        if size > 8 * max_pixels() + (1 << 20):
            raise MediaTooLargeError(name, f"{size} bytes is more than any image within the pixel limit "
                                           "(LIPSYNC_MAX_PIXELS) takes; refused before reading")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise MediaNotFoundError(name, f"cannot read ({type(err).__name__})") from err
    if data.size == 0:
        raise EmptyMediaError(name, "file is empty (0 bytes)")
    problem = png_problem(data.data)
    if problem is not None:
        raise CorruptMediaError(name, problem)
    claimed = image_header_size(data[:1 << 16].tobytes())
    if claimed is not None:
        check_pixels(name, claimed[0], claimed[1], "an image")
    # imdecode (unlike imread) copes with non-ASCII paths everywhere; IMREAD_COLOR applies the
    # EXIF orientation and turns grey, palette and alpha images into 3 channels.
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as err:  # some decoders throw instead of returning None
        raise CorruptMediaError(name, f"cannot decode image ({err.err or 'OpenCV error'})") from err
    if image is None:
        if looks_like_text(path):
            raise UnsupportedFormatError(name, "not an image (it holds text)")
        raise CorruptMediaError(name, "cannot decode image")
    return np.ascontiguousarray(image[:, :, ::-1])


def iter_frames(
    uri: UriLike, fps: float | None = 25.0, max_frames: int | None = None
) -> Iterator[VideoFrame]:
    """Stream upright RGB frames of ``uri`` resampled to a constant ``fps``.

    Output frame k is the source frame on screen at t = k / fps: the latest one whose
    presentation time is <= t (+1 ms), measured from the first video frame. That maps any
    constant or variable source rate onto ``fps``; the output holds round(duration * fps)
    frames, the tail included. ``fps=None`` yields the source frames as they are. A still image
    yields one frame. Memory stays bounded: at most two source frames are held.
    """
    name = os.fspath(uri)
    if fps is not None and not (float(fps) > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if max_frames is not None and max_frames <= 0:
        return
    if is_image_path(name):
        yield VideoFrame(index=0, time=0.0, image=read_image(uri))
        return
    with local_input(name) as path:
        yield from _decode(path, name, fps, max_frames)


def _to_rgb(frame: av.VideoFrame, stream) -> np.ndarray:
    return np.ascontiguousarray(upright(frame.to_ndarray(format="rgb24"), frame, stream))


def _decode(
    path: str, name: str, fps: float | None, max_frames: int | None
) -> Iterator[VideoFrame]:
    with open_media(path, name) as container:
        stream = video_stream(container, name)
        if stream is None:
            raise NoVideoStreamError(name, "has no video stream")
        check_claims(container, name, (stream,))
        stream.thread_type = "AUTO"
        source = _Source(container, stream, name)
        frames = _native(source) if fps is None else _resample(source, float(fps))
        count = 0
        try:
            for out in frames:
                yield out
                count += 1
                if max_frames is not None and count >= max_frames:
                    return
        finally:
            frames.close()  # before the container closes under it
        if count == 0:
            raise EmptyMediaError(name, "holds no video frames")
        source.check_complete()


class _Source:
    """Decoded source frames as (seconds since the first frame, seconds on screen, av frame)."""

    def __init__(self, container, stream, name: str):
        self.container, self.stream, self.name = container, stream, name
        self.decoded = 0
        self.end = 0.0  # end of the last frame seen, seconds since the first frame
        rate = stream.average_rate or stream.guessed_rate
        self.default_interval = 1.0 / float(rate) if rate else 1.0 / 25.0

    def __iter__(self) -> Iterator[tuple[float, float, av.VideoFrame]]:
        origin = None
        last = None
        try:
            for frame in self.container.decode(self.stream):
                self.decoded += 1
                check_pixels(self.name, frame.width, frame.height, "frames")
                stamp = frame.pts if frame.pts is not None else frame.dts
                if stamp is not None and frame.time_base is not None:
                    t = float(stamp * frame.time_base)
                    origin = t if origin is None else origin
                    t -= origin
                else:
                    origin = 0.0 if origin is None else origin
                    t = last + self.default_interval if last is not None else 0.0
                if last is not None and t <= last:
                    # Broken or repeated timestamps: keep decode order, nudge forward.
                    t = last + 1e-6
                # A timestamp jump of hours would have the resampler repeat a frame that long.
                check_seconds(self.name, t, "a frame timestamp")
                last = t
                duration = self.default_interval
                if frame.duration and frame.time_base is not None:
                    duration = float(frame.duration * frame.time_base)
                self.end = t + duration
                yield t, duration, frame
        except av.error.FFmpegError as err:
            raise CorruptMediaError(
                self.name, f"decoding failed after {self.decoded} frames: {err}"
            ) from err

    def check_complete(self) -> None:
        """Raise when the frames decoded cover much less time than the container announces.

        Some truncated files end without a decoder error; time is compared rather than frame
        counts because MP4 edit lists make the header's sample count exceed the frames shown.
        """
        announced = _announced_seconds(self.stream)
        if announced:
            if self.end < _TRUNCATED_SHARE * announced - 0.1:
                raise CorruptMediaError(
                    self.name,
                    f"truncated: frames cover {self.end:.2f} s of the {announced:.2f} s announced",
                )


def _announced_seconds(stream) -> float | None:
    """The video stream's length as its container states it: the stream's duration, or (Matroska,
    which keeps none) the muxer's per-stream DURATION tag, e.g. ``00:00:02.400000000``."""
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION") or (stream.metadata or {}).get("duration")
    try:
        h, m, sec = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (TypeError, ValueError):
        return None


def _native(source: _Source) -> Iterator[VideoFrame]:
    for index, (t, _, frame) in enumerate(source):
        yield VideoFrame(index=index, time=t, image=_to_rgb(frame, source.stream))


def _resample(source: _Source, fps: float) -> Iterator[VideoFrame]:
    """Constant-rate output by timestamp: each source frame stays on screen until the next starts.

    Output k is final once a later source frame has arrived. It also has to exist: k must be
    below round(duration * fps), which a source frame starting at or after (k + 0.5) / fps
    proves (the stream ends after it); otherwise output k waits for the end of the stream. At
    most one output waits, so at most two source images are held.
    """
    k = 0
    shown = None  # the av frame on screen now
    shown_rgb = None  # its RGB image, converted on first use (downsampling skips many frames)
    handed_out = False
    pending = None

    def output(index: int) -> VideoFrame:
        nonlocal shown_rgb, handed_out
        if shown_rgb is None:
            shown_rgb, handed_out = _to_rgb(shown, source.stream), False
        # Callers may draw on frames; a source frame shown twice gets a copy the second time.
        image = shown_rgb.copy() if handed_out else shown_rgb
        handed_out = True
        return VideoFrame(index=index, time=index / fps, image=image)

    for t, _, frame in source:
        if pending is not None and (pending.index + 0.5) / fps <= t:
            yield pending
            pending = None
        while shown is not None and k / fps + _EPSILON < t:
            out = output(k)
            k += 1
            if (out.index + 0.5) / fps <= t:  # no slack: a wrong "no" only delays the output
                yield out
            else:
                pending = out
        shown, shown_rgb = frame, None

    if shown is None:
        return
    total = int(math.floor(source.end * fps + 0.5))
    if pending is not None and pending.index < total:
        yield pending
    while k < total:
        yield output(k)
        k += 1


def sample_frames(uri: UriLike, times: list[float]) -> list[VideoFrame]:
    """Frames on screen at each of ``times`` (seconds from the first frame), found by seeking.

    For a look at a few frames of a long file (``lipsync probe``) without decoding all of it.
    ``index`` is the 25 fps frame number of the requested time.
    """
    name = os.fspath(uri)
    if is_image_path(name):
        image = read_image(uri)
        return [VideoFrame(index=0, time=0.0, image=image) for _ in times[:1]]
    out: list[VideoFrame] = []
    with local_input(name) as path, open_media(path, name) as container:
        stream = video_stream(container, name)
        if stream is None:
            raise NoVideoStreamError(name, "has no video stream")
        check_claims(container, name, (stream,))
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        for t in sorted(times):
            target = start + max(t, 0.0)
            best = None
            try:
                container.seek(int(target / tb), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    ft = float(frame.pts * tb)
                    if best is not None and ft > target + _EPSILON:
                        break
                    best = (ft, frame)
            except av.error.FFmpegError as err:
                raise CorruptMediaError(name, f"cannot seek to {t:.2f} s: {err}") from err
            if best is not None:
                out.append(VideoFrame(index=int(round(t * 25)), time=best[0] - start,
                                      image=_to_rgb(best[1], stream)))
    return out


def read_frame_range(uri: UriLike, start: int, stop: int, fps: float = 25.0) -> list[VideoFrame]:
    """Output frames ``start``..``stop-1`` of ``iter_frames(uri, fps)``, found by seeking.

    The same timestamp rule as :func:`iter_frames` (frame k shows the latest source frame starting
    at or before k / fps), for random access in bounded memory: e.g. playing a clip backwards
    when a long soundtrack loops the video. Past the end, the last source frame repeats.
    """
    name = os.fspath(uri)
    if stop <= start:
        return []
    if is_image_path(name):
        image = read_image(uri)
        return [VideoFrame(index=k, time=k / fps, image=image if k == start else image.copy())
                for k in range(start, stop)]
    out: list[VideoFrame] = []
    with local_input(name) as path, open_media(path, name) as container:
        stream = video_stream(container, name)
        if stream is None:
            raise NoVideoStreamError(name, "has no video stream")
        check_claims(container, name, (stream,))
        stream.thread_type = "AUTO"
        tb = stream.time_base
        origin = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        target = origin + start / fps
        try:
            container.seek(max(int(target / tb), 0), stream=stream, backward=True, any_frame=False)
            shown = None
            k = start
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb) - origin
                while shown is not None and k < stop and k / fps + _EPSILON < t:
                    out.append(VideoFrame(index=k, time=k / fps, image=_to_rgb(shown, stream)))
                    k += 1
                if k >= stop:
                    break
                shown = frame
        except av.error.FFmpegError as err:
            raise CorruptMediaError(name, f"cannot read frames {start}-{stop - 1}: {err}") from err
        if shown is None:
            raise EmptyMediaError(name, f"holds no video frames at or after frame {start}")
        last = _to_rgb(shown, stream) if k < stop else None
        while k < stop:
            out.append(VideoFrame(index=k, time=k / fps, image=last.copy()))
            k += 1
    return out
