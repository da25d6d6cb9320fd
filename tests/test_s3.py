"""Media I/O against s3:// URIs, served by a local moto server (no network)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lipsync.errors import MediaNotFoundError
from lipsync.media import (
    VideoWriter,
    is_remote,
    iter_frames,
    load_audio,
    load_audio_native,
    local_input,
    probe,
    read_bytes,
    read_image,
    save_wav,
    write_bytes,
)


@pytest.fixture
def s3():
    """A fresh s3fs filesystem on the moto endpoint, so listings are never served from a cache."""
    import s3fs

    from lipsync.media.uri import storage_options

    return s3fs.S3FileSystem(skip_instance_cache=True, **storage_options())


def test_video_written_to_s3_reads_back(s3_bucket, s3, media_kit):
    uri = f"s3://{s3_bucket}/renders/x.mp4"
    assert is_remote(uri)
    audio = media_kit.sine(1.0, 16000)
    with VideoWriter(uri, fps=25, audio=audio, audio_rate=16000) as writer:
        for i in range(25):
            writer.write(media_kit.pattern_frame(i))
    assert s3.exists(f"{s3_bucket}/renders/x.mp4")

    info = probe(uri)
    assert info.path == uri
    assert info.video.num_frames == 25 and info.video.fps == pytest.approx(25)
    assert info.audio.sample_rate == 16000

    numbers = [media_kit.read_frame_number(f.image) for f in iter_frames(uri, fps=25)]
    assert numbers == list(range(25))
    samples = load_audio(uri, sample_rate=16000)
    assert len(samples) == pytest.approx(16000, abs=160)

    with local_input(uri) as path:
        assert path.endswith(".mp4") and os.path.getsize(path) > 0
        staged = path
    assert not os.path.exists(staged), "the downloaded copy must be removed"


def test_wav_image_and_bytes_on_s3(s3_bucket, media_kit, tmp_path):
    wav_uri = f"s3://{s3_bucket}/audio/tone.wav"
    tone = media_kit.sine(0.5, 22050, channels=2)
    save_wav(wav_uri, tone, 22050)
    samples, rate = load_audio_native(wav_uri)
    assert rate == 22050 and samples.shape == tone.shape
    assert np.abs(samples - tone).max() < 1e-3

    import cv2

    local_png = tmp_path / "face.png"
    cv2.imwrite(str(local_png), media_kit.pattern_frame(3)[:, :, ::-1])
    png_uri = f"s3://{s3_bucket}/images/face.png"
    write_bytes(png_uri, local_png.read_bytes())
    assert np.array_equal(read_image(png_uri), media_kit.pattern_frame(3))
    assert probe(png_uri).is_image

    write_bytes(f"s3://{s3_bucket}/meta/job.json", b'{"frames": 25}')
    assert read_bytes(f"s3://{s3_bucket}/meta/job.json") == b'{"frames": 25}'


def test_missing_s3_object_names_the_uri(s3_bucket):
    uri = f"s3://{s3_bucket}/nowhere/missing.mp4"
    for fn in (probe, load_audio, read_bytes, lambda u: list(iter_frames(u))):
        with pytest.raises(MediaNotFoundError) as info:
            fn(uri)
        assert uri in str(info.value)
    with pytest.raises(MediaNotFoundError, match="no-such-bucket"):
        probe("s3://no-such-bucket-lipsync/x.mp4")


def test_failed_upload_leaves_no_object(s3_bucket, s3, media_kit):
    key = f"{s3_bucket}/renders/failed.mp4"
    with pytest.raises(RuntimeError, match="model crashed"):
        with VideoWriter(f"s3://{key}", fps=25) as writer:
            for i in range(10):
                writer.write(media_kit.pattern_frame(i))
            raise RuntimeError("model crashed")
    assert not s3.exists(key)


def test_generate_reads_and_writes_s3(s3_bucket, s3, tmp_path):
    import warnings

    from lipsync.errors import CorruptMediaError
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline
    from lipsync.synth.corpus import make_clip

    make_clip(tmp_path / "c", seed=4, seconds=0.8, size=128, langs=["en"])
    s3.put(str(tmp_path / "c" / "video.mp4"), f"{s3_bucket}/in/face.mp4")
    s3.put(str(tmp_path / "c" / "audio.wav"), f"{s3_bucket}/in/speech.wav")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pipe = LipSyncPipeline.from_profile("tiny", device="cpu")
    out = f"s3://{s3_bucket}/out/dubbed.mp4"
    res = pipe(out, video=f"s3://{s3_bucket}/in/face.mp4", audio=f"s3://{s3_bucket}/in/speech.wav",
               options=GenerateOptions(num_steps=1))
    assert res.frames == 20
    assert probe(out).video.width == 128
    s3.pipe(f"{s3_bucket}/in/broken.mp4", b"\x00garbage" * 64)
    with pytest.raises(CorruptMediaError, match=f"s3://{s3_bucket}/in/broken.mp4"):
        pipe(f"s3://{s3_bucket}/out/never.mp4", video=f"s3://{s3_bucket}/in/broken.mp4",
             audio=f"s3://{s3_bucket}/in/speech.wav", options=GenerateOptions(num_steps=1))
    assert not s3.exists(f"{s3_bucket}/out/never.mp4")
