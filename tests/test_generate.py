"""End to end: `LipSyncPipeline` / `lipsync generate` with the tiny profile on synthetic clips.

The tiny weights may be random here (the mechanics are what these tests prove): output length
follows the speech, the face region is regenerated and pasted back, everything else is unchanged,
frames without a face pass through, and bad input fails cleanly without leaving an output.
"""

from __future__ import annotations


import numpy as np
import torch
import pytest

from face_helpers import load_astronaut, paste_face, textured_background
from lipsync.errors import CorruptMediaError, NoFaceError
from lipsync.media import VideoWriter, iter_frames, load_audio, probe, save_wav
from lipsync.pipeline import GenerateOptions
from lipsync.synth.corpus import load_landmarks, make_clip

FAST = GenerateOptions(num_steps=2)  # the bundled student samples 4; 2 still regenerates (mechanics, not quality)


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    make_clip(root / "a", seed=21, seconds=1.6, size=192, langs=["en"])
    make_clip(root / "b", seed=22, seconds=2.2, size=160, langs=["es"])
    return root


def frames_of(path):
    return [f.image for f in iter_frames(path)]


def reencoded(frames, tmp_path):
    """The frames after one more trip through the encoder: the codec noise any output carries."""
    path = tmp_path / "baseline.mp4"
    with VideoWriter(str(path), fps=25) as w:
        for f in frames:
            w.write(f)
    return frames_of(path)


def absdiff(a, b):
    return np.abs(a.astype(int) - b.astype(int)).mean(2)


def face_box(lm, pad=0.25):
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    w, h = x1 - x0, y1 - y0
    return int(x0 - pad * w), int(y0 - pad * h), int(x1 + pad * w), int(y1 + pad * h)


def test_output_follows_the_speech_and_only_the_face_changes(pipe, clips, tmp_path):
    out = tmp_path / "out.mp4"
    # Video A (1.6 s) driven by B's speech (2.2 s): the video loops, the output is as long as the speech.
    res = pipe(str(out), video=str(clips / "a" / "video.mp4"), audio=str(clips / "b" / "audio.wav"), options=FAST)
    info = probe(out)
    assert (info.video.width, info.video.height) == (192, 192)
    assert info.video.fps == pytest.approx(25.0)
    assert res.frames == 55 and res.frames_with_face == 55
    assert abs(info.duration - 2.2) <= 0.04 + 1e-6
    assert info.audio is not None and abs(info.audio.duration - 2.2) < 0.05
    speech = load_audio(clips / "b" / "audio.wav")
    got = load_audio(out)[: len(speech)]
    assert np.corrcoef(speech[: len(got)], got)[0, 1] > 0.9  # the driving speech is what plays
    src, gen = frames_of(clips / "a" / "video.mp4"), frames_of(out)
    base = reencoded(src, tmp_path)
    lm = load_landmarks(clips / "a")
    assert len(gen) == 55
    mouth_diffs = []
    for j in (3, 20, 39):
        x0, y0, x1, y1 = face_box(lm[j])
        outside = np.ones(src[j].shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        diff = absdiff(src[j], gen[j])
        # Outside the face: nothing but the codec noise of one more encode.
        assert diff[outside].mean() <= 1.15 * absdiff(src[j], base[j])[outside].mean() + 0.2
        mouth = lm[j][[13, 14, 61, 291]].mean(0).astype(int)
        mouth_diffs.append(diff[mouth[1] - 3: mouth[1] + 4, mouth[0] - 3: mouth[0] + 4].mean())
    # Regenerated: the mouth differs from the source's by more than the codec's noise in every frame,
    # by much more on average (a closed mouth where both speeches are quiet stays close: 5.3 at frame 3).
    assert min(mouth_diffs) > 3.0 and np.mean(mouth_diffs) > 8.0, mouth_diffs
    # The looped part plays the clip backwards: output 41 shows source frame 37 (= 2 * 39 - 41).
    upper = slice(0, int(lm[37][:, 1].min()))
    assert absdiff(gen[41][upper], src[37][upper]).mean() <= 1.15 * absdiff(base[37][upper], src[37][upper]).mean() + 0.2


def test_same_seed_same_output(pipe, clips, tmp_path):
    a, b = tmp_path / "1.mp4", tmp_path / "2.mp4"
    for p in (a, b):
        pipe(str(p), video=str(clips / "a" / "video.mp4"), audio=str(clips / "a" / "audio.wav"), options=FAST)
    assert all(np.array_equal(x, y) for x, y in zip(frames_of(a), frames_of(b)))


def test_composite_option_overrides_the_profile(pipe, clips, tmp_path):
    """`--composite`: the profile's mode when not given (person_warp for the bundled model), another
    paste when asked; only the face differs between them."""
    video, audio = str(clips / "a" / "video.mp4"), str(clips / "a" / "audio.wav")
    out = {}
    for mode in (None, "person_warp", "latentsync"):
        path = tmp_path / f"{mode}.mp4"
        pipe(str(path), video=video, audio=audio, options=GenerateOptions(num_steps=2, composite=mode))
        out[mode] = frames_of(path)
    assert all(np.array_equal(x, y) for x, y in zip(out[None], out["person_warp"]))
    lm = load_landmarks(clips / "a")
    j = 20
    x0, y0, x1, y1 = face_box(lm[j])
    face = np.zeros(out["latentsync"][j].shape[:2], bool)
    face[max(y0, 0):y1, max(x0, 0):x1] = True
    diff = absdiff(out["person_warp"][j], out["latentsync"][j])
    assert diff[face].mean() > 4 * diff[~face].mean() and diff[face].mean() > 1.0


def test_frames_without_a_face_pass_through_untouched(pipe, tmp_path):
    photo = load_astronaut()
    images = []
    for i in range(30):
        img = textured_background(240, 320, seed=9)
        if not 10 <= i < 17:
            paste_face(img, photo, face_width=110, center=(160, 110))
        images.append(img)
    src = tmp_path / "gap.mp4"
    with VideoWriter(str(src), fps=25) as w:
        for img in images:
            w.write(img)
    wav = tmp_path / "s.wav"
    t = np.arange(int(1.2 * 16000)) / 16000
    save_wav(str(wav), (0.3 * np.sin(2 * np.pi * 180 * t) * (t % 0.3 < 0.15)).astype(np.float32), 16000)
    out = tmp_path / "out.mp4"
    res = pipe(str(out), video=str(src), audio=str(wav), options=FAST)
    assert res.frames == 30 and res.frames_with_face == 23
    before, after = frames_of(src), frames_of(out)
    base = reencoded(before, tmp_path)
    for i in range(10, 17):
        assert absdiff(before[i], after[i]).mean() <= 1.15 * absdiff(before[i], base[i]).mean() + 0.2
    assert absdiff(before[5], after[5]).max() > 20


def test_image_mode_and_text_mode(pipe, tmp_path):
    import cv2

    img = textured_background(200, 200, seed=4)
    paste_face(img, load_astronaut(), face_width=90, center=(100, 95))
    still = tmp_path / "face.png"
    cv2.imwrite(str(still), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "talk.mp4"
    res = pipe(str(out), image=str(still), text="Hello there.", lang="en", options=FAST)
    info = probe(out)
    assert (info.video.width, info.video.height) == (200, 200)
    assert res.frames == round(info.audio.duration * 25) or abs(res.frames - info.audio.duration * 25) <= 1
    frames = frames_of(out)
    assert len(frames) == res.frames
    # Outside the face the still image is reproduced in every frame.
    assert absdiff(frames[-1][:30], img[:30]).mean() <= 1.15 * absdiff(reencoded([img], tmp_path)[0][:30], img[:30]).mean() + 0.3


def test_bad_inputs_fail_cleanly_and_write_nothing(pipe, clips, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 100)
    out = tmp_path / "o.mp4"
    with pytest.raises(CorruptMediaError, match="broken.mp4"):
        pipe(str(out), video=str(bad), audio=str(clips / "a" / "audio.wav"), options=FAST)
    assert not out.exists()
    noface = tmp_path / "noface.mp4"
    with VideoWriter(str(noface), fps=25) as w:
        for i in range(20):
            w.write(np.roll(textured_background(120, 160, seed=2), i, axis=1))
    with pytest.raises(NoFaceError, match="noface.mp4"):
        pipe(str(out), video=str(noface), audio=str(clips / "a" / "audio.wav"), options=FAST)
    assert not out.exists() and not list(tmp_path.glob(".*o.mp4*"))


def test_choose_the_face_to_dub(pipe, tmp_path):
    photo = load_astronaut()
    base = textured_background(240, 480, seed=11)
    paste_face(base, photo, face_width=130, center=(130, 120))
    paste_face(base, photo, face_width=80, center=(360, 120))
    src = tmp_path / "two.mp4"
    with VideoWriter(str(src), fps=25) as w:
        for _ in range(16):
            w.write(base)
    wav = tmp_path / "s.wav"
    save_wav(str(wav), (0.2 * np.sin(np.arange(10240) / 9)).astype(np.float32), 16000)
    for face, changed, kept in ((0, slice(60, 200), slice(300, 420)), (1, slice(300, 420), slice(60, 200))):
        out = tmp_path / f"f{face}.mp4"
        pipe(str(out), video=str(src), audio=str(wav), options=GenerateOptions(num_steps=2, face=face))
        d = absdiff(frames_of(out)[8], base)
        noise = absdiff(reencoded([base], tmp_path)[0], base)
        assert d[:, changed].max() > 30 and d[:, kept].mean() <= 1.15 * noise[:, kept].mean() + 0.2


def test_silence_gating_feeds_silence_tokens_where_nobody_speaks(pipe, clips):
    from lipsync.pipeline.inputs import load_driving_audio, voice_activity
    from lipsync.pipeline.windows import Window

    driving = load_driving_audio(str(clips / "a" / "audio.wav"))
    feats = pipe.encode_audio(driving)
    active = voice_activity(driving.samples, driving.num_frames)
    assert not active[:3].all() and active.any()  # synthetic clips start with a pause
    w = Window(0, 16)
    plain = pipe.audio_tokens(feats, w, None)
    gated = pipe.audio_tokens(feats, w, ~active)
    for k in range(16):
        if active[k]:
            assert torch.equal(gated[k], plain[k])
        else:
            assert torch.equal(gated[k], pipe.silence_tokens())
