"""Phoneme timeline -> per-frame mouth parameters (lipsync.synth.visemes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync import tts
from lipsync.synth.visemes import (
    DIPHTHONGS,
    PARAMS,
    VISEMES,
    MouthTrack,
    mouth_track,
    n_frames_for,
    speech_activity,
    viseme_for,
)

FPS = 25.0

SENTENCES = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "Bob bought a map of the moon, but he went home.",
        "She sells sea shells; the weather was beautiful yesterday!",
        "Judge George measured the treasure in the garage.",
    ],
    "zh": [
        "你好，世界。今天天气很好。",
        "我们去公园散步吧，然后一起吃饭。",
        "他喜欢喝绿茶，她喜欢喝咖啡。",
    ],
    "es": [
        "Hola, ¿cómo estás? Muy bien, gracias.",
        "Mañana vamos a la playa con mis amigos y mi familia.",
    ],
    "fr": ["Bonjour, je m'appelle Pierre. Un bon vin blanc."],
    "de": ["Ich möchte ein Stück Kuchen und eine Tasse Kaffee."],
    "ja": ["こんにちは、げんきですか。"],
}


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, tts.Speech]]:
    return [(lang, tts.synthesize(t, lang)) for lang, ts in SENTENCES.items() for t in ts]


def timeline(spec: list[tuple[str, float]], start: float = 0.0) -> list[tuple[str, float, float]]:
    """[(symbol, duration)] -> [(symbol, start, end)]."""
    out, t = [], start
    for sym, dur in spec:
        out.append((sym, t, t + dur))
        t += dur
    return out


def at(track: MouthTrack, t: float, param: str = "jaw") -> float:
    return float(getattr(track, param)[min(int(t * track.fps), track.n_frames - 1)])


def window(track: MouthTrack, a: float, b: float) -> slice:
    times = (np.arange(track.n_frames) + 0.5) / track.fps
    idx = np.nonzero((times >= a) & (times <= b))[0]
    if idx.size == 0:
        idx = np.array([int(np.argmin(np.abs(times - (a + b) / 2)))])
    return slice(int(idx[0]), int(idx[-1]) + 1)


def test_bilabials_close_the_mouth_between_open_vowels():
    ph = timeline([("_", 0.3), ("'A:", 0.18), ("m", 0.09), ("A:", 0.18), ("p", 0.06), ("'A:", 0.18),
                   ("b", 0.07), ("A:", 0.2), ("_", 0.3)])
    tr = mouth_track(ph, 200, fps=100.0)
    for sym, a, b in ph:
        w = window(tr, a - 0.05, b)
        if sym in ("m", "p", "b"):
            assert tr.jaw[w].min() < 0.08, sym
            assert tr.closure[w].max() > 0.85, sym
        elif "A:" in sym:
            mid = window(tr, (a + b) / 2 - 0.005, (a + b) / 2 + 0.005)
            assert tr.jaw[mid].max() > 0.7, sym
            assert tr.closure[mid].max() < 0.15, sym


def test_bilabials_close_in_real_speech(corpus):
    checked = 0
    for _, s in corpus:
        tr = mouth_track(s.phonemes, n_frames_for(s.duration, FPS), FPS)
        for p in s.phonemes:
            if p.symbol.lstrip("',") in ("p", "b", "m"):
                w = window(tr, p.start - 0.05, p.end)
                assert tr.jaw[w].min() < 0.12, (p, s.text)
                assert tr.closure[w].max() > 0.75, (p, s.text)
                checked += 1
    assert checked >= 15


def test_vowel_shapes():
    def shape(sym):
        ph = timeline([("_", 0.3), ("h", 0.06), (sym, 0.25), ("_", 0.3)])
        tr = mouth_track(ph, 100, fps=100.0)
        mid = 0.3 + 0.06 + 0.125
        return {p: at(tr, mid, p) for p in PARAMS}

    aa, ee, oo = shape("'A:"), shape("'i:"), shape("'u:")
    assert aa["jaw"] > 0.85 and abs(aa["spread"]) < 0.2 and aa["round"] < 0.1
    assert ee["spread"] > 0.75 and ee["jaw"] < 0.35 and ee["round"] < 0.1
    assert oo["round"] > 0.85 and oo["spread"] < -0.75 and oo["jaw"] < 0.3
    assert aa["jaw"] > shape("'E")["jaw"] > ee["jaw"]


def test_w_rounds_and_f_shows_teeth():
    ph = timeline([("_", 0.3), ("w", 0.1), ("'E", 0.15), ("f", 0.12), ("'E", 0.15), ("_", 0.3)])
    tr = mouth_track(ph, 120, fps=100.0)
    assert tr.round[window(tr, 0.33, 0.37)].max() > 0.7
    assert tr.spread[window(tr, 0.33, 0.37)].min() < -0.5
    f_mid = window(tr, 0.61, 0.63)
    assert tr.teeth[f_mid].max() > 0.8 and tr.jaw[f_mid].max() < 0.2
    e_mid = window(tr, 0.46, 0.48)
    assert tr.round[e_mid].max() < 0.35 and tr.jaw[e_mid].min() > 0.4


def test_silence_is_closed():
    ph = timeline([("h", 0.06), ("'a", 0.15), ("l", 0.06), ("oU", 0.2), ("_:", 0.35), ("w", 0.08),
                   ("'3:", 0.2), ("l", 0.06), ("d", 0.06)], start=0.5)
    # a second sentence after a gap with no events at all
    ph += timeline([("'aI", 0.2), ("s", 0.1)], start=2.4)
    tr = mouth_track(ph, 100, FPS)  # 4 s, speech ends at 2.7 s
    rest = np.stack([np.abs(getattr(tr, p)) for p in PARAMS])
    assert rest[:, window(tr, 0.0, 0.4)].max() < 0.02  # before the first phoneme
    assert rest[:, window(tr, 2.9, 4.0)].max() < 0.02  # after the last
    assert tr.jaw[window(tr, 1.15, 1.25)].max() < 0.02  # inside the 0.35 s pause
    assert tr.jaw[window(tr, 1.9, 2.2)].max() < 0.02  # inside the gap between sentences
    assert tr.jaw[window(tr, 0.6, 0.9)].max() > 0.4  # but open while speaking
    assert tr.jaw[window(tr, 2.4, 2.55)].max() > 0.4


def test_silence_in_real_speech(corpus):
    for lang, s in corpus:
        n = n_frames_for(s.duration, FPS) + 25  # one second of video past the audio
        tr = mouth_track(s.phonemes, n, FPS)
        assert tr.jaw[-10:].max() < 0.01 and np.abs(tr.spread[-10:]).max() < 0.01
        for p in s.phonemes:
            if p.is_pause and p.duration >= 0.15:
                assert tr.jaw[window(tr, p.start + 0.08, p.end - 0.06)].max() < 0.03, (lang, p)


def test_short_pause_only_dips():
    ph = timeline([("_", 0.3), ("'a", 0.15), ("_|", 0.03), ("'a", 0.15), ("_", 0.3)])
    tr = mouth_track(ph, 100, fps=100.0)
    dip = tr.jaw[window(tr, 0.46, 0.47)].min()
    assert 0.1 < dip < tr.jaw[window(tr, 0.37, 0.39)].max()


def test_tracks_are_smooth(corpus):
    for lang, s in corpus:
        for fps, limit in ((FPS, 0.7), (100.0, 0.3)):
            tr = mouth_track(s.phonemes, n_frames_for(s.duration, fps), fps)
            for p in PARAMS:
                step = np.abs(np.diff(getattr(tr, p)))
                assert step.max() < limit, (lang, fps, p, float(step.max()))
    fast = tts.synthesize(SENTENCES["en"][0], "en", rate=320)
    tr = mouth_track(fast.phonemes, n_frames_for(fast.duration, FPS), FPS)
    assert max(np.abs(np.diff(getattr(tr, p))).max() for p in PARAMS) < 0.8


def test_every_emitted_symbol_maps(corpus):
    symbols = {p.symbol for _, s in corpus for p in s.phonemes}
    assert len(symbols) > 60
    for sym in symbols:
        comps = viseme_for(sym)
        assert 1 <= len(comps) <= 3
        for v in comps:
            assert 0 <= v.jaw <= 1 and -1 <= v.spread <= 1 and 0 <= v.round <= 1
            assert 0 <= v.closure <= 1 and 0 <= v.teeth <= 1
    for lang, s in corpus:
        tr = mouth_track(s.phonemes, n_frames_for(s.duration, FPS), FPS)
        arr = tr.as_array()
        assert np.all(np.isfinite(arr))
        assert arr[:, 0].min() >= 0 and arr[:, 0].max() <= 1
        assert arr[:, 1].min() >= -1 and arr[:, 1].max() <= 1
        assert arr[:, 0].max() > 0.3, lang  # the mouth moves


@pytest.mark.parametrize("symbol", ["", "'", ",", "(en)", "**", ";", "%%", "x9", "ma3", "'a1", "zh4",
                                    "ɐ", "Q\"", "_!", "||", "5", "0~", "3-", "tl#", "iong", "ü"])
def test_unknown_symbols_never_fail(symbol):
    comps = viseme_for(symbol)
    assert comps and all(v.cls in {"vowel", "pause", "marker"} or v.cls for v in comps)
    tr = mouth_track([("h", 0.1, 0.2), (symbol, 0.2, 0.35), ("'a", 0.35, 0.5)], 20, FPS)
    assert np.all(np.isfinite(tr.as_array()))


def test_symbol_normalisation():
    assert viseme_for("'i:") == viseme_for("i:") == viseme_for(",i:")
    assert viseme_for("A:")[0].jaw > 0.9
    assert viseme_for("'a3")[0] == VISEMES["a"]  # tone digit stripped
    assert viseme_for("p#")[0] == VISEMES["p"]
    assert viseme_for("_:")[0].cls == "pause" and viseme_for("_|")[0].cls == "pause"
    assert [v.cls for v in viseme_for("'aI")] == ["vowel", "vowel"]
    assert len(viseme_for("iou")) == 3 and "aI" in DIPHTHONGS
    assert viseme_for("ph")[0].cls == "bilabial" and viseme_for("tS;h")[0].cls == "sibilant"


def test_jaw_follows_the_speech_envelope():
    s = tts.synthesize("Hello world, this is a quick test of the mouth animation for a talking head.", "en")
    n = n_frames_for(s.duration, FPS)
    tr = mouth_track(s.phonemes, n, FPS)
    hop = s.sample_rate / FPS
    rms = np.array([np.sqrt(np.mean(np.square(s.samples[int(i * hop) : int((i + 1) * hop)], dtype=np.float64)))
                    for i in range(n)])
    r = float(np.corrcoef(tr.jaw, rms)[0, 1])
    assert r > 0.4, r


def test_speech_activity(corpus):
    _, s = corpus[0]
    n = n_frames_for(s.duration, FPS) + 10
    act = speech_activity(s.phonemes, n, FPS)
    assert act.dtype == bool and act.shape == (n,)
    assert not act[-5:].any()
    assert 0.5 < act.mean() < 1.0
    for p in s.phonemes:
        mid = int((p.start + p.end) / 2 * FPS)
        if p.is_pause and p.duration >= 0.12:
            assert not act[mid]
        elif p.duration >= 0.1 and not p.is_pause:
            assert act[mid]
    ph = timeline([("_", 0.2), ("'a", 0.4), ("_", 0.4)])
    assert speech_activity(ph, 25, FPS).nonzero()[0].tolist() == list(range(5, 15))


def test_inputs_and_serialisation(corpus):
    _, s = corpus[1]
    n = n_frames_for(s.duration, FPS)
    a = mouth_track(s.phonemes, n, FPS)
    b = mouth_track(tts.timeline_to_json(s.phonemes), n, FPS)
    c = mouth_track([(p.symbol, p.start, p.end) for p in s.phonemes], n, FPS)
    assert np.allclose(a.as_array(), b.as_array(), atol=1e-3)
    assert np.array_equal(a.as_array(), c.as_array())
    assert np.array_equal(a.as_array(), mouth_track(s.phonemes, n, FPS).as_array())  # deterministic
    d = json.loads(json.dumps(a.to_dict()))
    assert d["fps"] == FPS and d["n_frames"] == n and set(PARAMS) <= set(d)
    back = MouthTrack.from_dict(d)
    assert back.n_frames == n and np.allclose(back.as_array(), a.as_array(), atol=1e-4)
    assert all(getattr(a, p).dtype == np.float32 for p in PARAMS)


def test_edge_cases():
    empty = mouth_track([], 10, FPS)
    assert empty.n_frames == 10 and not empty.as_array().any()
    assert mouth_track(timeline([("'a", 0.2)]), 0, FPS).n_frames == 0
    only_pause = mouth_track(timeline([("_:", 1.0)]), 25, FPS)
    assert not only_pause.as_array().any()
    with pytest.raises(ValueError):
        mouth_track([], -1, FPS)
    with pytest.raises(ValueError):
        mouth_track([], 5, 0)
    with pytest.raises(ValueError):
        MouthTrack(fps=25, jaw=np.zeros(3), spread=np.zeros(3), round=np.zeros(2), closure=np.zeros(3),
                   teeth=np.zeros(3))
    assert n_frames_for(1.0, 25) == 25 and n_frames_for(1.01, 25) == 26 and n_frames_for(0, 25) == 0
    # a long timeline stays fast and bounded in memory
    long = timeline([("'a", 0.1), ("p", 0.05), ("i", 0.1), ("_", 0.2)] * 2000)
    tr = mouth_track(long, n_frames_for(long[-1][2], FPS), FPS)
    assert tr.n_frames == 22500 and np.isfinite(tr.jaw).all()
