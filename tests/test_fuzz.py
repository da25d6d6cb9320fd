"""Hostile inputs end cleanly: a fixed-seed slice of benchmarks/fuzz.py (mutated video, audio,
images, manifests and upload bodies through probe, decode, audio and image loading, manifest
parsing and the server's upload checks), and the memory guard on crafted headers."""

from __future__ import annotations

import resource
import struct
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fuzz  # noqa: E402  (benchmarks/fuzz.py)

from lipsync.errors import MediaTooLargeError  # noqa: E402


def test_fixed_seed_slice_has_no_traceback_hang_or_crash():
    report = fuzz.run(cases=200, seed=0, targets=fuzz.TARGETS, timeout=6.0, workers=2, max_rss_mb=1536)
    summary = report["summary"]
    fuzz.print_summary(summary)
    assert summary["cases"] == 200
    assert set(summary["per_target"]) == set(fuzz.TARGETS)
    for target, counts in summary["per_target"].items():
        assert counts["ok"] + counts["clean"] > 0, target
    failures = {o: summary["totals"][o] for o in fuzz.FAILURES}
    assert failures == dict.fromkeys(fuzz.FAILURES, 0), summary["failure_classes"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.make_seeds(tmp_path_factory.mktemp("seeds"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp"])
def test_an_image_claiming_100000_pixels_square_is_refused_before_decoding(seeds, tmp_path, suffix):
    from lipsync.media import probe, read_image

    data = seeds[f"image{suffix}"].read_bytes()
    if suffix == ".png":
        data = fuzz._put(fuzz._put(data, 16, ">I", 100_000), 20, ">I", 100_000)
        data = fuzz._put(data, 29, ">I", zlib.crc32(data[12:29]))
    elif suffix == ".jpg":
        p = data.find(b"\xff\xc0")
        data = fuzz._put(fuzz._put(data, p + 5, ">H", 20_000), p + 7, ">H", 20_000)
    elif suffix == ".bmp":
        data = fuzz._put(fuzz._put(data, 18, "<i", 100_000), 22, "<i", 100_000)
    elif data[12:16] == b"VP8 ":
        data = fuzz._put(fuzz._put(data, 26, "<H", 16383), 28, "<H", 16383)
    else:  # VP8L: 14 bits each of width - 1 and height - 1
        keep = struct.unpack("<I", data[21:25])[0] & 0xF0000000
        data = fuzz._put(data, 21, "<I", 16383 | 16383 << 14 | keep)
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(data)
    before = _rss_mb()
    for reader in (read_image, probe):
        with pytest.raises(MediaTooLargeError,
                           match=rf"^{path}: claims an image of \d+ x \d+ pixels, over the limit of 64 Mpx"):
            reader(str(path))
    assert _rss_mb() - before < 100


def test_the_pixel_limit_is_configurable(seeds, monkeypatch):
    from lipsync.media import read_image

    monkeypatch.setenv("LIPSYNC_MAX_PIXELS", "1000")  # the seed image is 64 x 48
    with pytest.raises(MediaTooLargeError, match="64 x 48 pixels, over the limit of 0.001 Mpx"):
        read_image(str(seeds["image.png"]))


def test_a_stream_claiming_ten_hours_is_refused(seeds, tmp_path):
    from lipsync.media import iter_frames, load_audio, probe

    mkv = seeds["video.mkv"].read_bytes()
    p = mkv.find(b"\x44\x89\x88")  # Segment Duration, an 8-byte float of milliseconds
    path = tmp_path / "long.mkv"
    path.write_bytes(fuzz._put(mkv, p + 3, ">d", 36e6))
    for reader in (probe, lambda p: list(iter_frames(p)), load_audio):
        with pytest.raises(MediaTooLargeError,
                           match=rf"^{path}: claims a duration of 10\.0 hours, over the limit of 4 hours"):
            reader(str(path))


def test_a_wav_claiming_ten_hours_is_read_for_what_it_holds(seeds, tmp_path):
    """FFmpeg bounds a WAV's data chunk by the file: the claim allocates nothing."""
    from lipsync.media import load_audio, probe

    wav = bytearray(seeds["audio.wav"].read_bytes())
    # 8 kHz 8-bit mono whose data chunk claims ten hours of bytes.
    for offset, fmt, value in ((24, "<I", 8000), (28, "<I", 8000), (32, "<H", 1), (34, "<H", 8)):
        struct.pack_into(fmt, wav, offset, value)
    struct.pack_into("<I", wav, wav.find(b"data") + 4, 8000 * 36000)
    path = tmp_path / "long.wav"
    path.write_bytes(bytes(wav))
    assert probe(str(path)).duration < 2
    assert len(load_audio(str(path))) < 2 * 16000


def test_a_video_stream_without_a_decoder_is_a_clear_error(seeds, tmp_path):
    """PyAV gives such a stream no codec context: probe used to raise AttributeError ('width')."""
    from lipsync.errors import UnsupportedFormatError
    from lipsync.media import iter_frames, probe

    path = tmp_path / "unknown.mp4"
    path.write_bytes(seeds["video.mp4"].read_bytes().replace(b"avc1", b"xvc1"))
    info = probe(str(path))  # the audio track is still usable
    assert info.video is None and info.audio is not None
    with pytest.raises(UnsupportedFormatError, match=rf"^{path}: its video stream is in a codec that cannot be"):
        list(iter_frames(str(path)))


def test_an_audio_stream_without_a_decoder_is_a_clear_error(seeds, tmp_path):
    """A WAV claiming 65535 bits per sample: probe used to raise AttributeError ('sample_rate')."""
    from lipsync.errors import UnsupportedFormatError
    from lipsync.media import load_audio, probe

    wav = bytearray(seeds["audio.wav"].read_bytes())
    struct.pack_into("<H", wav, 34, 65535)
    path = tmp_path / "bits.wav"
    path.write_bytes(bytes(wav))
    for reader in (probe, load_audio):
        with pytest.raises(UnsupportedFormatError, match=rf"^{path}: its audio stream is in a codec that cannot be"):
            reader(str(path))


def test_tags_that_are_not_utf8_do_not_break_opening(seeds, tmp_path):
    """A Matroska title in Latin-1: opening used to raise UnicodeDecodeError."""
    from lipsync.media import probe

    mkv = seeds["video.mkv"].read_bytes()
    path = tmp_path / "latin1.mkv"
    path.write_bytes(mkv.replace(b"Lavf", b"\xe9\xe8\xae\xff"))  # the ENCODER tags among others
    assert probe(str(path)).video is not None
