"""What a media file holds: streams, sizes, rates and durations, without decoding it all."""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import av.error
import numpy as np

from lipsync.errors import CorruptMediaError, EmptyMediaError, UnsupportedFormatError
from lipsync.media.containers import (
    audio_stream,
    check_claims,
    display_rotation,
    open_media,
    video_stream,
)
from lipsync.media.formats import IMAGE_SUFFIXES
from lipsync.media.limits import check_pixels, check_seconds
from lipsync.media.uri import UriLike, local_input, suffix_of
from lipsync.media.video import decode_image

# Timestamps of at most this many packets are read to judge whether the frame rate varies when
# the container has no index to consult.
_VFR_SCAN_PACKETS = 600


@dataclass(frozen=True)
class VideoStreamInfo:
    width: int  # display width, after rotation
    height: int  # display height, after rotation
    rotation: int  # counter-clockwise degrees applied to stored frames to make them upright
    fps: float  # average frame rate (0.0 for a still image)
    num_frames: int  # from the container when it says, otherwise duration * fps
    codec: str
    variable_frame_rate: bool | None  # None when it could not be judged
    start_time: float  # seconds, presentation time of the stream's first frame
    duration: float


@dataclass(frozen=True)
class AudioStreamInfo:
    sample_rate: int
    channels: int
    duration: float
    codec: str
    start_time: float


@dataclass(frozen=True)
class MediaInfo:
    path: str  # the URI or path as given
    format: str
    duration: float  # seconds; 0.0 for a still image
    video: VideoStreamInfo | None
    audio: AudioStreamInfo | None
    is_image: bool


def probe(uri: UriLike) -> MediaInfo:
    """Describe ``uri`` (local path or fsspec URI).

    Raises MediaNotFoundError, CorruptMediaError, UnsupportedFormatError, EmptyMediaError.
    """
    name = os.fspath(uri)
    with local_input(name) as path:
        if suffix_of(name) in IMAGE_SUFFIXES:
            return _probe_image(path, name)
        return _probe_av(path, name)


def _probe_image(path: str, name: str) -> MediaInfo:
    image = decode_image(path, name)
    height, width = image.shape[:2]
    codec = {".jpg": "mjpeg", ".jpeg": "mjpeg"}.get(suffix_of(name), suffix_of(name).lstrip("."))
    video = VideoStreamInfo(
        width=width, height=height, rotation=0, fps=0.0, num_frames=1, codec=codec,
        variable_frame_rate=False, start_time=0.0, duration=0.0,
    )
    return MediaInfo(
        path=name, format="image", duration=0.0, video=video, audio=None, is_image=True
    )


def _seconds(value: int | None, time_base) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _probe_av(path: str, name: str) -> MediaInfo:
    with open_media(path, name) as container:
        vstream = video_stream(container)
        astream = audio_stream(container)
        if vstream is None and astream is None:
            # Only streams in codecs without a decoder: say so (else: no streams at all).
            video_stream(container, name)
            audio_stream(container, name)
            raise UnsupportedFormatError(name, "holds no audio or video stream")
        check_claims(container, name, (vstream, astream))
        format_name = container.format.name
        container_duration = container.duration / av.time_base if container.duration else 0.0
        needs_scan = not container_duration or any(
            not s.duration for s in (vstream, astream) if s is not None
        )
        # Each pass below opens the file afresh: cheaper and safer than seeking back, which some
        # demuxers do poorly.
        spans = _packet_spans(path, name) if needs_scan else {}
        video = _video_info(vstream, path, name, spans) if vstream is not None else None
        audio = _audio_info(astream, spans) if astream is not None else None

    duration = container_duration or max(i.duration for i in (video, audio) if i is not None)
    if duration <= 0 or (video is not None and video.num_frames == 0 and audio is None):
        raise EmptyMediaError(name, "zero duration")
    check_seconds(name, duration, "a duration")
    return MediaInfo(
        path=name, format=format_name, duration=float(duration),
        video=video, audio=audio, is_image=False,
    )


def _packet_spans(path: str, name: str) -> dict[int, tuple[float, float, int]]:
    """Per stream index: (first pts, end pts, packet count) in seconds, demuxing without decoding.

    Needed for containers written without a duration (e.g. browser-recorded WebM).
    """
    spans: dict[int, list] = {}
    with open_media(path, name) as container:
        try:
            for packet in container.demux():
                if packet.pts is None or packet.time_base is None:
                    continue
                start = float(packet.pts * packet.time_base)
                end = start + float((packet.duration or 0) * packet.time_base)
                span = spans.setdefault(packet.stream.index, [start, end, 0])
                span[0] = min(span[0], start)
                span[1] = max(span[1], end)
                span[2] += 1
        except av.error.FFmpegError as err:
            raise CorruptMediaError(name, f"cannot demux: {err}") from err
    return {k: (v[0], v[1], v[2]) for k, v in spans.items()}


def _stream_span(stream, spans) -> tuple[float, float]:
    start = _seconds(stream.start_time, stream.time_base)
    duration = _seconds(stream.duration, stream.time_base)
    if stream.index in spans and not duration:
        first, end, _ = spans[stream.index]
        start, duration = first, end - first
    return start or 0.0, duration or 0.0


def _video_info(stream, path: str, name: str, spans) -> VideoStreamInfo:
    start, duration = _stream_span(stream, spans)
    rate = stream.average_rate or stream.guessed_rate
    frames = stream.frames or (spans[stream.index][2] if stream.index in spans else 0)
    fps = float(rate) if rate else (frames / duration if duration and frames else 0.0)
    if not frames and duration and fps:
        frames = int(round(duration * fps))

    rotation, width, height = _first_frame_geometry(path, name, stream.index)
    return VideoStreamInfo(
        width=width, height=height, rotation=rotation, fps=fps, num_frames=int(frames),
        codec=stream.codec_context.name, variable_frame_rate=_is_vfr(path, name, stream),
        start_time=start, duration=duration,
    )


def _first_frame_geometry(path: str, name: str, index: int) -> tuple[int, int, int]:
    """(rotation, display width, display height); the display matrix is only visible on frames."""
    with open_media(path, name) as container:
        stream = container.streams[index]
        width, height, rotation = stream.codec_context.width, stream.codec_context.height, 0
        try:
            for frame in container.decode(stream):
                check_pixels(name, frame.width, frame.height, "frames")
                width, height, rotation = frame.width, frame.height, display_rotation(frame, stream)
                break
        except av.error.FFmpegError as err:
            raise CorruptMediaError(name, f"cannot decode the first video frame: {err}") from err
    if rotation in (90, 270):
        width, height = height, width
    return rotation, width, height


def _is_vfr(path: str, name: str, stream) -> bool | None:
    """Whether frame intervals differ by more than timestamp rounding (None: cannot tell)."""
    if len(stream.index_entries) > 2:
        stamps = [entry.timestamp for entry in stream.index_entries]
    else:
        stamps = []
        with open_media(path, name) as container:
            try:
                for packet in container.demux(container.streams[stream.index]):
                    if packet.pts is not None:
                        stamps.append(packet.pts)
                    if len(stamps) >= _VFR_SCAN_PACKETS:
                        break
            except av.error.FFmpegError:
                return None
    if len(stamps) < 3:
        return None
    deltas = np.diff(np.unique(np.asarray(stamps, dtype=np.int64)))
    median = float(np.median(deltas))
    # One tick of slack absorbs 1/1000 time bases (Matroska) rounding 33.37 ms to 33 or 34.
    tolerance = max(1.0, 0.02 * median)
    return bool(np.any(np.abs(deltas - median) > tolerance))


def _audio_info(stream, spans) -> AudioStreamInfo:
    start, duration = _stream_span(stream, spans)
    ctx = stream.codec_context
    return AudioStreamInfo(
        sample_rate=int(ctx.sample_rate), channels=int(ctx.channels), duration=duration,
        codec=ctx.name, start_time=start,
    )
