"""Opening media with PyAV and turning its exceptions into the project's typed errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import av
import av.error
import numpy as np

from lipsync.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    UnsupportedFormatError,
)
from lipsync.media.limits import check_pixels, check_seconds


def looks_like_text(path: str) -> bool:
    """True when the head of the file is printable text (a script, a log, JSON...)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


def open_error(path: str, name: str, err: Exception) -> MediaError:
    """The typed error for a file PyAV could not open; ``name`` is what the user passed."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return MediaNotFoundError(name, f"cannot open ({type(err).__name__})")
    if os.path.getsize(path) == 0:
        return EmptyMediaError(name, "file is empty (0 bytes)")
    if looks_like_text(path):
        return UnsupportedFormatError(name, "not a media file (it holds text)")
    if isinstance(err, av.error.InvalidDataError):
        return CorruptMediaError(name, "not a readable media container (invalid data)")
    return CorruptMediaError(name, f"cannot open: {err}")


@contextlib.contextmanager
def open_media(path: str, name: str) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for demuxing; errors name ``name`` (the URI the caller gave)."""
    try:
        # Tags in another encoding than UTF-8 (or damaged ones) must not make a file unreadable.
        container = av.open(path, mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as err:
        raise open_error(path, name, err) from err
    try:
        if not container.streams:
            # What muxers leave when a recording is stopped before its first frame.
            raise EmptyMediaError(name, "holds no streams (zero duration)")
        yield container
    finally:
        container.close()


def video_stream(
    container: av.container.InputContainer, name: str | None = None
) -> av.video.stream.VideoStream | None:
    """The first real video stream; cover art in audio files (attached pictures) does not count.

    A stream in a codec FFmpeg has no decoder for (PyAV gives it no codec context) is skipped;
    when it is the only one, UnsupportedFormatError names ``name`` (None: no stream is returned).
    """
    undecodable = False
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        if stream.codec_context is None:
            undecodable = True
            continue
        return stream
    if undecodable and name is not None:
        raise UnsupportedFormatError(name, "its video stream is in a codec that cannot be decoded")
    return None


def audio_stream(
    container: av.container.InputContainer, name: str | None = None
) -> av.audio.stream.AudioStream | None:
    """The audio stream flagged default (the main language track), else the first one; streams
    without a decoder are skipped as in :func:`video_stream`."""
    streams = [s for s in container.streams.audio if s.codec_context is not None]
    if not streams and container.streams.audio and name is not None:
        raise UnsupportedFormatError(name, "its audio stream is in a codec that cannot be decoded")
    for stream in streams:
        if stream.disposition & av.stream.Disposition.default:
            return stream
    return streams[0] if streams else None


def check_claims(container: av.container.InputContainer, name: str, streams) -> None:
    """MediaTooLargeError when the header claims frames over the pixel limit or a duration over
    the time limit (``lipsync.media.limits``), before anything is decoded."""
    if container.duration and container.duration > 0:
        check_seconds(name, container.duration / av.time_base, "a duration")
    for stream in streams:
        if stream is None:
            continue
        if stream.duration and stream.time_base is not None:
            check_seconds(name, float(stream.duration * stream.time_base), f"a {stream.type} stream")
        ctx = stream.codec_context
        if stream.type == "video" and ctx is not None:
            check_pixels(name, ctx.width, ctx.height, "frames")


def _legacy_rotate_tag(stream) -> int:
    """Counter-clockwise degrees from an old-style ``rotate`` tag (clockwise degrees), or 0.

    FFmpeg stopped exporting the tag from MP4 (it became a display matrix), but Matroska files
    remuxed by older tools still carry it as plain metadata.
    """
    for key, value in (stream.metadata or {}).items():
        if key.lower() == "rotate":
            try:
                return int(round(-float(value) / 90.0)) % 4 * 90
            except ValueError:
                return 0
    return 0


def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    try:
        data = frame.side_data["DISPLAYMATRIX"]
    except (KeyError, ValueError):
        return None
    return np.frombuffer(memoryview(data), dtype=np.int32, count=9)


def display_rotation(frame: av.VideoFrame, stream) -> int:
    """Counter-clockwise degrees (0, 90, 180, 270) that turn ``frame`` upright."""
    if _display_matrix(frame) is None:
        return _legacy_rotate_tag(stream)
    return int(round(frame.rotation / 90.0)) % 4 * 90


def upright(image: np.ndarray, frame: av.VideoFrame, stream) -> np.ndarray:
    """Turn ``image`` (H x W x C, decoded from ``frame``) the way ffmpeg's autorotate would.

    The flip cases mirror fftools' choice of ``transpose``/``hflip``/``vflip`` filters from the
    display matrix, so a file looks the same here as in ffmpeg-based players. Angles that are
    not multiples of 90 degrees are rounded to the nearest quarter turn.
    """
    matrix = _display_matrix(frame)
    if matrix is None:
        turns = _legacy_rotate_tag(stream) // 90
        return np.rot90(image, k=turns) if turns else image
    clockwise = (-display_rotation(frame, stream)) % 360
    if clockwise == 90:
        # transpose=cclock_flip is a plain transpose; transpose=clock turns a quarter clockwise.
        return image.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(image, k=-1)
    if clockwise == 270:
        # transpose=clock_flip is the anti-diagonal transpose; transpose=cclock a quarter
        # counter-clockwise.
        return np.rot90(image, k=-1)[::-1] if matrix[3] < 0 else np.rot90(image, k=1)
    if clockwise == 180:
        if matrix[0] < 0:
            image = image[:, ::-1]
        if matrix[4] < 0:
            image = image[::-1]
        return image
    if matrix[4] < 0:
        image = image[::-1]
    return image
