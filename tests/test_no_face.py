"""Frames without a face pass through untouched: decode -> track -> (align, paste back) -> encode,
the path every later stage follows."""

from __future__ import annotations

import numpy as np

from face_helpers import load_astronaut, paste_face, psnr, textured_background
from lipsync.face import FaceDetector, estimate_alignment, lower_face_mask, paste_back, track_video, warp_to_crop
from lipsync.media import VideoWriter, iter_frames


def _process(frames, size=128):
    """Align each tracked face, 'regenerate' it unchanged, paste it back; keep no-face frames as is."""
    with FaceDetector() as det:
        for frame, face in track_video(frames, det):
            if face is None:
                yield frame.image, False
                continue
            M = estimate_alignment(face.smoothed_landmarks, size)
            crop = warp_to_crop(frame.image, M, size)
            yield paste_back(frame.image, crop, M, lower_face_mask(size)), True


def _write(path, images):
    with VideoWriter(str(path), fps=25, preset="ultrafast") as w:
        for img in images:
            w.write(img)


def test_video_without_any_face_passes_through_unchanged(tmp_path):
    src = tmp_path / "noface.mp4"
    _write(src, [np.roll(textured_background(180, 320, seed=3), 4 * i, axis=1) for i in range(20)])
    decoded = [f.image.copy() for f in iter_frames(src)]
    out = list(_process(iter_frames(src)))
    assert len(out) == 20 and not any(has for _, has in out)
    assert all(np.array_equal(a, b) for a, (b, _) in zip(decoded, out))
    _write(tmp_path / "out.mp4", (img for img, _ in out))
    assert sum(1 for _ in iter_frames(tmp_path / "out.mp4")) == 20


def test_face_missing_mid_clip_only_those_frames_untouched(tmp_path):
    photo = load_astronaut()
    images = []
    for i in range(24):
        img = textured_background(360, 640, seed=5)
        if not 8 <= i < 14:  # the face leaves the shot for six frames
            paste_face(img, photo, face_width=120, center=(300 + 2 * i, 180))
        images.append(img)
    src = tmp_path / "gap.mp4"
    _write(src, images)
    decoded = [f.image.copy() for f in iter_frames(src)]
    out = list(_process(iter_frames(src)))
    flags = [has for _, has in out]
    assert flags == [not 8 <= i < 14 for i in range(24)]
    for i, (img, has) in enumerate(out):
        if has:
            assert psnr(img, decoded[i]) >= 35
        else:
            assert np.array_equal(img, decoded[i])


# -- the no_face policy of whole videos (generate, the batch stages) and the input limits ----------

import pytest  # noqa: E402

from lipsync.errors import MediaTooLargeError, NoFaceError  # noqa: E402
from lipsync.media import load_audio, probe, save_wav  # noqa: E402
from lipsync.options import GenerateOptions  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """A shot with nobody in it (20 frames, 0.8 s) and 1.2 s of speech (30 frames: the shot loops)."""
    root = tmp_path_factory.mktemp("noface")
    with VideoWriter(str(root / "empty.mp4"), fps=25) as w:  # (ultrafast's blocks can look like a face)
        for i in range(20):
            w.write(np.roll(textured_background(96, 128, seed=2), 3 * i, axis=1))
    t = np.arange(int(1.2 * 16000)) / 16000
    save_wav(str(root / "speech.wav"), (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    return root


def _pingpong(frames, n):
    period = 2 * (len(frames) - 1)
    return [frames[min(i % period, period - i % period)] for i in range(n)]


def _assert_passed_through(out, src, n):
    """``out``: the source frames (ping-pong looped to ``n``), untouched but for one more encode."""
    got = [f.image for f in iter_frames(out)]
    want = _pingpong([f.image for f in iter_frames(src)], n)
    assert len(got) == n
    assert max(np.abs(g.astype(int) - w.astype(int)).mean() for g, w in zip(got, want)) < 3.0
    assert abs(probe(out).audio.duration - n / 25) < 0.06


def test_generate_no_face_error_by_default_passthrough_on_request(pipe, shot, tmp_path):
    out = tmp_path / "out.mp4"
    opts = GenerateOptions(num_steps=1)
    with pytest.raises(NoFaceError, match="empty.mp4: no face found in any frame.*--no_face passthrough"):
        pipe(str(out), video=str(shot / "empty.mp4"), audio=str(shot / "speech.wav"), options=opts)
    assert not out.exists() and not list(tmp_path.glob(".*"))  # nothing half-written either
    opts = GenerateOptions(num_steps=1, no_face="passthrough")
    res = pipe(str(out), video=str(shot / "empty.mp4"), audio=str(shot / "speech.wav"), options=opts)
    assert (res.frames, res.frames_with_face) == (30, 0)
    assert any(n.startswith("no_face:") for n in res.notes) and any("looped" in n for n in res.notes)
    _assert_passed_through(out, shot / "empty.mp4", 30)
    speech = load_audio(str(shot / "speech.wav"))
    assert abs(len(load_audio(str(out))) - len(speech)) < 0.05 * 16000


def test_batch_stages_pass_a_shot_without_faces_through(pipe, shot, tmp_path):
    """Batch dubbing's default: the shot with the new speech, status no_face, a completion record
    (a rerun skips it); with no_face=error the video fails instead."""
    from lipsync.pipeline.batch import PrepareVideo, VideoPlan, completed, finish_video
    from lipsync.pipeline.manifest import DubTask

    task = DubTask("empty", str(tmp_path / "empty.mp4"), video=str(shot / "empty.mp4"),
                   audio=str(shot / "speech.wav"), options=GenerateOptions(num_steps=1))
    items = list(PrepareVideo(pipe.setup)(task))
    assert len(items) == 1 and isinstance(items[0], VideoPlan)
    plan = items[0]
    assert plan.no_face and plan.n_shards == 0 and plan.frames_with_face == 0
    res = finish_video(plan, [], str(tmp_path))
    assert (res.status, res.frames, res.frames_with_face) == ("no_face", 30, 0) and "no_face:" in res.notes
    _assert_passed_through(tmp_path / "empty.mp4", shot / "empty.mp4", 30)
    again = completed(str(tmp_path), task)
    assert again.status == "skipped" and again.frames_with_face == 0 and "no_face:" in again.notes
    strict = DubTask("strict", str(tmp_path / "strict.mp4"), video=str(shot / "empty.mp4"),
                     audio=str(shot / "speech.wav"), options=GenerateOptions(num_steps=1, no_face="error"))
    with pytest.raises(NoFaceError, match="no face found"):
        list(PrepareVideo(pipe.setup)(strict))


def test_generate_input_limits_refuse_from_the_header(shot, tmp_path, monkeypatch, capsys):
    from lipsync.cli import main

    # The flags set the limits of lipsync.media.limits for the process (restored after the test).
    monkeypatch.setenv("LIPSYNC_MAX_PIXELS", "64000000")
    monkeypatch.setenv("LIPSYNC_MAX_MEDIA_SECONDS", "14400")
    out = tmp_path / "o.mp4"
    base = ["generate", "--video_path", str(shot / "empty.mp4"), "--audio_path", str(shot / "speech.wav"),
            "--output_path", str(out), "--num_steps", "1", "--no_face", "passthrough"]
    assert main(base + ["--max_pixels", "10000"]) == 1  # 128 x 96 = 12288 pixels
    err = capsys.readouterr().err
    assert "empty.mp4: claims frames of 128 x 96 pixels, over the limit of 0.01 Mpx" in err, err
    assert main(base + ["--max_seconds", "1"]) == 1  # the speech is 1.2 s
    err = capsys.readouterr().err
    assert "speech.wav" in err and "limit" in err, err
    assert not out.exists()
    assert main(base + ["--max_seconds", "5", "--max_pixels", "20000"]) == 0 and out.exists()
    with pytest.raises(SystemExit):
        main(base + ["--max_seconds", "-3"])
    assert "must be a positive number" in capsys.readouterr().err
    assert MediaTooLargeError.__mro__[1].__name__ == "MediaError"  # the API answers it with 422
