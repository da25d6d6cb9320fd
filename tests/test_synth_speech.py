"""Recorded speech in the synthetic corpus (``lipsync synth --speech DIR``): the mouth articulated
from the audio itself, in time with it (at most one frame of lead or lag), closed in silences, and
the clip's meta telling recorded clips from espeak ones. All audio is made here: vowel-like
harmonic bursts (a glottal pulse train through formant resonators) separated by silences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import lfilter

from lipsync.errors import LipSyncError
from lipsync.media.audio import load_audio
from lipsync.media.formats import SAMPLE_RATE as SR
from lipsync.synth.corpus import corpus_uses_recording, load_landmarks, load_meta, make_clip, uses_recording
from lipsync.synth.recorded import acoustic_track, levels, pick_offset, recordings_in

FPS = 25.0
HOP = int(SR / FPS)
A = ((750, 80), (1250, 90), (2600, 120))  # "ah"
I = ((290, 60), (2250, 100), (3000, 150))  # "ee"
U = ((320, 60), (850, 80), (2300, 150))  # "oo"


def vowel(seconds: float, formants=A, f0: float = 120.0) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    phase = np.cumsum(np.full(n, f0 / SR) * (1 + 0.03 * np.sin(2 * np.pi * 3 * t)))
    y = np.diff(np.floor(phase), prepend=0.0)
    for f, bw in formants:
        r = np.exp(-np.pi * bw / SR)
        y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], y)
    y /= np.abs(y).max()
    ramp = int(0.02 * SR)
    y[:ramp] *= np.linspace(0, 1, ramp)
    y[-ramp:] *= np.linspace(1, 0, ramp)
    return 0.5 * y


def bursts(pattern, seed: int = 0, formants=A) -> tuple[np.ndarray, np.ndarray]:
    """Audio of (silence s, burst s) pairs plus a little noise, and the per-sample burst indicator."""
    parts, ind = [], []
    for silence, burst in pattern:
        parts += [np.zeros(int(silence * SR)), vowel(burst, formants)]
        ind += [np.zeros(int(silence * SR)), np.ones(int(burst * SR))]
    audio = np.concatenate(parts) + 1e-3 * np.random.default_rng(seed).standard_normal(sum(map(len, parts)))
    return audio.astype(np.float32), np.concatenate(ind)


def frame_envelope(ind: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Share of each video frame covered by a burst."""
    return np.array([ind[start + i * HOP: start + (i + 1) * HOP].mean() for i in range(n)])


def lagged_corr(x: np.ndarray, y: np.ndarray, lag: int) -> float:
    """Pearson r of x[i + lag] with y[i]: lag > 0 means x lags y."""
    if lag > 0:
        x, y = x[lag:], y[:-lag]
    elif lag < 0:
        x, y = x[:lag], y[-lag:]
    return float(np.corrcoef(x, y)[0, 1])


def silent_frames(env: np.ndarray, margin: int = 2) -> np.ndarray:
    """Frames with no burst within ``margin`` frames (the mouth may still close or open there)."""
    quiet = env == 0
    out = quiet.copy()
    for s in range(1, margin + 1):
        out[s:] &= quiet[:-s]
        out[:-s] &= quiet[s:]
    return out


PATTERN = [(0.5, 0.3), (0.4, 0.2), (0.3, 0.4), (0.5, 0.25), (0.35, 0.3), (0.45, 0.3), (0.3, 0.2)]


def test_jaw_follows_the_bursts_without_lead_or_lag():
    audio, ind = bursts(PATTERN)
    n = len(audio) // HOP
    mouth, active = acoustic_track(audio, n, FPS)
    env = frame_envelope(ind, n)
    r = {lag: lagged_corr(mouth.jaw, env, lag) for lag in range(-3, 4)}
    assert r[0] > 0.9, r
    assert r[0] > max(r[-3], r[3]) + 0.2 and r[0] >= max(r.values()) - 1e-9, r
    quiet = silent_frames(env)
    assert quiet.sum() > 20
    assert np.all(mouth.jaw[quiet] < 0.02) and np.all(mouth.closure[quiet] == 0)
    assert mouth.jaw[env == 1].min() > 0.5
    # Voice activity: speech on the bursts, silence between them, one frame of slack at the edges.
    assert np.all(active[env == 1]) and not np.any(active[quiet])


def test_lip_shape_from_formants():
    """"ee" spreads the lips, "oo" rounds them, "ah" opens the jaw widest."""
    shapes = {}
    for name, formants in {"a": A, "i": I, "u": U}.items():
        audio = np.concatenate([np.zeros(SR // 4), vowel(0.5, formants), np.zeros(SR // 4)]).astype(np.float32)
        mouth, _ = acoustic_track(audio, len(audio) // HOP, FPS)
        mid = slice(9, 15)  # well inside the vowel (frames 6..18)
        shapes[name] = {p: float(getattr(mouth, p)[mid].mean()) for p in ("jaw", "spread", "round")}
    assert shapes["i"]["spread"] > 0.6 and shapes["i"]["round"] < 0.05, shapes
    assert shapes["u"]["round"] > 0.6 and shapes["u"]["spread"] < -0.3, shapes
    assert abs(shapes["a"]["spread"]) < 0.4 and shapes["a"]["round"] < 0.2, shapes
    assert shapes["a"]["jaw"] > 1.3 * max(shapes["i"]["jaw"], shapes["u"]["jaw"]), shapes


def test_brief_drop_inside_speech_is_a_closure_not_a_pause():
    gap = np.zeros(int(0.08 * SR))
    audio = np.concatenate([np.zeros(SR // 4), vowel(0.3), gap, vowel(0.3), np.zeros(SR // 4)]).astype(np.float32)
    mouth, active = acoustic_track(audio, len(audio) // HOP, FPS)
    gap_frame = int((0.25 + 0.3 + 0.04) * FPS)
    assert mouth.closure[gap_frame] > 0.5 and mouth.jaw[gap_frame] < 0.5
    assert active[gap_frame]  # still speech: the phonemes of a stop count as speech too
    # No closure at the onsets and offsets of speech (only dips between louder sound count).
    assert mouth.closure[:gap_frame - 3].max() < 0.05 and mouth.closure[gap_frame + 4:].max() < 0.05


def test_segment_skips_the_leading_silence():
    audio, ind = bursts([(2.0, 0.4)] + PATTERN[1:])
    lv = levels(audio)
    for seed in range(5):
        start = pick_offset(audio, 2.0, np.random.default_rng(seed), lv)
        first = int(np.argmax(ind))
        assert first - 0.3 * SR - 1 <= start <= len(audio) - 2 * SR
        assert ind[start:start + 2 * SR].mean() > 0.35
    # A recording shorter than the clip starts at 0 (the rest is padded with silence).
    assert pick_offset(audio[: SR], 2.0, np.random.default_rng(0), lv) == 0


def test_share_of_recorded_clips():
    picks = [uses_recording(s, ("x.wav",), 0.5) for s in range(600)]
    assert 0.43 < np.mean(picks) < 0.57
    assert not any(uses_recording(s, ("x.wav",), 0.0) for s in range(50))
    assert all(uses_recording(s, ("x.wav",), 1.0) for s in range(50))
    assert not any(uses_recording(s, None, 1.0) for s in range(50))
    assert [uses_recording(s, ("x.wav",), 0.5) for s in range(600)] == picks  # stable per seed
    # A corpus holds the share exactly (within one clip) in every prefix, so a small one too.
    for seed in range(5):
        for f in (0.0, 0.25, 0.5, 0.7, 1.0):
            chosen = np.cumsum([corpus_uses_recording(seed, i, f) for i in range(40)])
            assert np.all(np.abs(chosen - f * np.arange(1, 41)) < 1.0 + 1e-9), (seed, f)


@pytest.fixture(scope="module")
def recorded_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speech")
    audio, ind = bursts([(0.9, 0.3)] + PATTERN[1:], seed=1)
    sf.write(folder / "bursts.flac", audio, SR)
    out = tmp_path_factory.mktemp("clip") / "clip"
    make_clip(out, seed=11, seconds=3.0, size=128, speech=recordings_in(folder), speech_fraction=1.0)
    return out, audio, ind


def test_recorded_clip_meta_and_audio(recorded_clip):
    out, audio, _ = recorded_clip
    meta = load_meta(out)
    src = meta["speech"]
    assert src["source"] == "recorded" and src["file"] == "bursts.flac" and "kit" not in src
    assert meta["text"] == [] and meta["phonemes"] == [] and meta["lang"] == "und"
    start = int(round(src["offset"] * SR))
    assert start > 0.6 * SR  # the 0.9 s of leading silence is skipped
    clip_audio = load_audio(out / "audio.wav", SR)
    ref = audio[start:start + len(clip_audio)]
    assert len(clip_audio) == 3 * SR and np.abs(clip_audio - ref).max() < 1e-3


def test_recorded_clip_mouth_in_time_with_the_speech(recorded_clip):
    out, _, ind = recorded_clip
    meta = load_meta(out)
    lm = load_landmarks(out)
    n = meta["num_frames"]
    iod = np.linalg.norm(lm[:, 263] - lm[:, 33], axis=1)
    opening = np.linalg.norm(lm[:, 14] - lm[:, 13], axis=1) / iod  # inner-lip gap of the render
    env = frame_envelope(ind, n, int(round(meta["speech"]["offset"] * SR)))
    r = {lag: lagged_corr(opening, env, lag) for lag in range(-3, 4)}
    assert r[0] > 0.85 and r[0] > max(r[-3], r[3]) + 0.2, r
    assert max(r, key=r.get) in (-1, 0, 1), r
    quiet = silent_frames(env)
    assert quiet.sum() > 10 and opening[quiet].max() < 0.02  # closed in the silences
    assert opening[env == 1].min() > 0.1
    # The landmarks are the rendered mouth of the meta's parameters.
    assert np.corrcoef(opening, meta["mouth"]["jaw"])[0, 1] > 0.95
    active = np.asarray(meta["speech_active"], bool)
    assert np.all(active[env == 1]) and not np.any(active[quiet])


def test_cli_speech_folder(tmp_path):
    from lipsync.cli import main

    folder = tmp_path / "speech"
    folder.mkdir()
    audio, _ = bursts(PATTERN)
    sf.write(folder / "a.wav", audio, SR)
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--num", "2", "--seconds", "1", "--size", "96",
                 "--speech", str(folder), "--speech_fraction", "1"]) == 0
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "speech" and all(r.endswith(",recorded") for r in rows[1:])
    assert main(["synth", "--out", str(out), "--speech", str(folder), "--speech_fraction", "1.5"]) != 0
    assert main(["synth", "--out", str(out), "--speech", str(tmp_path / "nowhere")]) != 0


def test_heldout_kit_recording_refused_for_training(tmp_path):
    """A file named like a held-out faces-kit recording (matched by name, as --link names them)."""
    path = tmp_path / "anitalker__english_female.flac"
    sf.write(path, bursts(PATTERN)[0], SR)
    with pytest.raises(LipSyncError, match="held-out"):
        make_clip(tmp_path / "c", seed=1, seconds=1.0, size=96, speech=(str(path),), speech_fraction=1.0)


def test_old_meta_reads_as_espeak(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"version": 1, "lang": "en"}))
    assert load_meta(tmp_path)["speech"] == {"source": "espeak"}
