"""Recorded speech for the synthetic corpus: mouth parameters derived from the audio itself.

espeak clips get their articulation from the phoneme timeline (:mod:`lipsync.synth.visemes`); a
real recording has none, so here the same parameters (``jaw``, ``spread``, ``round``,
``closure``, ``teeth``; see :data:`lipsync.synth.visemes.PARAMS`) are estimated from acoustics on
a 200 Hz grid (25 ms Hann windows every 5 ms, each centred on its grid time, so no feature leads or
lags the sound) and sampled at the centre of each video frame, as :func:`visemes.mouth_track` does:

* speech / silence: energy in the 200-4000 Hz band against the recording's own level, with the
  threshold of the pipeline's voice activity (:func:`lipsync.pipeline.inputs.voice_activity`:
  35% of the way from the quiet floor, 10th percentile in dB, to the loud level, 90th), but on the
  5 ms grid instead of per video frame; gaps shorter than :data:`BRIDGE_S` inside speech are
  closures, not pauses, and islands shorter than :data:`MIN_ISLAND_S` are clicks;
* ``jaw``: the smoothed loudness above that threshold, weighted by voicing (low-band share of the
  energy: fricatives barely open the jaw) and by the first formant (open vowels have a high F1);
* ``spread`` / ``round``: from the second formant of voiced frames (front vowels such as "ee"
  have a high F2, rounded back vowels such as "oo" a low one); LPC formants, with the ratio of
  2-4 kHz to 0.3-1.2 kHz energy where LPC finds none;
* ``closure``: dips of the full-band level (so a fricative, loud above 4 kHz, is no dip) of more
  than :data:`DIP_DB` below the louder sound on both sides within 120 ms, inside speech (stop and
  nasal closures; bilabials cannot be told from other stops by this, so every such closure presses
  the lips, scaled by its depth);
* silence: the rest pose (all parameters 0, mouth closed) after a short release, opening shortly
  before speech resumes (the release and onset times of the viseme model).

Everything is deterministic; callers add per-speaker variety and pick the segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d, median_filter

from lipsync.media.formats import SAMPLE_RATE

from .visemes import MouthTrack

__all__ = ["AUDIO_SUFFIXES", "Levels", "RecordedSpeech", "acoustic_track", "kit_entry", "levels",
           "load_recording", "pick_offset", "recorded_speech", "recordings_in", "speech_grid"]

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")
HOP_S = 0.005  # the 200 Hz grid of the viseme model
WIN_S = 0.025
BAND = (200.0, 4000.0)  # speech band for loudness and voice activity
VOICED_BAND = (80.0, 1000.0)
THRESHOLD = 0.35  # voice activity: this far from the floor (10th pct) to the loud level (90th), dB
ABS_FLOOR_DB = -55.0  # quieter than this is never speech (dBFS, as the pipeline's VAD)
BRIDGE_S = 0.18  # a silent gap shorter than this inside speech is a closure, not a pause
MIN_ISLAND_S = 0.03
ONSET_S = 0.05  # the mouth starts opening this long before speech (viseme model: _ONSET)
RELEASE_S = 0.06  # and is closed this long after it (viseme model: _RELEASE)
DIP_DB = 10.0  # closures: dips this far below the local peak start pressing the lips
SMOOTH_S = {"jaw": 0.015, "spread": 0.03, "round": 0.03, "closure": 0.008, "teeth": 0.02}


@dataclass(frozen=True)
class Levels:
    """A recording's level statistics (dBFS of the speech band on the grid)."""

    floor: float  # 10th percentile
    loud: float  # 90th percentile
    peak: float  # 99th percentile: loudness 1

    @property
    def threshold(self) -> float:
        if self.loud - self.floor < 6.0:  # no dynamics: all speech or all silence
            return ABS_FLOOR_DB if self.loud > -45.0 else self.loud + 1.0
        return max(self.floor + THRESHOLD * (self.loud - self.floor), ABS_FLOOR_DB)


def _frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(n_grid, win) windows centred on k * HOP_S (zero-padded at the ends)."""
    hop = int(round(HOP_S * sample_rate))
    win = int(round(WIN_S * sample_rate))
    n = int(np.ceil(len(samples) / hop)) if len(samples) else 0
    padded = np.pad(np.asarray(samples, np.float64), (win // 2, win + hop * n))
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return padded[idx]


def _band_power(spec: np.ndarray, freqs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    sel = (freqs >= band[0]) & (freqs < band[1])
    return spec[:, sel].sum(1)


@dataclass
class _Features:
    db: np.ndarray  # speech-band level per grid step, dBFS
    db_all: np.ndarray  # full-band level (60 Hz - Nyquist): fricatives keep it up, closures do not
    voiced: np.ndarray  # 0..1 low-band share of the energy
    tilt: np.ndarray  # log ratio of 2-4 kHz to 0.3-1.2 kHz energy
    frames: np.ndarray = field(repr=False)


def _features(samples: np.ndarray, sample_rate: int, keep_frames: bool = False) -> _Features:
    frames = _frames(samples, sample_rate)
    win = frames.shape[1]
    window = np.hanning(win)
    nfft = 1 << int(np.ceil(np.log2(win)))
    spec = np.abs(np.fft.rfft(frames * window, nfft, axis=1)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    norm = (window ** 2).sum() * nfft / 2  # mean square: a full-scale sine reads -3 dB, as RMS dBFS
    band = _band_power(spec, freqs, BAND) / norm
    total = _band_power(spec, freqs, (60.0, sample_rate / 2)) + 1e-12
    voiced = _band_power(spec, freqs, VOICED_BAND) / total
    hi = _band_power(spec, freqs, (2000.0, 4000.0)) + 1e-12
    lo = _band_power(spec, freqs, (300.0, 1200.0)) + 1e-12
    return _Features(db=10 * np.log10(band + 1e-12), db_all=10 * np.log10(total / norm + 1e-12),
                     voiced=voiced, tilt=np.log10(hi / lo),
                     frames=frames if keep_frames else np.zeros((0, win)))


def levels(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Levels:
    """Level statistics of a whole recording (thresholds are set against the file, not the clip)."""
    db = _features(samples, sample_rate).db
    if db.size == 0:
        return Levels(-120.0, -120.0, -120.0)
    db = np.maximum(db, -100.0)
    return Levels(*(float(np.percentile(db, q)) for q in (10, 90, 99)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the True runs."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def speech_grid(db: np.ndarray, lv: Levels) -> tuple[np.ndarray, np.ndarray]:
    """(active, speech) on the grid: ``active`` where the band level is above the threshold (clicks
    removed), ``speech`` the same with the short gaps between active runs bridged (closures)."""
    active = db > lv.threshold
    for a, b in _runs(active):
        if (b - a) * HOP_S < MIN_ISLAND_S:
            active[a:b] = False
    speech = active.copy()
    runs = _runs(active)
    for (_, b0), (a1, _) in zip(runs, runs[1:]):
        if (a1 - b0) * HOP_S < BRIDGE_S:
            speech[b0:a1] = True
    return active, speech


def _lpc(x: np.ndarray, order: int) -> np.ndarray:
    """LPC polynomials (rows ``[1, a1, .., a_order]``) of windowed frames: autocorrelation method,
    Levinson-Durbin recursion vectorised over the frames."""
    nfft = 1 << int(np.ceil(np.log2(2 * x.shape[1])))
    r = np.fft.irfft(np.abs(np.fft.rfft(x, nfft, axis=1)) ** 2, nfft, axis=1)[:, : order + 1]
    r[:, 0] *= 1.0 + 1e-9  # white-noise correction keeps the recursion stable
    a = np.zeros((len(x), order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        acc = np.einsum("nj,nj->n", a[:, :i], r[:, i:0:-1])
        k = -acc / np.maximum(err, 1e-30)
        a[:, 1:i + 1] = a[:, 1:i + 1] + k[:, None] * a[:, i - 1::-1][:, :i]
        err = err * (1.0 - k ** 2)
    return a


def _formants(frames: np.ndarray, sample_rate: int, order: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(F1, F2) in Hz per frame by LPC root-finding on 8 kHz-equivalent frames; NaN where none."""
    n = len(frames)
    f1 = np.full(n, np.nan)
    f2 = np.full(n, np.nan)
    if n == 0:
        return f1, f2
    # Decimate by 2 (formants of interest < 3.5 kHz): average pairs after a pre-emphasis.
    x = frames[:, 1:] - 0.63 * frames[:, :-1]
    rate = sample_rate
    if sample_rate >= 14000:
        m = x.shape[1] // 2 * 2
        x = 0.5 * (x[:, 0:m:2] + x[:, 1:m:2])
        rate = sample_rate / 2
    x = x * np.hamming(x.shape[1])
    ok = np.sum(x ** 2, axis=1) > 1e-10
    if not ok.any():
        return f1, f2
    coefs = _lpc(x[ok].astype(np.float64), order)
    for j, a in zip(np.flatnonzero(ok), coefs):
        if not np.all(np.isfinite(a)):
            continue
        roots = np.roots(a)
        roots = roots[np.imag(roots) > 0.01]
        freq = np.angle(roots) * rate / (2 * np.pi)
        bw = -np.log(np.abs(roots) + 1e-12) * rate / np.pi
        cand = np.sort(freq[(freq > 200) & (bw < 500)])
        first = cand[(cand > 200) & (cand < 1100)]
        if len(first):
            f1[j] = first[0]
            second = cand[(cand > max(first[0] + 150, 600)) & (cand < 3200)]
            if len(second):
                f2[j] = second[0]
    return f1, f2


def _fill(x: np.ndarray, default: float) -> np.ndarray:
    """NaNs replaced by linear interpolation between known values (``default`` when none)."""
    good = np.isfinite(x)
    if not good.any():
        return np.full_like(x, default)
    idx = np.arange(len(x))
    return np.interp(idx, idx[good], x[good])


def _dilate(mask: np.ndarray, before: int, after: int) -> np.ndarray:
    out = mask.copy()
    for s in range(1, after + 1):
        out[s:] |= mask[:-s]
    for s in range(1, before + 1):
        out[:-s] |= mask[s:]
    return out


def acoustic_track(samples: np.ndarray, n_frames: int, fps: float = 25.0, sample_rate: int = SAMPLE_RATE,
                   lv: Levels | None = None) -> tuple[MouthTrack, np.ndarray]:
    """Per-frame mouth parameters of a recording and per-frame speech activity (bool).

    ``samples``: mono float32 at ``sample_rate`` starting at the clip's first frame; ``lv``: the
    level statistics of the whole recording the samples were cut from (default: of ``samples``).
    Frame ``i`` is evaluated at ``(i + 0.5) / fps``, as :func:`visemes.mouth_track` does.
    """
    n = int(n_frames)
    samples = np.asarray(samples, np.float32)
    lv = lv or levels(samples, sample_rate)
    feats = _features(samples, sample_rate, keep_frames=True)
    g = len(feats.db)
    active, speech = speech_grid(feats.db, lv)
    mask = _dilate(speech, int(round(ONSET_S / HOP_S)), int(round(RELEASE_S / HOP_S)))
    thr = lv.threshold
    top = max(lv.peak, thr + 6.0)
    # Loudness above the voice-activity threshold, 0..1, lightly smoothed against pitch ripple.
    loud = np.clip((gaussian_filter1d(feats.db, 1.5) - thr) / (top - thr), 0.0, 1.0) ** 0.8
    voicing = np.clip((feats.voiced - 0.15) / 0.45, 0.0, 1.0)
    vowel = active & (voicing > 0.5) & (loud > 0.15)
    f1, f2 = _formants(feats.frames[vowel], sample_rate) if vowel.any() else (np.zeros(0), np.zeros(0))
    F1 = np.full(g, np.nan)
    F2 = np.full(g, np.nan)
    F1[vowel], F2[vowel] = f1, f2
    # LPC picks are noisy frame to frame: median over 35 ms of voiced frames, then fill the rest.
    F1 = _fill(median_filter(_fill(F1, 500.0), 7, mode="nearest"), 500.0)
    f2_tilt = 1500.0 + 900.0 * np.clip(feats.tilt + 0.6, -1.0, 1.0)  # fallback F2 from the tilt
    F2 = np.where(np.isfinite(F2), F2, np.where(vowel, f2_tilt, np.nan))
    F2 = _fill(median_filter(_fill(F2, 1500.0), 9, mode="nearest"), 1500.0)
    open_f1 = np.clip((F1 - 280.0) / (750.0 - 280.0), 0.0, 1.0)
    jaw = loud * (0.35 + 0.65 * voicing) * (0.3 + 0.75 * open_f1)
    jaw = np.where(mask, jaw, 0.0)
    # Lip shape follows F2 only where there is voice; towards silence it relaxes to neutral.
    weight = gaussian_filter1d((vowel & mask).astype(float), 6.0)
    spread = np.clip((F2 - 1450.0) / 800.0, -1.0, 1.0)
    round_ = np.clip((1250.0 - F2) / 450.0, 0.0, 1.0)
    spread = np.where(spread < 0, 0.8 * spread, spread) * weight
    round_ = round_ * weight
    # Closures: energy dips inside speech, relative to the local peak (+-120 ms).
    # A dip needs louder sound on both sides: the rise of an onset and the fall of an offset are no
    # closures.
    win = int(round(0.12 / HOP_S))
    smooth_db = gaussian_filter1d(feats.db_all, 1.0)
    before = maximum_filter1d(smooth_db, win + 1, mode="nearest", origin=win // 2)
    after = maximum_filter1d(smooth_db, win + 1, mode="nearest", origin=-(win // 2))
    peak = np.minimum(before, after)
    dip = np.clip((peak - smooth_db - DIP_DB) / 8.0, 0.0, 1.0)
    closure = np.where(speech & (peak > thr + 6.0), dip, 0.0)
    teeth = np.clip(0.6 * (1 - voicing) * loud * 2, 0, 0.6) * mask + 0.3 * np.clip(spread, 0, 1)
    values = {"jaw": jaw, "spread": spread, "round": round_, "closure": closure, "teeth": teeth}
    times = (np.arange(n, dtype=np.float64) + 0.5) / float(fps)
    grid = np.arange(g) * HOP_S
    out = {}
    for name, v in values.items():
        v = gaussian_filter1d(np.asarray(v, np.float64), SMOOTH_S[name] / HOP_S) if g else v
        out[name] = np.interp(times, grid, v, left=0.0, right=0.0) if g else np.zeros(n)
    lo = {"jaw": 0.0, "spread": -1.0, "round": 0.0, "closure": 0.0, "teeth": 0.0}
    for name in out:
        out[name] = np.clip(out[name], lo[name], 1.0)
        out[name][np.abs(out[name]) < 1e-4] = 0.0
    # Speech activity per frame: at least half of the frame interval is speech (closures count,
    # as the phonemes of a stop do in visemes.speech_activity).
    cover = np.zeros(n)
    if g:
        per = (np.arange(g) * HOP_S * fps).astype(int)
        keep = per < n
        np.add.at(cover, per[keep], speech[keep].astype(float))
        counts = np.bincount(per[keep], minlength=n)[:n]
        cover = np.where(counts > 0, cover / np.maximum(counts, 1), 0.0)
    return MouthTrack(fps=float(fps), **out), cover >= 0.5


# ------------------------------------------------------------------------------------------------
# Recordings: files, segments, kit provenance
# ------------------------------------------------------------------------------------------------


def recordings_in(folder: str | os.PathLike) -> tuple[str, ...]:
    """The speech recordings in a user's folder (for ``lipsync synth --speech DIR``)."""
    from lipsync.media.formats import files_in

    return files_in(folder, AUDIO_SUFFIXES, "speech recordings")


@lru_cache(maxsize=8)
def load_recording(path: str, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, Levels]:
    """Mono samples at ``sample_rate`` and the level statistics of the whole file (cached)."""
    from lipsync.media.audio import load_audio

    samples = load_audio(path, sample_rate)
    samples.setflags(write=False)
    return samples, levels(samples, sample_rate)


def pick_offset(samples: np.ndarray, seconds: float, rng: np.random.Generator, lv: Levels,
                sample_rate: int = SAMPLE_RATE, min_speech: float = 0.35) -> int:
    """Start sample of a ``seconds`` long segment with speech in it, never in the leading silence:
    candidates are a short lead (0.1-0.3 s) before each speech onset and, so that a short file still
    gives varied clips, every 0.25 s from the first of those on (a clip may start mid-utterance, as
    cuts of real footage do); one whose segment is at least ``min_speech`` speech is drawn, else the
    one with the most speech. 0 for a file no longer than the clip."""
    n = int(round(seconds * sample_rate))
    if len(samples) <= n:
        return 0
    db = _features(samples, sample_rate).db
    _, speech = speech_grid(db, lv)
    runs = _runs(speech)
    if not runs:
        return 0
    step = int(round(HOP_S * sample_rate))
    last = len(samples) - n
    lead = float(rng.uniform(0.1, 0.3))
    starts = {min(max(int(a * step - lead * sample_rate), 0), last) for a, _ in runs}
    starts |= set(range(min(starts), last + 1, int(0.25 * sample_rate)))
    starts = sorted(starts)
    if runs[0][0] * step > last:  # speech only in the final stretch: end the clip with the file
        starts = [last]
    frac = []
    for s in starts:
        a, b = s // step, min((s + n) // step, len(speech))
        frac.append(float(speech[a:b].mean()) if b > a else 0.0)
    frac = np.array(frac)
    good = np.flatnonzero(frac >= min_speech)
    if len(good):
        return int(starts[int(rng.choice(good))])
    return int(starts[int(np.argmax(frac))])


@lru_cache(maxsize=1)
def _kit_by_name() -> dict:
    try:
        from lipsync.data import kit

        return {Path(e.file).name: e for e in kit.load_manifest() if e.kind in ("speech", "talking", "driving")}
    except Exception:  # the manifest is provenance only; a broken one must not stop rendering
        return {}


def kit_entry(path: str | os.PathLike):
    """The faces-kit manifest row of a recording (matched by file name, as ``--link`` names them)."""
    return _kit_by_name().get(Path(path).name)


@dataclass
class RecordedSpeech:
    audio: np.ndarray  # float32, exactly the clip's length
    mouth: MouthTrack
    active: np.ndarray  # bool per frame
    info: dict  # for meta.json


def recorded_speech(rng: np.random.Generator, recordings: tuple[str, ...] | list[str], seconds: float,
                    n_frames: int, fps: float = 25.0, split: str = "train") -> RecordedSpeech:
    """A segment of one of ``recordings`` (drawn by ``rng``), its audio and its articulation."""
    path = str(recordings[int(rng.integers(0, len(recordings)))])
    entry = kit_entry(path)
    if entry is not None and split == "train" and entry.split == "heldout":
        from lipsync.errors import LipSyncError

        raise LipSyncError(f"{path}: a held-out recording of the faces-kit ({entry.identity}); "
                           "never train on it (link --split train recordings, or render with --split test)")
    samples, lv = load_recording(path)
    n = int(round(seconds * SAMPLE_RATE))
    start = pick_offset(samples, seconds, rng, lv)
    audio = np.zeros(n, np.float32)
    seg = samples[start:start + n]
    audio[:len(seg)] = seg
    mouth, active = acoustic_track(audio, n_frames, fps, SAMPLE_RATE, lv)
    info = {"source": "recorded", "file": Path(path).name, "path": os.path.abspath(path),
            "offset": round(start / SAMPLE_RATE, 4), "file_seconds": round(len(samples) / SAMPLE_RATE, 3),
            "levels_db": {"floor": round(lv.floor, 2), "loud": round(lv.loud, 2), "peak": round(lv.peak, 2),
                          "threshold": round(lv.threshold, 2)}}
    if entry is not None:
        info["kit"] = {"identity": entry.identity, "split": entry.split, "language": entry.language,
                       "licence": entry.licence, "sha256": entry.sha256}
    return RecordedSpeech(audio, mouth, active, info)
