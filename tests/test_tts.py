"""Offline espeak-ng speech synthesis (lipsync.tts): audio, phoneme timeline, voices, errors,
determinism, threads and fork."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import threading

import numpy as np
import pytest

from lipsync import tts
from lipsync.errors import SpeechError

SR = 16000
VOWEL_START = set("aeiouAEIOUV@3&0yY")

# language -> (text, plausible duration range in seconds at the default rate)
SAMPLES = {
    "en": ("Hello world, this is a test of the speech synthesizer. It works quite well.", (3.0, 8.0)),
    "zh": ("你好，世界。今天天气很好，我们去公园散步吧。", (3.0, 9.0)),
    "es": ("Hola, ¿cómo estás? Mañana vamos a la playa con mis amigos.", (2.5, 7.0)),
    "fr": ("Bonjour, je m'appelle Pierre. Les enfants jouent dans le jardin.", (2.5, 7.0)),
    "de": ("Guten Tag, wie geht es Ihnen? Über den Bergen liegt Schnee.", (2.5, 7.0)),
}


@pytest.fixture(scope="module")
def speeches() -> dict[str, tts.Speech]:
    return {lang: tts.synthesize(text, lang) for lang, (text, _) in SAMPLES.items()}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _is_vowel(symbol: str) -> bool:
    s = symbol.lstrip("',")
    return bool(s) and s[0] in VOWEL_START


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_speech_audio(speeches, lang):
    s = speeches[lang]
    lo, hi = SAMPLES[lang][1]
    assert s.sample_rate == SR
    assert s.samples.dtype == np.float32 and s.samples.ndim == 1
    assert np.all(np.isfinite(s.samples))
    assert float(np.abs(s.samples).max()) <= 1.0
    assert _rms(s.samples) > 0.03, "speech is (nearly) silent"
    assert lo < s.duration < hi, f"{lang}: {s.duration:.2f} s"
    assert s.duration == pytest.approx(len(s.samples) / SR)
    assert s.text == SAMPLES[lang][0]


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_phoneme_timeline(speeches, lang):
    s = speeches[lang]
    ph = s.phonemes
    assert len(ph) > 15
    starts = np.array([p.start for p in ph])
    assert starts[0] >= 0.0
    assert np.all(np.diff(starts) > 0), "start times must increase strictly"
    assert all(p.end > p.start for p in ph)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(ph, ph[1:])), "contiguous"
    assert ph[-1].end <= s.duration + 1e-6
    assert ph[-1].end == pytest.approx(s.duration, abs=0.02)
    assert any(p.is_pause for p in ph), "commas/full stops must give pauses"
    assert sum(_is_vowel(p.symbol) for p in ph) >= 8
    assert not any(p.symbol.startswith("(") for p in ph), "language-switch markers are not sounds"


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_timeline_lines_up_with_audio(speeches, lang):
    """Vowel events sit on loud audio, pause events on (near) silence."""
    s = speeches[lang]
    x, sr = s.samples, s.sample_rate

    def mid_rms(p):
        q = p.duration / 4
        return _rms(x[int((p.start + q) * sr) : int((p.end - q) * sr)])

    vowels = [mid_rms(p) for p in s.phonemes if _is_vowel(p.symbol)]
    pauses = [mid_rms(p) for p in s.phonemes if p.is_pause and p.duration >= 0.03]
    assert vowels and pauses
    assert np.mean(vowels) > 3 * np.mean(pauses)
    assert np.mean(pauses) < 0.01
    assert np.mean(vowels) > 0.05


def test_words_english(speeches):
    words = speeches["en"].words
    assert [w for w, _ in words][:4] == ["Hello", "world", "this", "is"]
    assert [w for w, _ in words][-1] == "well"
    times = [t for _, t in words]
    assert times == sorted(times) and times[0] < 0.1 and times[-1] < speeches["en"].duration


def test_words_chinese(speeches):
    words = [w for w, _ in speeches["zh"].words]
    assert words and "".join(words).startswith("你好")
    assert all("，" not in w and "。" not in w for w in words)


def test_to_json_roundtrip(speeches):
    s = speeches["es"]
    meta = json.loads(json.dumps(s.to_json(), ensure_ascii=False))
    assert meta["lang"] == "es" and meta["voice"] == "default" and meta["sample_rate"] == SR
    assert meta["text"] == s.text and meta["duration"] == pytest.approx(s.duration, abs=1e-4)
    assert meta["engine"].startswith("espeak-ng")
    back = tts.timeline_from_json(meta["phonemes"])
    assert [p.symbol for p in back] == [p.symbol for p in s.phonemes]
    assert np.allclose([p.start for p in back], [p.start for p in s.phonemes], atol=1e-4)
    assert tts.timeline_to_json(s.phonemes) == meta["phonemes"]
    assert set(meta["phonemes"][0]) == {"symbol", "start", "end"}


def test_languages_and_aliases():
    langs = tts.list_languages()
    for code in ("en", "en-us", "en-gb", "zh", "cmn", "zh-cn", "es", "fr", "de", "ja", "ru", "hi"):
        assert code in langs
    assert tts.resolve_language("en") == "en-us"
    assert tts.resolve_language("EN_us") == "en-us"
    assert tts.resolve_language("en-GB") == "en-gb"
    for code in ("zh", "zh-CN", "cmn", "mandarin"):
        assert tts.resolve_language(code) == "cmn"
    assert tts.resolve_language("es") == "es"
    assert tts.resolve_language("fr-CA") == tts.resolve_language("fr")  # base-language fallback
    assert "fo" not in langs, "voices without a bundled dictionary must not be offered"
    voices = tts.list_voices()
    assert any(v.identifier == "sit/cmn" for v in voices)
    variants = tts.list_variants()
    assert {"m1", "f2", "klatt", "whisper"} <= set(variants)


def test_voice_variants_change_output():
    text = "The voice should sound different."
    base = tts.synthesize(text, "en")
    for voice in ("f2", "m3", "klatt"):
        other = tts.synthesize(text, "en", voice=voice)
        assert other.voice == voice
        n = min(len(base.samples), len(other.samples))
        assert not np.allclose(base.samples[:n], other.samples[:n], atol=1e-3), voice
        assert _rms(other.samples) > 0.02
    assert tts.synthesize(text, "en", voice="F2").voice == "f2"  # case-insensitive


def test_rate_and_pitch():
    text = "Speaking faster gives shorter audio for the same sentence."
    slow = tts.synthesize(text, "en", rate=120)
    normal = tts.synthesize(text, "en", rate=175)
    fast = tts.synthesize(text, "en", rate=300)
    assert slow.duration > normal.duration * 1.2
    assert normal.duration > fast.duration * 1.3
    assert fast.phonemes[-1].end <= fast.duration + 1e-6
    low = tts.synthesize(text, "en", pitch=20)
    high = tts.synthesize(text, "en", pitch=80)
    n = min(len(low.samples), len(high.samples))
    assert not np.allclose(low.samples[:n], high.samples[:n], atol=1e-3)
    assert low.duration == pytest.approx(high.duration, rel=0.1)


def test_output_sample_rate():
    a = tts.synthesize("Sample rates.", "en", sample_rate=22050)
    b = tts.synthesize("Sample rates.", "en", sample_rate=8000)
    assert a.sample_rate == 22050 and b.sample_rate == 8000
    assert a.duration == pytest.approx(b.duration, abs=2e-3)
    assert [p.symbol for p in a.phonemes] == [p.symbol for p in b.phonemes]


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_an_error(text):
    with pytest.raises(SpeechError, match="empty"):
        tts.synthesize(text, "es")


def test_unpronounceable_text_is_an_error():
    with pytest.raises(SpeechError, match="no audio"):
        tts.synthesize("...", "en")


def test_unknown_language_is_an_error():
    with pytest.raises(SpeechError) as err:
        tts.synthesize("hello", lang="klingon")
    msg = str(err.value)
    assert "'klingon'" in msg
    for code in ("en", "cmn", "zh", "es", "fr"):
        assert f" {code}," in msg or f" {code}\n" in msg or msg.endswith(f" {code}")


def test_bad_voice_and_parameters_are_errors():
    with pytest.raises(SpeechError, match="nobody.*m1"):
        tts.synthesize("hello", voice="nobody")
    with pytest.raises(SpeechError, match="rate"):
        tts.synthesize("hello", rate=10)
    with pytest.raises(SpeechError, match="pitch"):
        tts.synthesize("hello", pitch=500)
    with pytest.raises(SpeechError, match="string"):
        tts.synthesize(None)  # type: ignore[arg-type]


def _digest(s: tts.Speech) -> str:
    h = hashlib.sha1(s.samples.tobytes())
    h.update(json.dumps(tts.timeline_to_json(s.phonemes)).encode())
    return h.hexdigest()


def test_deterministic_regardless_of_history():
    text = "Determinism matters for reproducible data."
    first = _digest(tts.synthesize(text, "en"))
    tts.synthesize("你好，世界。", "zh")
    tts.synthesize(text, "en", voice="klatt")
    tts.synthesize("Hola, amigos.", "es", rate=250, pitch=80)
    assert _digest(tts.synthesize(text, "en")) == first
    k1 = _digest(tts.synthesize(text, "en", voice="klatt"))
    tts.synthesize(text, "en", voice="klatt4")
    assert _digest(tts.synthesize(text, "en", voice="klatt")) == k1


def test_two_threads():
    jobs = [("Threads share one engine.", "en"), ("Los hilos comparten un motor.", "es")]
    expected = {lang: _digest(tts.synthesize(text, lang)) for text, lang in jobs}
    results: dict[str, list[str]] = {"en": [], "es": []}
    errors: list[BaseException] = []

    def work(text, lang):
        try:
            for _ in range(4):
                results[lang].append(_digest(tts.synthesize(text, lang)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for lang, digests in results.items():
        assert digests == [expected[lang]] * 4


def _child_digest(args) -> str:
    text, lang = args
    return _digest(tts.synthesize(text, lang))


def test_forked_worker():
    job = ("Workers are forked after the engine started.", "en")
    parent = _child_digest(job)  # engine initialised in the parent before the fork
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.map(_child_digest, [job, ("你好", "zh"), job])
    assert got[0] == parent and got[2] == parent
    assert got[1] == _child_digest(("你好", "zh"))
