"""The synthetic talking-head corpus: files, determinism, resumability, and its two quality bars
(MediaPipe finds the face in >= 99% of frames; measured mouth opening tracks the ground-truth jaw
at Pearson r >= 0.9)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync.face import FaceDetector, mouth_opening
from lipsync.media.audio import load_audio
from lipsync.media.probe import probe
from lipsync.media.video import iter_frames
from lipsync.synth.corpus import load_landmarks, load_meta, make_clip, make_corpus


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "clip"
    make_clip(out, seed=3, seconds=4.0, size=256, langs=["en"])
    return out


@pytest.fixture(scope="module")
def measured(clip):
    """Per-frame mouth opening measured by MediaPipe on the rendered video (NaN = no face)."""
    values = []
    with FaceDetector(max_faces=1) as det:
        for frame in iter_frames(clip / "video.mp4"):
            faces = det.detect(frame.image)
            values.append(mouth_opening(faces[0].landmarks) if faces else np.nan)
    return np.array(values)


def test_clip_files_and_metadata(clip):
    meta = load_meta(clip)
    info = probe(clip / "video.mp4")
    assert info.video.width == 256 and info.video.height == 256
    assert abs(info.video.fps - 25) < 1e-6
    assert meta["num_frames"] == 100
    assert abs(info.duration - 4.0) < 0.1
    audio = load_audio(clip / "audio.wav")
    assert len(audio) == 64000 and np.sqrt(np.mean(audio**2)) > 0.01
    for key in ("jaw", "spread", "round", "closure"):
        assert len(meta["mouth"][key]) == 100
    assert len(meta["speech_active"]) == 100 and meta["phonemes"]
    lm = load_landmarks(clip)
    assert lm.shape == (100, 478, 2)
    assert (lm >= 0).all() and (lm < 256).all()
    # Silence at the clip start: the mouth is closed there.
    assert meta["mouth"]["jaw"][0] < 0.05


def test_face_found_in_nearly_every_frame(measured):
    assert np.isfinite(measured).mean() >= 0.99


def test_measured_mouth_opening_tracks_ground_truth_jaw(clip, measured):
    jaw = np.array(load_meta(clip)["mouth"]["jaw"])
    ok = np.isfinite(measured)
    r = np.corrcoef(jaw[ok], measured[ok])[0, 1]
    assert r >= 0.9, f"Pearson r = {r:.3f}"


def test_ground_truth_landmarks_match_what_mediapipe_sees(clip):
    lm = load_landmarks(clip)
    errs = []
    with FaceDetector(max_faces=1) as det:
        for frame in iter_frames(clip / "video.mp4", max_frames=20):
            faces = det.detect(frame.image)
            iod = np.linalg.norm(lm[frame.index, 263] - lm[frame.index, 33])
            errs.append(np.linalg.norm(faces[0].landmarks[:468, :2] - lm[frame.index, :468], axis=1).mean() / iod)
    assert np.median(errs) < 0.08


def test_deterministic_for_a_seed(tmp_path):
    a = make_clip(tmp_path / "a", seed=11, seconds=1.0, size=128)
    b = make_clip(tmp_path / "b", seed=11, seconds=1.0, size=128)
    c = make_clip(tmp_path / "c", seed=12, seconds=1.0, size=128)
    strip = lambda m: {k: v for k, v in m.items() if k != "render_seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
    fa = [f.image for f in iter_frames(tmp_path / "a" / "video.mp4")]
    fb = [f.image for f in iter_frames(tmp_path / "b" / "video.mp4")]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))


def test_corpus_resumes_and_writes_manifest(tmp_path):
    rows = make_corpus(tmp_path, num=2, seconds=1.0, seed=5, size=96)
    assert [r["id"] for r in rows] == ["clip_00000", "clip_00001"]
    first = (tmp_path / "clip_00000" / "meta.json").stat().st_mtime_ns
    # An unfinished clip (no meta.json) is redone; a finished one is left alone.
    (tmp_path / "clip_00001" / "meta.json").unlink()
    make_corpus(tmp_path, num=2, seconds=1.0, seed=5, size=96)
    assert (tmp_path / "clip_00000" / "meta.json").stat().st_mtime_ns == first
    assert (tmp_path / "clip_00001" / "meta.json").exists()
    assert (tmp_path / "manifest.csv").read_text().count("\n") == 3


def test_test_split_uses_held_out_sentences(tmp_path):
    from lipsync.synth.sentences import sentences

    for lang in ("en", "zh", "es"):
        assert not set(sentences(lang, "train")) & set(sentences(lang, "test"))
    meta = make_clip(tmp_path / "t", seed=2, seconds=1.0, size=96, split="test", langs=["en"])
    assert set(meta["text"]) <= set(sentences("en", "test"))
    assert json.loads((tmp_path / "t" / "meta.json").read_text())["split"] == "test"


def test_user_portraits_build_identities_and_bad_ones_are_named(tmp_path):
    import cv2

    from lipsync.errors import MediaNotFoundError, NoFaceError
    from lipsync.synth.identity import MAX_FACE_PX, load_photo, make_identity, photos_in

    faces = tmp_path / "faces"
    faces.mkdir()
    photo = load_photo("bundled:astronaut.jpg")
    # A large photo: identities are scaled so the face is at most MAX_FACE_PX wide.
    cv2.imwrite(str(faces / "big.png"), cv2.cvtColor(cv2.resize(photo, None, fx=3, fy=3), cv2.COLOR_RGB2BGR))
    ident = make_identity(0, photos_in(faces))
    assert ident.name == "big-0"
    assert np.ptp(ident.landmarks[:468, 0]) <= MAX_FACE_PX + 2
    meta = make_clip(tmp_path / "c", seed=1, seconds=1.0, size=128, faces=photos_in(faces))
    assert meta["identity"].startswith("big-")
    cv2.imwrite(str(faces / "wall.jpg"), cv2.cvtColor(photo[320:, 320:], cv2.COLOR_RGB2BGR))
    with pytest.raises(NoFaceError, match="wall.jpg"):
        make_identity(1, photos_in(faces))
    with pytest.raises(MediaNotFoundError, match="empty"):
        (tmp_path / "empty").mkdir()
        photos_in(tmp_path / "empty")
