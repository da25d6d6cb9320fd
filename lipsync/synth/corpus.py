"""Synthetic talking-head clips with known ground truth.

Each clip: TTS speech of random sentences (language, voice, rate, pauses), per-frame mouth
parameters from the phoneme timeline, and frames rendered by articulating a photographed face.
Written per clip directory: ``video.mp4`` (H.264 + AAC), ``audio.wav`` (16 kHz), ``landmarks.npz``
(per-frame 478 x 2 ground-truth mesh landmarks) and ``meta.json`` (everything else), the last
being the completion record: a directory without it is unfinished and is redone.

With ``speech`` (recordings, ``lipsync synth --speech DIR``) a share ``speech_fraction`` of the
clips take a segment of a real recording instead of espeak; their mouth is articulated from the
audio itself (:mod:`lipsync.synth.recorded`). ``meta["speech"]["source"]`` is ``"recorded"`` (with
the file, offset and faces-kit provenance) or ``"espeak"``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lipsync.media.audio import save_wav
from lipsync.media.formats import SAMPLE_RATE
from lipsync.media.uri import write_bytes
from lipsync.media.writer import VideoWriter
from lipsync.tts import PhonemeEvent, list_variants, synthesize, timeline_to_json

from .identity import make_identity
from .recorded import recorded_speech
from .render import ClipRenderer, MotionTrack, blink_track
from .sentences import pick_language, sentences
from .visemes import mouth_track, speech_activity

META_VERSION = 2  # 2: meta["speech"] (source "espeak" or "recorded"); load_meta fills it for 1
# Variants that sound natural enough; others in the wheel are novelty voices.
VOICES = ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4", None)


def _speech_for(rng: np.random.Generator, lang: str, seconds: float, split: str):
    """Concatenate sentences with pauses until the clip is (about) filled; times in seconds."""
    bank = sentences(lang, split)
    variants = set(list_variants())
    voice = str(rng.choice([v for v in VOICES if v is None or v in variants] or [None]))
    voice = None if voice == "None" else voice
    rate = int(rng.integers(135, 195))
    pitch = int(rng.integers(35, 70))
    t = float(rng.uniform(0.15, 0.5))
    chunks = [np.zeros(int(t * SAMPLE_RATE), np.float32)]
    phonemes: list[PhonemeEvent] = []
    texts: list[str] = []
    order = rng.permutation(len(bank))
    for k in order:
        if t > seconds - 0.6 or len(texts) >= 4:
            break
        speech = synthesize(bank[k], lang=lang, voice=voice, rate=rate, pitch=pitch, sample_rate=SAMPLE_RATE)
        texts.append(bank[k])
        phonemes += [dataclasses.replace(p, start=p.start + t, end=p.end + t) for p in speech.phonemes]
        chunks.append(speech.samples.astype(np.float32))
        t += speech.duration
        gap = float(rng.uniform(0.2, 0.7))
        chunks.append(np.zeros(int(gap * SAMPLE_RATE), np.float32))
        t += gap
    audio = np.concatenate(chunks)
    n = int(round(seconds * SAMPLE_RATE))
    audio = np.pad(audio, (0, max(0, n - len(audio))))[:n]
    phonemes = [dataclasses.replace(p, end=min(p.end, seconds)) for p in phonemes if p.start < seconds]
    return audio, phonemes, texts, {"voice": voice or "default", "rate": rate, "pitch": pitch}


def make_clip(out_dir: str | os.PathLike, seed: int, seconds: float = 4.0, size: int | tuple[int, int] = 256,
              fps: float = 25.0, split: str = "train", langs: list[str] | None = None,
              identity: int | None = None, faces: tuple[str, ...] | None = None,
              speech: tuple[str, ...] | None = None, speech_fraction: float = 0.5) -> dict:
    """Render one clip into ``out_dir`` (created); returns its metadata. Deterministic for ``seed``.

    ``faces``: portrait files to build identities from (default: the bundled portrait).
    ``speech``: recordings; with them a share ``speech_fraction`` of the clips (drawn per seed)
    speak a segment of one of them instead of espeak.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng([int(seed), 20261130])
    lang = pick_language(rng, langs)
    ident_seed = int(rng.integers(0, 1000)) if identity is None else int(identity)
    n = int(round(seconds * fps))
    if uses_recording(seed, speech, speech_fraction):
        # Its own stream, so the espeak clips of a mixed corpus are those of a pure espeak one.
        rec = recorded_speech(np.random.default_rng([int(seed), 20261130, 1]), tuple(speech), seconds, n,
                              fps, split)
        audio, phonemes, texts, mouth, active = rec.audio, [], [], rec.mouth, rec.active
        lang = (rec.info.get("kit") or {}).get("language", "").rstrip("?") or "und"
        voice = {"voice": "recorded", "rate": None, "pitch": None}
        source = rec.info
    else:
        audio, phonemes, texts, voice = _speech_for(rng, lang, seconds, split)
        mouth = mouth_track(phonemes, n, fps)
        active = speech_activity(phonemes, n, fps)
        source = {"source": "espeak"}
    style = {"jaw": float(rng.uniform(0.85, 1.15)), "spread": float(rng.uniform(0.7, 1.2)),
             "round": float(rng.uniform(0.8, 1.2))}
    jaw = np.clip(mouth.jaw * style["jaw"], 0, 1.1)
    spread = np.clip(mouth.spread * style["spread"], -1, 1)
    rnd = np.clip(mouth.round * style["round"], 0, 1)
    closure = np.clip(mouth.closure, 0, 1)
    blink = blink_track(rng, n, fps)
    motion = MotionTrack.random(rng, n, fps, amount=float(rng.uniform(0.5, 1.2)))
    renderer = ClipRenderer(make_identity(ident_seed, tuple(faces) if faces else None), (w, h), rng)
    landmarks = np.zeros((n, 478, 2), np.float32)
    t0 = time.perf_counter()
    with VideoWriter(str(out / "video.mp4"), fps=fps, audio=audio, audio_rate=SAMPLE_RATE) as writer:
        for i in range(n):
            frame, lm = renderer.render(jaw[i], spread[i], rnd[i], closure[i], blink[i], motion.roll[i],
                                        motion.dx[i], motion.dy[i], motion.scale[i], motion.gain[i],
                                        motion.light_dir[i], motion.light_amp)
            landmarks[i] = lm
            writer.write(frame)
    save_wav(str(out / "audio.wav"), audio, SAMPLE_RATE)
    buf = io.BytesIO()
    np.savez_compressed(buf, landmarks=landmarks)
    write_bytes(str(out / "landmarks.npz"), buf.getvalue())
    meta = {
        "version": META_VERSION,
        "seed": int(seed),
        "fps": fps,
        "num_frames": n,
        "seconds": seconds,
        "width": w,
        "height": h,
        "sample_rate": SAMPLE_RATE,
        "split": split,
        "lang": lang,
        "text": texts,
        **voice,
        "identity": renderer.identity.name,
        "render_seconds": round(time.perf_counter() - t0, 3),
        "phonemes": timeline_to_json(phonemes),
        "speech": source,
        "speech_active": np.asarray(active).astype(int).tolist(),
        "mouth": {"jaw": _r(jaw), "spread": _r(spread), "round": _r(rnd), "closure": _r(closure)},
        "blink": _r(blink),
        "head": {"roll_deg": _r(motion.roll), "dx": _r(motion.dx), "dy": _r(motion.dy),
                 "scale": _r(motion.scale)},
        "files": {"video": "video.mp4", "audio": "audio.wav", "landmarks": "landmarks.npz"},
    }
    write_bytes(str(out / "meta.json"), json.dumps(meta, ensure_ascii=False).encode())
    return meta


def _r(x) -> list[float]:
    return [round(float(v), 4) for v in np.asarray(x)]


def uses_recording(seed: int, speech, fraction: float) -> bool:
    """Whether clip ``seed`` speaks a recording, for :func:`make_clip` called alone (a draw of its
    own, so the choice is stable); :func:`make_corpus` decides by :func:`corpus_uses_recording`."""
    if not speech or fraction <= 0:
        return False
    return bool(np.random.default_rng([int(seed), 20261130, 2]).random() < float(fraction))


def corpus_uses_recording(seed: int, index: int, fraction: float) -> bool:
    """Whether clip ``index`` of a corpus speaks a recording: spread evenly, so every first k clips
    hold round(k * fraction) recorded ones (+-1) and extending a corpus keeps its earlier choices."""
    f = min(max(float(fraction), 0.0), 1.0)
    u = float(np.random.default_rng([int(seed), 20261130, 3]).random())
    return int(np.floor((index + 1) * f + u)) > int(np.floor(index * f + u))


def clip_seed(seed: int, index: int) -> int:
    return int(np.random.default_rng([int(seed), int(index), 17]).integers(0, 2**31 - 1))


def load_meta(clip_dir: str | os.PathLike) -> dict:
    """A clip's meta.json; clips from before recorded speech (version 1) get ``speech: espeak``."""
    meta = json.loads(Path(clip_dir, "meta.json").read_text())
    meta.setdefault("speech", {"source": "espeak"})
    return meta


def load_landmarks(clip_dir: str | os.PathLike) -> np.ndarray:
    with np.load(Path(clip_dir, "landmarks.npz")) as z:
        return z["landmarks"]


def _one(args) -> tuple[str, float]:
    path, seed, kwargs = args
    t0 = time.perf_counter()
    if Path(path, "meta.json").exists():
        return str(path), 0.0
    if Path(path).exists():
        shutil.rmtree(path)  # an unfinished clip from an interrupted run
    make_clip(path, seed, **kwargs)
    return str(path), time.perf_counter() - t0


def make_corpus(out: str | os.PathLike, num: int, seconds: float = 4.0, seed: int = 0, jobs: int = 1,
                progress=None, **kwargs) -> list[dict]:
    """Render ``num`` clips into ``out/clip_NNNNN``; finished clips are kept (reruns resume)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(out / f"clip_{i:05d}", clip_seed(seed, i), dict(seconds=seconds, **kwargs)) for i in range(num)]
    if kwargs.get("speech"):
        for i, (_, _, kw) in enumerate(tasks):
            kw["speech_fraction"] = 1.0 if corpus_uses_recording(seed, i, kwargs.get("speech_fraction", 0.5)) else 0.0
    if jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            for path, dt in pool.map(_one, tasks):
                if progress:
                    progress(path, dt)
    else:
        for task in tasks:
            path, dt = _one(task)
            if progress:
                progress(path, dt)
    rows = []
    for path, seed_i, _ in tasks:
        meta = load_meta(path)
        rows.append({"id": path.name, "video": str(path / "video.mp4"), "audio": str(path / "audio.wav"),
                     "lang": meta["lang"], "seconds": meta["seconds"], "split": meta["split"],
                     "identity": meta["identity"], "text": " ".join(meta["text"]),
                     "speech": meta["speech"]["source"]})
    text = io.StringIO()
    wr = csv.DictWriter(text, fieldnames=list(rows[0]))
    wr.writeheader()
    wr.writerows(rows)
    write_bytes(str(out / "manifest.csv"), text.getvalue().encode("utf-8"))
    return rows
