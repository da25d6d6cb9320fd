"""Shared fixtures: a local S3 (moto) server and makers of small synthetic media files.

Synthetic video frames carry their source frame number as a row of black/white blocks
(``FRAME_BITS`` bits, most significant first) so a test can tell which source frame it got.
"""

from __future__ import annotations

import os
import uuid
from fractions import Fraction

import av
import numpy as np
import pytest

FRAME_BITS = 10
BLOCK = 12  # pixels per bit block, square
PATTERN_HEIGHT, PATTERN_WIDTH = 72, 128  # smallest frame the pattern fits comfortably


def pattern_frame(number: int, height: int = PATTERN_HEIGHT, width: int = PATTERN_WIDTH) -> np.ndarray:
    """An RGB frame showing ``number`` in binary along the top and a square moving with it."""
    image = np.full((height, width, 3), 64, np.uint8)
    for bit in range(FRAME_BITS):
        on = (number >> (FRAME_BITS - 1 - bit)) & 1
        image[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if on else 0
    x = (number * 3) % max(1, width - 16)
    image[height - 20 : height - 4, x : x + 16] = (200, 40, 40)
    return image


def read_frame_number(image: np.ndarray) -> int:
    """Inverse of :func:`pattern_frame` on a decoded (slightly lossy) frame."""
    number = 0
    for bit in range(FRAME_BITS):
        block = image[2 : BLOCK - 2, bit * BLOCK + 2 : (bit + 1) * BLOCK - 2]
        number = (number << 1) | int(block.mean() > 127)
    return number


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1, amp: float = 0.4) -> np.ndarray:
    """float32 (channels, n) sine; channel c is at ``freq * (c + 1)`` so channels differ."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def write_video(
    path,
    num_frames: int,
    fps=25,
    *,
    pts_ms: list[int] | None = None,
    size: tuple[int, int] = (PATTERN_HEIGHT, PATTERN_WIDTH),
    rotation: int | None = None,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    faststart: bool = True,
    frame_fn=None,
    legacy_rotate_tag: bool = False,
    codec: str = "libx264",
    container_options: dict | None = None,
) -> str:
    """Encode pattern frames with PyAV directly (independent of the writer under test).

    ``pts_ms`` gives each frame's presentation time in milliseconds (variable frame rate);
    ``rotation`` stores a display matrix asking players to turn frames that many degrees
    counter-clockwise, so frames are stored already turned the other way; with
    ``legacy_rotate_tag`` it is written as an old-style ``rotate`` tag instead (clockwise degrees,
    kept only by Matroska).
    """
    path = str(path)
    options = {"movflags": "+faststart"} if faststart and path.endswith(".mp4") else {}
    container = av.open(path, "w", options={**options, **(container_options or {})})
    rate = Fraction(fps).limit_denominator(1001)
    stream = container.add_stream(codec, rate=rate)
    height, width = size
    if rotation in (90, 270):
        height, width = width, height
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "12", "preset": "ultrafast"}
    time_base = Fraction(1, 1000) if pts_ms is not None else 1 / rate
    stream.codec_context.time_base = time_base
    if rotation and legacy_rotate_tag:
        stream.metadata["rotate"] = str((-rotation) % 360)
    elif rotation:
        stream.set_display_rotation(rotation)
    astream = None
    if audio is not None:
        astream = container.add_stream("aac", rate=audio_rate, layout="mono" if audio.shape[0] == 1 else "stereo")
        astream.format = "fltp"
    frame_fn = frame_fn or (lambda i: pattern_frame(i, *size))
    for i in range(num_frames):
        image = frame_fn(i)
        if rotation:
            image = np.rot90(image, k=-(rotation // 90))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = pts_ms[i] if pts_ms is not None else i
        frame.time_base = time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    if astream is not None:
        _encode_audio(container, astream, audio, audio_rate)
    container.close()
    return path


def _encode_audio(container, stream, audio: np.ndarray, rate: int) -> None:
    size = stream.codec_context.frame_size or 1024
    layout = stream.codec_context.layout.name
    for start in range(0, audio.shape[1], size):
        chunk = np.ascontiguousarray(audio[:, start : start + size])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio(path, audio: np.ndarray, rate: int, codec: str) -> str:
    """Encode (channels, n) float audio with PyAV's ``codec`` into ``path``."""
    path = str(path)
    container = av.open(path, "w")
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    stream = container.add_stream(codec, rate=rate, layout=layout)
    stream.format = "fltp"  # both aac and libmp3lame take planar float
    _encode_audio(container, stream, audio, rate)
    container.close()
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def clip_with_audio(media_dir) -> str:
    """2 s of 25 fps pattern video with a 440 Hz mono AAC track at 16 kHz."""
    return write_video(media_dir / "clip_with_audio.mp4", 50, 25, audio=sine(2.0, 16000))


@pytest.fixture(scope="session")
def silent_clip(media_dir) -> str:
    """1 s of 25 fps pattern video, no audio stream."""
    return write_video(media_dir / "silent.mp4", 25, 25)


@pytest.fixture(scope="session")
def audio_only(media_dir) -> str:
    """1 s of 440 Hz at 44.1 kHz stereo, AAC in .m4a."""
    return write_audio(media_dir / "tone.m4a", sine(1.0, 44100, channels=2), 44100, "aac")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with the AWS environment pointed at it for the session.

    Yields the endpoint URL. The environment variables are restored afterwards.
    """
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # A proxy set for package downloads must not intercept the local server.
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    }
    dropped = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    saved = {key: os.environ.get(key) for key in (*env, *dropped)}
    os.environ.update(env)
    for key in dropped:
        os.environ.pop(key, None)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
    """Name of an empty bucket on the moto server (us-east-1 needs no location constraint)."""
    import boto3

    name = f"lipsync-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


class MediaKit:
    """The media-making helpers of this module, handed to tests by the ``media_kit`` fixture."""

    pattern_frame = staticmethod(pattern_frame)
    read_frame_number = staticmethod(read_frame_number)
    sine = staticmethod(sine)
    write_video = staticmethod(write_video)
    write_audio = staticmethod(write_audio)


@pytest.fixture(scope="session")
def media_kit() -> type[MediaKit]:
    return MediaKit


@pytest.fixture(scope="session")
def tiny_pipe():
    """The bundled tiny model on CPU, loaded once for every test that generates in-process."""
    import warnings

    from lipsync.pipeline import LipSyncPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return LipSyncPipeline.from_profile("tiny", device="cpu")
