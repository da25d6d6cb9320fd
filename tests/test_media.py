"""Media I/O on local files: probing, decoding at a constant rate, audio, writing, typed errors."""

from __future__ import annotations

import math
import os
import struct
import tracemalloc
from fractions import Fraction

import cv2
import numpy as np
import pytest
import soundfile

from lipsync.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    NoAudioStreamError,
    NoVideoStreamError,
    UnsupportedFormatError,
)
from lipsync.media import (
    VideoWriter,
    atomic_output,
    encode_video,
    is_image_path,
    is_remote,
    iter_frames,
    load_audio,
    load_audio_native,
    local_input,
    probe,
    read_bytes,
    read_frame_range,
    read_image,
    sample_frames,
    save_wav,
    storage_options,
    write_bytes,
)

# Must match the tolerance iter_frames gives coarse timestamps (lipsync.media.video._EPSILON).
EPSILON = Fraction(1, 1000)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def expected_source(times: list[Fraction], t: Fraction) -> int:
    """Index of the latest source frame presented at or before ``t`` (+ epsilon)."""
    return max(j for j, start in enumerate(times) if start <= t + EPSILON)


# ---------------------------------------------------------------- URIs and atomic output


def test_is_remote_and_storage_options(monkeypatch):
    assert is_remote("s3://bucket/key.mp4")
    assert is_remote("gs://bucket/key.mp4")
    assert not is_remote("/tmp/a.mp4")
    assert not is_remote("relative/a.mp4")
    assert not is_remote("file:///tmp/a.mp4")
    assert not is_remote(r"C:\videos\a.mp4")

    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    assert storage_options() == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert storage_options() == {
        "client_kwargs": {"endpoint_url": "http://s3-only:9000", "region_name": "eu-west-1"}
    }


def test_local_input_and_bytes_helpers(tmp_path):
    target = tmp_path / "deep" / "dir" / "meta.json"
    write_bytes(str(target), b'{"ok": true}')
    assert read_bytes(str(target)) == b'{"ok": true}'
    assert read_bytes(f"file://{target}") == b'{"ok": true}'
    with local_input(f"file://{target}") as path:
        assert path == str(target)
    assert sorted(os.listdir(target.parent)) == ["meta.json"]
    with pytest.raises(MediaNotFoundError, match="missing.json"):
        read_bytes(str(tmp_path / "missing.json"))
    with pytest.raises(MediaNotFoundError, match="missing.mp4"):
        with local_input(str(tmp_path / "missing.mp4")):
            pass


def test_atomic_output_removes_temp_on_error_and_keeps_old_file(tmp_path):
    final = tmp_path / "out.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(str(final)) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".bin")
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("boom")
    assert final.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_stale_partials_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    from lipsync.media import uri

    final = tmp_path / "clip.mp4"
    ctx = uri.atomic_output(str(final))
    partial = ctx.__enter__()  # a writer killed before it finished: its temporary file stays
    keep = ["clip.mp4.txt", ".clip.notrandom.partial.mp4", ".other.0123456789ab.partial.mp4"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    assert os.path.exists(partial)
    uri.remove_stale_partials(str(final))
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    uri.remove_stale_partials("s3://bucket/clip.mp4")  # remote outputs never leave partials


def test_join_exists_and_list_files(tmp_path):
    from lipsync.errors import MediaNotFoundError
    from lipsync.media import uri

    assert uri.join("s3://b/out/", "x", "y.json") == "s3://b/out/x/y.json"
    assert uri.join(str(tmp_path), "a", "b.txt") == os.path.join(str(tmp_path), "a", "b.txt")
    (tmp_path / "b.txt").write_text("1")
    (tmp_path / "sub").mkdir()
    assert uri.exists(str(tmp_path / "b.txt")) and uri.exists(f"file://{tmp_path}/b.txt")
    assert not uri.exists(str(tmp_path / "nope"))
    assert uri.list_files(str(tmp_path)) == [str(tmp_path / "b.txt")]
    with pytest.raises(MediaNotFoundError, match="no such folder"):
        uri.list_files(str(tmp_path / "nope"))


# ---------------------------------------------------------------- round trip through the writer


def test_round_trip_video_and_audio(tmp_path, media_kit):
    out = tmp_path / "round.mp4"
    audio = media_kit.sine(2.0, 44100)[0]
    with VideoWriter(str(out), fps=25, audio=audio, audio_rate=44100) as writer:
        for i in range(50):
            writer.write(media_kit.pattern_frame(i))
    assert writer.frames_written == 50
    assert os.listdir(tmp_path) == ["round.mp4"]

    data = out.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat"), "faststart: the index must precede the media"

    info = probe(str(out))
    assert not info.is_image and info.path == str(out)
    assert info.video.fps == pytest.approx(25.0)
    assert info.video.num_frames == 50
    assert (info.video.width, info.video.height, info.video.rotation) == (128, 72, 0)
    assert info.video.codec == "h264" and info.video.variable_frame_rate is False
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.audio.codec == "aac" and info.audio.sample_rate == 44100 and info.audio.channels == 1
    assert info.audio.duration == pytest.approx(2.0, abs=0.03)
    assert abs(info.audio.start_time - info.video.start_time) < 1 / 25

    frames = list(iter_frames(str(out), fps=25))
    assert [f.index for f in frames] == list(range(50))
    assert [media_kit.read_frame_number(f.image) for f in frames] == list(range(50))
    assert frames[10].time == pytest.approx(0.4)
    image = frames[0].image
    assert image.dtype == np.uint8 and image.shape == (72, 128, 3) and image.flags.c_contiguous
    assert np.abs(image.astype(int) - media_kit.pattern_frame(0)).mean() < 3  # RGB order, colours

    samples = load_audio(str(out), sample_rate=16000)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(32000, abs=160)
    assert np.abs(samples).max() <= 1.0
    assert dominant_frequency(samples, 16000) == pytest.approx(440, abs=3)


def test_encode_video_accepts_frames_of_iter_frames(tmp_path, clip_with_audio, media_kit):
    out = tmp_path / "copy.mkv"
    count = encode_video(str(out), iter_frames(clip_with_audio, max_frames=10), fps=25, preset="ultrafast")
    assert count == 10
    numbers = [media_kit.read_frame_number(f.image) for f in iter_frames(str(out))]
    assert numbers == list(range(10))


# ---------------------------------------------------------------- frame-rate conversion


@pytest.mark.parametrize(
    "source_fps, count",
    [
        (30, 61),  # ~2 s, not a whole number of output frames
        (Fraction(30000, 1001), 61),
        (24, 49),
        (60, 121),
        (25, 51),
        # The last source frame starts after output 25 but the clip ends before output 25.5:
        # round(1.015 s * 25) = 25 frames, not 26.
        (200, 203),
    ],
)
def test_constant_rate_conversion_to_25(tmp_path, media_kit, source_fps, count):
    source_fps = Fraction(source_fps)
    path = media_kit.write_video(tmp_path / "src.mp4", count, source_fps)
    times = [j / source_fps for j in range(count)]
    duration = count / source_fps

    frames = list(iter_frames(path, fps=25))
    assert len(frames) == math.floor(duration * 25 + Fraction(1, 2))
    got = [media_kit.read_frame_number(f.image) for f in frames]
    want = [expected_source(times, Fraction(k, 25)) for k in range(len(frames))]
    assert got == want
    assert [f.index for f in frames] == list(range(len(frames)))


def test_variable_frame_rate_conversion(tmp_path, media_kit):
    steps = [20, 40, 33, 60, 47, 13, 80]  # ms between frames, irregular on purpose
    pts = [0]
    for i in range(44):
        pts.append(pts[-1] + steps[i % len(steps)])
    path = media_kit.write_video(tmp_path / "vfr.mp4", len(pts), 25, pts_ms=pts)
    info = probe(path)
    assert info.video.variable_frame_rate is True

    frames = list(iter_frames(path, fps=25))
    times = [Fraction(p, 1000) for p in pts]
    assert len(frames) == math.floor(info.video.duration * 25 + 0.5)
    assert frames[-1].time >= float(times[-1]) - 1 / 25, "the tail must not be dropped"
    got = [media_kit.read_frame_number(f.image) for f in frames]
    assert got == [expected_source(times, Fraction(k, 25)) for k in range(len(frames))]

    native = list(iter_frames(path, fps=None))
    assert [media_kit.read_frame_number(f.image) for f in native] == list(range(len(pts)))
    assert [round(f.time * 1000) for f in native] == pts


def test_cfr_file_is_not_reported_variable(tmp_path, media_kit):
    path = media_kit.write_video(tmp_path / "ntsc.mp4", 40, Fraction(30000, 1001))
    video = probe(path).video
    assert video.variable_frame_rate is False
    assert video.fps == pytest.approx(29.97, abs=0.01)


def test_container_without_duration(tmp_path, media_kit):
    # Browsers record WebM live: no duration in the header, so probe measures packets.
    path = media_kit.write_video(
        tmp_path / "recorded.webm", 30, 25, codec="libvpx", container_options={"live": "1"}
    )
    info = probe(path)
    assert info.duration == pytest.approx(1.2, abs=0.05)
    assert info.video.num_frames == 30 and info.video.codec == "vp8"
    frames = list(iter_frames(path, fps=25))
    assert [media_kit.read_frame_number(f.image) for f in frames] == list(range(30))


def test_max_frames_and_repeated_frames_are_independent(clip_with_audio):
    frames = list(iter_frames(clip_with_audio, fps=50, max_frames=6))
    assert len(frames) == 6
    # At 50 fps every source frame is shown twice; drawing on one copy must not touch the other.
    frames[0].image[:] = 0
    assert frames[1].image.any()


# ---------------------------------------------------------------- rotation, stills, odd sizes


@pytest.mark.parametrize(
    "rotation, container, legacy_tag",
    [(90, "mp4", False), (180, "mp4", False), (270, "mp4", False), (90, "mkv", False), (270, "mkv", True)],
)
def test_rotation_metadata_gives_upright_frames(tmp_path, media_kit, rotation, container, legacy_tag):
    path = media_kit.write_video(
        tmp_path / f"rot.{container}", 5, 25, rotation=rotation, legacy_rotate_tag=legacy_tag
    )
    info = probe(path).video
    assert info.rotation == rotation
    assert (info.width, info.height) == (128, 72)

    frames = list(iter_frames(path))
    assert len(frames) == 5
    for i, frame in enumerate(frames):
        assert frame.image.shape == (72, 128, 3) and frame.image.flags.c_contiguous
        assert media_kit.read_frame_number(frame.image) == i
    assert np.abs(frames[0].image.astype(int) - media_kit.pattern_frame(0)).mean() < 3


def _jpeg_with_exif_orientation(image_bgr: np.ndarray, orientation: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr)
    assert ok
    jpeg = encoded.tobytes()
    # Minimal little-endian TIFF block with a single Orientation (0x0112) entry.
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + tiff + struct.pack("<I", 0)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_still_images(tmp_path, media_kit):
    rgb = media_kit.pattern_frame(5)
    png = tmp_path / "face.png"
    cv2.imwrite(str(png), rgb[:, :, ::-1])
    assert is_image_path(str(png)) and is_image_path("s3://b/x.JPEG") and not is_image_path("x.mp4")

    info = probe(str(png))
    assert info.is_image and info.audio is None
    assert (info.video.width, info.video.height, info.video.num_frames) == (128, 72, 1)
    assert np.array_equal(read_image(str(png)), rgb)
    frames = list(iter_frames(str(png), fps=25))
    assert len(frames) == 1 and frames[0].index == 0 and np.array_equal(frames[0].image, rgb)

    # EXIF orientation 6: stored landscape, shown turned 90 degrees clockwise.
    marked = np.zeros((40, 80, 3), np.uint8)
    marked[:10, :20] = (0, 0, 255)  # red (BGR) in the stored top-left corner
    jpg = tmp_path / "phone.jpg"
    jpg.write_bytes(_jpeg_with_exif_orientation(marked, 6))
    upright = read_image(str(jpg))
    assert upright.shape == (80, 40, 3)
    assert upright[:20, -10:, 0].mean() > 200 and upright[-20:, :10, 0].mean() < 50


def test_odd_sizes_are_padded_by_one_edge_pixel(tmp_path, media_kit):
    frames = [media_kit.pattern_frame(i, 73, 129) for i in range(5)]
    out = tmp_path / "odd.mp4"
    assert encode_video(str(out), frames, fps=25) == 5
    info = probe(str(out)).video
    assert (info.width, info.height) == (130, 74)
    decoded = list(iter_frames(str(out)))
    assert len(decoded) == 5
    image = decoded[2].image.astype(int)
    assert image.shape == (74, 130, 3)
    assert np.abs(image[:73, :129] - frames[2]).mean() < 3
    assert np.abs(image[73, :129] - frames[2][72]).mean() < 6  # repeated last row
    assert np.abs(image[:73, 129] - frames[2][:, 128]).mean() < 6  # repeated last column
    assert media_kit.read_frame_number(decoded[2].image) == 2


# ---------------------------------------------------------------- audio


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_load_audio_formats(tmp_path, media_kit, suffix):
    tone = media_kit.sine(1.0, 44100)
    path = str(tmp_path / f"tone.{suffix}")
    if suffix in ("wav", "flac", "ogg"):
        soundfile.write(path, tone[0], 44100)
    else:
        media_kit.write_audio(path, tone, 44100, {"mp3": "libmp3lame", "m4a": "aac"}[suffix])
    info = probe(path)
    assert info.video is None and info.audio.sample_rate == 44100
    samples = load_audio(path, sample_rate=16000)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / 16000 == pytest.approx(1.0, abs=0.06)
    assert np.abs(samples).max() <= 1.0
    assert dominant_frequency(samples, 16000) == pytest.approx(440, abs=3)


def test_load_audio_native_and_save_wav(tmp_path, audio_only):
    samples, rate = load_audio_native(audio_only)
    assert rate == 44100 and samples.dtype == np.float32
    assert samples.shape[0] == 2 and samples.shape[1] == pytest.approx(44100, abs=441)
    assert dominant_frequency(samples[0], rate) == pytest.approx(440, abs=3)
    assert dominant_frequency(samples[1], rate) == pytest.approx(880, abs=3)

    out = tmp_path / "sub" / "copy.wav"
    save_wav(str(out), samples * 4, rate)  # out of range on purpose: must clip, not wrap
    back, back_rate = soundfile.read(str(out), dtype="float32", always_2d=True)
    assert back_rate == 44100 and back.shape == (samples.shape[1], 2)
    assert soundfile.info(str(out)).subtype == "PCM_16"
    loud = np.abs(samples[0]) > 0.05
    assert np.all(np.sign(back[loud, 0]) == np.sign(samples[0][loud])), "wrapped instead of clipped"
    assert back.max() == pytest.approx(1.0, abs=1e-3)

    mono = tmp_path / "mono.wav"
    save_wav(str(mono), samples[0], rate)
    assert soundfile.info(str(mono)).channels == 1
    assert load_audio(str(mono), sample_rate=rate) == pytest.approx(samples[0], abs=1e-3)


# ---------------------------------------------------------------- memory


def _peak_decoding(path: str) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_frames(path, fps=25))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decoding_memory_does_not_grow_with_length(tmp_path, media_kit):
    size = (120, 160)  # 57.6 kB per RGB frame: 57 MB if 40 s were held
    short = media_kit.write_video(tmp_path / "10s.mp4", 250, 25, size=size)
    long = media_kit.write_video(tmp_path / "40s.mp4", 1000, 25, size=size)
    short_count, short_peak = _peak_decoding(short)
    long_count, long_peak = _peak_decoding(long)
    assert (short_count, long_count) == (250, 1000)
    assert long_peak < 4 * 2**20, f"peak {long_peak} bytes for 1000 frames"
    assert long_peak < 1.5 * short_peak + 512 * 2**10, (short_peak, long_peak)


# ---------------------------------------------------------------- typed errors


def _raises(error: type[MediaError], fn, path: str) -> MediaError:
    with pytest.raises(error) as info:
        result = fn(path)
        if not isinstance(result, (np.ndarray, tuple)) and hasattr(result, "__next__"):
            list(result)
    assert os.path.basename(path) in str(info.value), str(info.value)
    return info.value


def _all_readers():
    return [probe, lambda p: iter_frames(p), load_audio]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.mp4")
    for fn in [*_all_readers(), read_image, load_audio_native]:
        _raises(MediaNotFoundError, fn, path)


def test_random_bytes_are_corrupt(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    for fn in _all_readers():
        _raises(CorruptMediaError, fn, str(path))


def test_text_renamed_mp4_is_unsupported(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is a shopping list, not a video\n" * 40)
    for fn in _all_readers():
        _raises(UnsupportedFormatError, fn, str(path))
    image = tmp_path / "notes.png"
    image.write_text("not a picture either\n" * 40)
    _raises(UnsupportedFormatError, read_image, str(image))
    corrupt_png = tmp_path / "broken.png"
    corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _raises(CorruptMediaError, read_image, str(corrupt_png))


@pytest.mark.parametrize("faststart", [True, False])
def test_truncated_mp4_is_corrupt(tmp_path, media_kit, faststart):
    full = media_kit.write_video(tmp_path / "full.mp4", 50, 25, faststart=faststart)
    data = open(full, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    _raises(CorruptMediaError, lambda p: iter_frames(p), str(cut))


def test_truncated_mkv_is_corrupt(tmp_path, media_kit):
    """Matroska states each stream's length only in a DURATION tag; a cut file decodes without an
    error, so that tag is what shows it short. An uncut one reads whole."""
    full = media_kit.write_video(tmp_path / "full.mkv", 60, 25)
    assert sum(1 for _ in iter_frames(full)) == 60
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(open(full, "rb").read()[: int(os.path.getsize(full) * 0.6)])
    with pytest.raises(CorruptMediaError, match=r"cut\.mkv: truncated"):
        for _ in iter_frames(str(cut)):
            pass


def test_empty_and_zero_duration_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for fn in _all_readers():
        _raises(EmptyMediaError, fn, str(empty))
    empty_png = tmp_path / "empty.png"
    empty_png.write_bytes(b"")
    _raises(EmptyMediaError, read_image, str(empty_png))

    import av

    header_only = tmp_path / "no_frames.mp4"
    container = av.open(str(header_only), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    for fn in _all_readers():
        _raises(EmptyMediaError, fn, str(header_only))

    no_samples = tmp_path / "silence.wav"
    soundfile.write(str(no_samples), np.zeros(0, np.float32), 16000)
    _raises(EmptyMediaError, probe, str(no_samples))
    _raises(EmptyMediaError, load_audio, str(no_samples))


def test_wrong_kind_of_stream(silent_clip, audio_only):
    _raises(NoVideoStreamError, lambda p: iter_frames(p), audio_only)
    _raises(NoAudioStreamError, load_audio, silent_clip)
    _raises(NoAudioStreamError, load_audio_native, silent_clip)
    assert probe(silent_clip).audio is None
    assert probe(audio_only).video is None


# ---------------------------------------------------------------- writer failures


def test_writer_leaves_nothing_when_the_block_fails(tmp_path, media_kit):
    out = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="render failed"):
        with VideoWriter(str(out), fps=25, audio=media_kit.sine(2.0, 16000), audio_rate=16000) as writer:
            for i in range(30):
                writer.write(media_kit.pattern_frame(i))
            raise RuntimeError("render failed")
    assert os.listdir(tmp_path) == []

    out.write_bytes(b"previous result")
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(str(out)) as writer:
            writer.write(media_kit.pattern_frame(0))
            writer.write(np.zeros((10, 10, 3), np.uint8))
    assert out.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["fail.mp4"]


def test_writer_with_no_frames_writes_nothing(tmp_path):
    out = tmp_path / "none.mp4"
    with pytest.raises(EmptyMediaError, match="none.mp4"):
        with VideoWriter(str(out)):
            pass
    assert os.listdir(tmp_path) == []


def test_writer_refuses_containers_without_h264(tmp_path, media_kit):
    with pytest.raises(UnsupportedFormatError, match="clip.webm"):
        encode_video(str(tmp_path / "clip.webm"), [media_kit.pattern_frame(0)])
    assert os.listdir(tmp_path) == []


def test_writer_ntsc_rate(tmp_path, media_kit):
    out = str(tmp_path / "ntsc.mp4")
    encode_video(out, [media_kit.pattern_frame(i) for i in range(30)], fps=29.97)
    video = probe(out).video
    assert video.fps == pytest.approx(30000 / 1001, abs=1e-4)
    assert video.duration == pytest.approx(30 * 1001 / 30000, abs=1e-3)


def test_writer_keeps_audio_length_as_given(tmp_path, media_kit):
    out = tmp_path / "long_audio.mp4"
    audio = media_kit.sine(3.0, 48000, channels=2)
    encode_video(str(out), [media_kit.pattern_frame(i) for i in range(25)], fps=25, audio=audio, audio_rate=48000)
    info = probe(str(out))
    assert info.video.num_frames == 25
    assert info.audio.duration == pytest.approx(3.0, abs=0.03) and info.audio.channels == 2
    samples, rate = load_audio_native(str(out))
    assert rate == 48000 and samples.shape[0] == 2
    assert samples.shape[1] == pytest.approx(3 * 48000, abs=480)


def test_sample_frames_seeks_to_the_frame_on_screen(tmp_path, media_kit):
    src = media_kit.write_video(tmp_path / "seek.mp4", 75, fps=25)
    frames = sample_frames(str(src), [0.0, 1.0, 2.5, 2.96])
    assert [media_kit.read_frame_number(f.image) for f in frames] == [0, 25, 62, 74]
    assert [f.index for f in frames] == [0, 25, 62, 74]


@pytest.mark.parametrize("source_fps", [25, 30, 24])
def test_read_frame_range_matches_streaming_decode(tmp_path, media_kit, source_fps):
    src = media_kit.write_video(tmp_path / f"r{source_fps}.mp4", 3 * source_fps, fps=source_fps)
    streamed = [media_kit.read_frame_number(f.image) for f in iter_frames(str(src))]
    for start, stop in [(0, 10), (37, 52), (60, 75), (74, 75)]:
        got = read_frame_range(str(src), start, stop)
        assert [f.index for f in got] == list(range(start, stop))
        want = streamed[start:stop]
        assert [media_kit.read_frame_number(f.image) for f in got] == want
