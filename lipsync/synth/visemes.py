"""Phoneme timeline -> per-frame mouth parameters (visemes with coarticulation).

Input is a phoneme timeline as produced by :func:`lipsync.tts.synthesize` (espeak-ng mnemonics
such as ``'aI``, ``tS``, ``_:``, Mandarin ``tS;h``/``'iE``, Spanish ``B``/``n^``...), output a
:class:`MouthTrack` with one value per video frame for each mouth parameter:

``jaw``      jaw/mouth opening, 0 = closed .. 1 = wide open (``A:`` as in "father")
``spread``   lip width, -1 = rounded/protruded narrow ("oo", "w") .. 0 neutral .. +1 spread ("ee")
``round``    lip rounding/protrusion, 0 .. 1
``closure``  lips pressed together, 0 .. 1 (1 at the centre of /p b m/)
``teeth``    upper-teeth visibility, 0 .. 1 (high for /f v/, /s/, spread vowels)

Model: every phoneme has a target value and a *dominance* per parameter (Cohen & Massaro 1993).
Dominance is flat over the middle of the phoneme (``hold``) and decays exponentially before
(anticipation) and after (carry-over) it; each parameter at time t is the dominance-weighted mean
of all targets.  Vowels dominate the jaw and lips; most consonants barely affect the jaw (the
mouth stays open through "k" in "okay") except bilabials, which dominate so strongly that the mouth
really closes on /p b m/; labiodentals and sibilants almost close it.  Silence (pause events,
gaps in the timeline, before the first and after the last phoneme) is a "rest" target (all
parameters 0, mouth closed) that takes over after a short release.  espeak reports a stop at
its release burst, with the (silent) closure at the end of the previous phoneme, so the closure of
p/t/k (and, shorter, b/d/g) is moved back before the event.

Unstressed vowels open the jaw a little less than stressed ones.  The blend is computed on a
200 Hz grid and low-passed per parameter (Gaussian, 8-20 ms: lips are slower than the jaw).

Frame ``i`` stands for the interval ``[i / fps, (i + 1) / fps)``; parameters are evaluated at its
centre.  Everything here is deterministic; callers add per-speaker variety.

Unknown symbols never fail: stress (``'`` ``,``), length (``:``), tone digits and espeak's variant
marks are stripped and the rest classified as vowel or consonant by its letters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = [
    "PARAMS",
    "Viseme",
    "VISEMES",
    "DIPHTHONGS",
    "DOMINANCE",
    "MouthTrack",
    "mouth_track",
    "speech_activity",
    "viseme_for",
    "n_frames_for",
]

PARAMS: tuple[str, ...] = ("jaw", "spread", "round", "closure", "teeth")
REST = (0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Viseme:
    """Mouth target of one phoneme and its articulation class (which sets its dominance)."""

    jaw: float
    spread: float
    round: float
    closure: float
    teeth: float
    cls: str
    stop: int = 0  # 0: no oral stop; 1: voiced stop; 2: voiceless stop/affricate (silent closure)

    @property
    def target(self) -> tuple[float, float, float, float, float]:
        return (self.jaw, self.spread, self.round, self.closure, self.teeth)


def _v(jaw: float, spread: float, round_: float, teeth: float) -> Viseme:
    return Viseme(jaw, spread, round_, 0.0, teeth, "vowel")


def _c(cls: str, jaw: float, spread: float = 0.0, round_: float = 0.0, closure: float = 0.0,
       teeth: float = 0.0, stop: int = 0) -> Viseme:
    return Viseme(jaw, spread, round_, closure, teeth, cls, stop)


# --------------------------------------------------------------------------------------------
# Dominance per articulation class:
#   alpha (jaw, spread, round, closure, teeth), anticipation rate, carry-over rate (1/s), hold.
# A rate r means dominance falls to 1/e within 1/r seconds of the held middle part; hold is the
# fraction of the phoneme's duration over which the dominance is flat.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dominance:
    alpha: tuple[float, float, float, float, float]
    anticipation: float
    carryover: float
    hold: float


DOMINANCE: dict[str, Dominance] = {
    "vowel": Dominance((1.0, 1.0, 1.0, 1.0, 0.7), 28.0, 26.0, 0.5),
    "bilabial": Dominance((6.0, 0.6, 0.6, 6.0, 2.0), 70.0, 70.0, 0.6),
    "bilabial_approx": Dominance((2.0, 0.6, 0.6, 2.0, 1.0), 60.0, 60.0, 0.5),
    "labiodental": Dominance((4.0, 0.8, 0.8, 3.0, 4.0), 60.0, 60.0, 0.6),
    "dental": Dominance((1.6, 0.5, 0.5, 1.0, 3.0), 40.0, 45.0, 0.5),
    "sibilant": Dominance((2.2, 1.0, 0.6, 1.0, 2.5), 40.0, 45.0, 0.5),
    "postalveolar": Dominance((2.2, 2.0, 2.0, 1.0, 2.5), 35.0, 40.0, 0.5),
    "alveolar": Dominance((1.0, 0.25, 0.25, 0.5, 0.8), 45.0, 50.0, 0.4),
    "velar": Dominance((0.5, 0.15, 0.15, 0.3, 0.3), 45.0, 50.0, 0.4),
    "glottal": Dominance((0.15, 0.1, 0.1, 0.2, 0.1), 45.0, 50.0, 0.4),
    "labiovelar": Dominance((1.2, 4.0, 4.0, 1.0, 0.6), 25.0, 30.0, 0.5),
    "palatal": Dominance((1.0, 1.5, 1.0, 0.5, 0.6), 35.0, 40.0, 0.5),
    "rhotic": Dominance((0.7, 1.4, 1.4, 0.5, 0.5), 35.0, 40.0, 0.5),
    "pause": Dominance((3.0, 3.0, 3.0, 3.0, 3.0), 40.0, 40.0, 1.0),
    "marker": Dominance((0.0, 0.0, 0.0, 0.0, 0.0), 50.0, 50.0, 0.0),
}

# Jaw scale of vowels by stress: espeak marks primary stress with ' and secondary with ,.
_STRESS_JAW = {"'": 1.0, ",": 0.95, "": 0.85}

# Starts and ends of silence: how long the mouth takes to close after speech stops (release)
# and to start opening before it resumes; pauses shorter than _PAUSE_FULL only partly close it.
_RELEASE = 0.06
_ONSET = 0.05
_PAUSE_FULL = 0.15
# Stop closures before the release event: at most this long (s) per stop kind (1 voiced,
# 2 voiceless) and this fraction of the previous phoneme; the part of the stop after the release
# that still belongs to its articulation.
_STOP_LEAD = {1: 0.02, 2: 0.045}
_STOP_LEAD_FRACTION = 0.4
_STOP_KEEP = {1: 0.6, 2: 0.3}
# Evaluation grid and per-parameter low-pass (Gaussian sigma, seconds): lips round/spread more
# slowly than the jaw drops, and a bilabial closure must survive the smoothing.
_GRID_HZ = 200.0
_SMOOTH = {"jaw": 0.010, "spread": 0.020, "round": 0.020, "closure": 0.008, "teeth": 0.015}

# --------------------------------------------------------------------------------------------
# The viseme table, keyed by espeak-ng mnemonic without stress marks.
# --------------------------------------------------------------------------------------------

_VOWELS: dict[str, Viseme] = {
    # front
    "i": _v(0.22, 0.90, 0.00, 0.60),
    "i:": _v(0.22, 0.90, 0.00, 0.60),
    "I": _v(0.30, 0.60, 0.00, 0.50),
    "I2": _v(0.30, 0.55, 0.00, 0.50),
    "I#": _v(0.30, 0.40, 0.00, 0.45),
    "i.": _v(0.24, 0.35, 0.00, 0.50),  # Mandarin apical (zhi, chi, shi)
    "i[": _v(0.24, 0.55, 0.00, 0.55),  # Mandarin apical (zi, ci, si)
    "e": _v(0.42, 0.65, 0.00, 0.50),
    "e:": _v(0.42, 0.65, 0.00, 0.50),
    "e-": _v(0.38, 0.40, 0.00, 0.40),
    "E": _v(0.55, 0.45, 0.00, 0.45),
    "E:": _v(0.55, 0.45, 0.00, 0.45),
    "E~": _v(0.55, 0.35, 0.00, 0.40),
    "&": _v(0.72, 0.45, 0.00, 0.45),
    "a": _v(0.85, 0.20, 0.00, 0.35),
    "a:": _v(0.88, 0.20, 0.00, 0.35),
    "a#": _v(0.62, 0.10, 0.00, 0.35),
    "A": _v(1.00, 0.00, 0.00, 0.30),
    "A:": _v(1.00, 0.00, 0.00, 0.30),
    "A~": _v(0.85, 0.00, 0.10, 0.30),
    # central
    "@": _v(0.40, 0.00, 0.00, 0.30),
    "@2": _v(0.36, 0.00, 0.00, 0.30),
    "@-": _v(0.34, 0.00, 0.00, 0.30),
    "3": _v(0.42, -0.05, 0.15, 0.30),
    "3:": _v(0.45, -0.05, 0.15, 0.30),
    "V": _v(0.62, 0.10, 0.00, 0.35),
    "8": _v(0.42, -0.30, 0.45, 0.20),
    # back / rounded
    "0": _v(0.80, -0.30, 0.40, 0.25),
    "O": _v(0.62, -0.50, 0.60, 0.20),
    "O:": _v(0.62, -0.55, 0.65, 0.20),
    "O2": _v(0.62, -0.50, 0.60, 0.20),
    "O~": _v(0.50, -0.60, 0.70, 0.15),
    "o": _v(0.45, -0.70, 0.80, 0.15),
    "o:": _v(0.45, -0.70, 0.80, 0.15),
    "o-": _v(0.45, -0.55, 0.65, 0.15),
    "U": _v(0.30, -0.60, 0.70, 0.10),
    "u": _v(0.20, -0.90, 1.00, 0.05),
    "u:": _v(0.20, -0.90, 1.00, 0.05),
    "y": _v(0.20, -0.75, 0.90, 0.10),
    "y:": _v(0.20, -0.75, 0.90, 0.10),
    "y-": _v(0.20, -0.70, 0.85, 0.10),
    "Y": _v(0.40, -0.55, 0.70, 0.15),
    "W": _v(0.50, -0.45, 0.60, 0.20),
    "W~": _v(0.50, -0.40, 0.55, 0.20),
}

_CONSONANTS: dict[str, Viseme] = {
    # lips pressed together
    "p": _c("bilabial", 0.0, closure=1.0, stop=2),
    "b": _c("bilabial", 0.0, closure=1.0, stop=1),
    "m": _c("bilabial", 0.0, closure=1.0),
    "ph": _c("bilabial", 0.0, closure=1.0, stop=2),  # Mandarin aspirated p
    "B": _c("bilabial_approx", 0.10, closure=0.6),  # Spanish b/v between vowels
    "F": _c("bilabial_approx", 0.10, closure=0.6),
    # lower lip to upper teeth
    "f": _c("labiodental", 0.10, closure=0.35, teeth=1.0),
    "v": _c("labiodental", 0.10, closure=0.35, teeth=1.0),
    "M": _c("labiodental", 0.10, closure=0.35, teeth=1.0),
    # tongue between the teeth
    "T": _c("dental", 0.18, spread=0.10, teeth=0.80),
    "D": _c("dental", 0.18, spread=0.10, teeth=0.80),
    # sibilants: teeth close, lips slightly spread
    "s": _c("sibilant", 0.10, spread=0.35, teeth=0.90),
    "z": _c("sibilant", 0.10, spread=0.35, teeth=0.90),
    "z2": _c("sibilant", 0.10, spread=0.35, teeth=0.90),
    "ts": _c("sibilant", 0.10, spread=0.35, teeth=0.90, stop=2),
    "dz": _c("sibilant", 0.10, spread=0.35, teeth=0.90, stop=1),
    "tsh": _c("sibilant", 0.10, spread=0.35, teeth=0.90, stop=2),
    "S;": _c("sibilant", 0.12, spread=0.50, teeth=0.85),  # Mandarin x (alveolo-palatal)
    "tS;": _c("sibilant", 0.12, spread=0.50, teeth=0.85, stop=2),  # Mandarin j
    "tS;h": _c("sibilant", 0.12, spread=0.50, teeth=0.85, stop=2),  # Mandarin q
    "C": _c("sibilant", 0.14, spread=0.45, teeth=0.80),  # German ich-Laut
    # postalveolar / retroflex: lips protrude
    "S": _c("postalveolar", 0.14, spread=-0.35, round_=0.60, teeth=0.70),
    "Z": _c("postalveolar", 0.14, spread=-0.35, round_=0.60, teeth=0.70),
    "tS": _c("postalveolar", 0.14, spread=-0.35, round_=0.60, teeth=0.70, stop=2),
    "dZ": _c("postalveolar", 0.14, spread=-0.35, round_=0.60, teeth=0.70, stop=1),
    "s.": _c("postalveolar", 0.14, spread=-0.20, round_=0.40, teeth=0.65),  # Mandarin sh
    "z.": _c("postalveolar", 0.16, spread=-0.20, round_=0.40, teeth=0.60),  # Mandarin r
    "ts.": _c("postalveolar", 0.14, spread=-0.20, round_=0.40, teeth=0.65, stop=2),  # Mandarin zh
    "ts.h": _c("postalveolar", 0.14, spread=-0.20, round_=0.40, teeth=0.65, stop=2),  # Mandarin ch
    # alveolar stops, nasals, laterals, taps: the jaw follows the vowels
    "t": _c("alveolar", 0.25, teeth=0.50, stop=2),
    "d": _c("alveolar", 0.25, teeth=0.50, stop=1),
    "th": _c("alveolar", 0.25, teeth=0.50, stop=2),  # Mandarin aspirated t
    "t#": _c("alveolar", 0.25, teeth=0.45),  # English flap ("better"): no silent closure
    "d#": _c("alveolar", 0.25, teeth=0.45),
    "n": _c("alveolar", 0.25, teeth=0.40),
    "l": _c("alveolar", 0.30, teeth=0.40),
    "L": _c("alveolar", 0.30, teeth=0.40),
    "l^": _c("alveolar", 0.28, spread=0.20, teeth=0.40),
    "n^": _c("alveolar", 0.25, spread=0.20, teeth=0.40),
    "R": _c("alveolar", 0.30, teeth=0.40),
    "R2": _c("alveolar", 0.30, teeth=0.40),
    "*": _c("alveolar", 0.30, teeth=0.40),
    "r`": _c("alveolar", 0.28, teeth=0.40),
    "t_s\\": _c("sibilant", 0.12, spread=0.30, teeth=0.85, stop=2),  # Japanese tsu
    # velars / uvulars / glottals: barely any lip or jaw target of their own
    "k": _c("velar", 0.30, stop=2),
    "g": _c("velar", 0.30, stop=1),
    "kh": _c("velar", 0.30, stop=2),
    "N": _c("velar", 0.30),
    "x": _c("velar", 0.30),
    "X": _c("velar", 0.30),
    "G": _c("velar", 0.30),
    "Q": _c("velar", 0.30),
    "c": _c("velar", 0.25, stop=2),
    "J": _c("velar", 0.25, stop=1),
    "q": _c("velar", 0.30, stop=2),
    "h": _c("glottal", 0.35),
    "H": _c("glottal", 0.35),
    "?": _c("glottal", 0.20),
    # approximants
    "w": _c("labiovelar", 0.15, spread=-0.90, round_=1.0, teeth=0.05),
    "W#": _c("labiovelar", 0.15, spread=-0.90, round_=1.0, teeth=0.05),
    "j": _c("palatal", 0.20, spread=0.60, teeth=0.50),
    "J^": _c("palatal", 0.20, spread=0.50, teeth=0.50),  # Spanish ll / y
    "r": _c("rhotic", 0.25, spread=-0.30, round_=0.40, teeth=0.30),
    "r-": _c("rhotic", 0.25, spread=-0.30, round_=0.40, teeth=0.30),
}

_SPECIAL: dict[str, Viseme] = {
    "_": Viseme(*REST, cls="pause"),
    # zero-width espeak markers and anything without letters: transparent
    "": Viseme(0.0, 0.0, 0.0, 0.0, 0.0, "marker"),
}

VISEMES: dict[str, Viseme] = {**_VOWELS, **_CONSONANTS, **_SPECIAL}
"""espeak-ng mnemonic (stress marks removed) -> target. Diphthongs are in :data:`DIPHTHONGS`."""

# Multi-target phonemes: components (keys of VISEMES), spread over the phoneme's duration.
DIPHTHONGS: dict[str, tuple[str, ...]] = {
    # English
    "aI": ("a", "I"),
    "aI@": ("a", "I", "@"),
    "aI3": ("a", "I", "@"),
    "aU": ("a", "U"),
    "aU@": ("a", "U", "@"),
    "eI": ("e", "I"),
    "oU": ("o", "U"),
    "@U": ("@", "U"),
    "OI": ("O", "I"),
    "A@": ("A", "3"),
    "O@": ("O", "3"),
    "o@": ("o", "3"),
    "U@": ("U", "@"),
    "i@": ("i", "@"),
    "i@3": ("i", "@"),
    "e@": ("E", "@"),
    "@L": ("@", "L"),
    "@5": ("@", "L"),
    "IR": ("I", "r"),
    "VR": ("V", "r"),
    # Mandarin finals
    "Au": ("A", "u"),
    "ai": ("a", "i"),
    "ei": ("e", "i"),
    "ou": ("o", "u"),
    "iE": ("i", "E"),
    "ia": ("i", "a"),
    "iA": ("i", "A"),
    "iAu": ("i", "A", "u"),
    "iou": ("i", "o", "u"),
    "ua": ("u", "a"),
    "uA": ("u", "A"),
    "uo": ("u", "o"),
    "uai": ("u", "a", "i"),
    "uei": ("u", "e", "i"),
    "u@": ("u", "@"),
    "yE": ("y", "E"),
    "y&": ("y", "&"),
    "ong": ("U", "N"),
    "iong": ("i", "U", "N"),
    "@r": ("@", "r"),
    # Spanish / others
    "aI2": ("a", "I"),
    "eU": ("e", "U"),
}

# Letters espeak uses for vowels in its ASCII (Kirshenbaum-like) phoneme names.
_VOWEL_CHARS = set("aeiouyAEIOUVY@3&08W")
# Marks that only refine a phoneme (length, variants, nasal, palatal, retroflex, tones...).
_MODIFIERS = ":#-~;^.[`\\*/!=%+|0123456789"


@lru_cache(maxsize=4096)
def _resolve(symbol: str) -> tuple[tuple[Viseme, ...], str]:
    """Symbol -> (components, stress mark). Never fails."""
    s = symbol.strip()
    if not s:
        return (VISEMES[""],), ""
    if s.startswith("_") or s in ("|", "||"):
        return (VISEMES["_"],), ""
    if s.startswith("(") and s.endswith(")"):  # language switch, e.g. "(en)"
        return (VISEMES[""],), ""
    stress = ""
    while s and s[0] in "',%=":
        if s[0] in "',":
            stress = stress or s[0]
        s = s[1:]
    if not s:
        return (VISEMES[""],), stress

    def find(key: str) -> tuple[Viseme, ...] | None:
        if key in DIPHTHONGS:
            return tuple(VISEMES[k] for k in DIPHTHONGS[key])
        if key in VISEMES and key:
            return (VISEMES[key],)
        return None

    # The first character is the phoneme itself even where it doubles as a mark elsewhere
    # ("0" and "3" are vowels, "*" a tap).
    stripped = s[0] + "".join(ch for ch in s[1:] if ch not in _MODIFIERS)
    candidates = [s, s.rstrip(":"), s.replace(":", ""), s.rstrip("0123456789"), stripped]
    if len(stripped) > 1 and stripped.endswith("h"):  # aspiration: "ph", "kh", "tsh"
        candidates.append(stripped[:-1])
    for key in candidates:
        found = find(key)
        if found:
            return found, stress

    # Classify by letters.
    letters = [ch for ch in stripped if ch.isalpha() or ch in "@&038"]
    if not letters:
        return (VISEMES[""],), stress
    if all(ch in _VOWEL_CHARS for ch in letters):
        comps: list[Viseme] = []
        for ch in letters:
            v = VISEMES.get(ch) or VISEMES.get(ch.lower()) or VISEMES["@"]
            if not comps or comps[-1] is not v:
                comps.append(v)
        return tuple(comps[:3]), stress
    if letters[0] in _VOWEL_CHARS:  # vowel + coda, e.g. "an", "ong"
        comps = [VISEMES.get(letters[0]) or VISEMES["@"]]
        coda = next((ch for ch in letters[1:] if ch not in _VOWEL_CHARS), None)
        if coda is not None:
            comps.append(VISEMES.get(coda) or VISEMES.get(coda.lower()) or VISEMES["t"])
        return tuple(comps), stress
    # Consonant: longest known prefix, then the first letter, else a neutral alveolar.
    for n in range(min(len(stripped), 4), 0, -1):
        if stripped[:n] in _CONSONANTS:
            return (VISEMES[stripped[:n]],), stress
    first = letters[0]
    v = VISEMES.get(first) or VISEMES.get(first.lower())
    if v is not None and v.cls != "vowel":
        return (v,), stress
    return (VISEMES["t"],), stress


def viseme_for(symbol: str) -> tuple[Viseme, ...]:
    """The target(s) used for an espeak phoneme symbol (diphthongs give 2-3). Never raises."""
    return _resolve(str(symbol))[0]


# --------------------------------------------------------------------------------------------
# Track
# --------------------------------------------------------------------------------------------


@dataclass
class MouthTrack:
    """Per-frame mouth parameters (float32 arrays of equal length ``n_frames``)."""

    fps: float
    jaw: np.ndarray
    spread: np.ndarray
    round: np.ndarray
    closure: np.ndarray
    teeth: np.ndarray

    def __post_init__(self) -> None:
        n = None
        for name in PARAMS:
            arr = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1)
            setattr(self, name, arr)
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"MouthTrack: {name} has {arr.shape[0]} frames, expected {n}")
            n = arr.shape[0]
        self.fps = float(self.fps)

    @property
    def n_frames(self) -> int:
        return int(self.jaw.shape[0])

    def __len__(self) -> int:
        return self.n_frames

    def as_array(self) -> np.ndarray:
        """(n_frames, 5) float32 in :data:`PARAMS` order."""
        return np.stack([getattr(self, p) for p in PARAMS], axis=1)

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        """JSON-ready dict: fps, n_frames and one list per parameter."""
        out: dict[str, Any] = {"fps": self.fps, "n_frames": self.n_frames}
        for p in PARAMS:
            out[p] = [round(float(x), decimals) for x in getattr(self, p)]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MouthTrack":
        n = len(d["jaw"])
        arrays = {p: np.asarray(d.get(p, np.zeros(n)), dtype=np.float32) for p in PARAMS}
        return cls(fps=float(d["fps"]), **arrays)


def n_frames_for(duration: float, fps: float = 25.0) -> int:
    """Frames needed to cover ``duration`` seconds at ``fps`` (rounded up)."""
    return int(math.ceil(round(max(float(duration), 0.0) * float(fps), 6)))


def _as_events(phonemes: Iterable[Any]) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    for p in phonemes:
        if isinstance(p, Mapping):
            sym, start, end = p["symbol"], p["start"], p["end"]
        elif hasattr(p, "symbol"):
            sym, start, end = p.symbol, p.start, p.end
        else:
            sym, start, end = p
        start, end = float(start), float(end)
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            continue
        out.append((str(sym), start, end))
    out.sort(key=lambda e: (e[1], e[2]))
    return out


def _is_silence(symbol: str) -> bool:
    comps, _ = _resolve(symbol)
    return len(comps) == 1 and comps[0].cls == "pause"


def _segments(events: list[tuple[str, float, float]]) -> tuple[np.ndarray, ...]:
    """Dominance segments: plateau start/end, targets, alphas, anticipation/carry-over rates."""
    t0s: list[float] = []
    t1s: list[float] = []
    targets: list[tuple[float, ...]] = []
    alphas: list[tuple[float, ...]] = []
    ants: list[float] = []
    cars: list[float] = []

    pause_dom = DOMINANCE["pause"]

    def add_rest(start: float, end: float, lead_in: bool = True, lead_out: bool = True) -> None:
        dur = end - start
        if dur <= 1e-4:
            return
        a = start + (min(_RELEASE, dur / 2) if lead_in else 0.0)
        b = end - (min(_ONSET, dur / 2) if lead_out else 0.0)
        if b < a:
            a = b = (a + b) / 2
        weight = 1.0 if not (lead_in and lead_out) else min(1.0, dur / _PAUSE_FULL)
        t0s.append(a)
        t1s.append(b)
        targets.append(REST)
        alphas.append(tuple(x * weight for x in pause_dom.alpha))
        ants.append(pause_dom.anticipation)
        cars.append(pause_dom.carryover)

    # Merge consecutive silences (and gaps) into single rest spans.
    speech: list[tuple[str, float, float]] = []
    rests: list[tuple[float, float]] = []
    cursor = None
    for sym, start, end in events:
        if cursor is not None and start > cursor + 1e-3:
            rests.append((cursor, start))  # gap in the timeline = silence
        if _is_silence(sym):
            rests.append((start, end))
        else:
            speech.append((sym, start, end))
        cursor = end if cursor is None else max(cursor, end)
    merged: list[list[float]] = []
    for a, b in sorted(rests):
        if merged and a <= merged[-1][1] + 1e-3:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])

    if not speech:
        return tuple(np.zeros((0,) + s) for s in ((), (), (5,), (5,), (), ()))

    first = speech[0][1]
    last = max(e for _, _, e in speech)
    # Silence before the first and after the last sound: rests that never end.
    add_rest(-1e6, first, lead_in=False, lead_out=True)
    add_rest(last, 1e6, lead_in=True, lead_out=False)
    for a, b in merged:
        a, b = max(a, first), min(b, last)
        if b > a:
            add_rest(a, b)

    # Articulatory spans.  espeak puts a stop's phoneme event at the release burst: the closure
    # (silent for voiceless stops, ~40 ms at normal rate) lies at the end of the previous phoneme.
    # Move the closure into the stop, taking it from the phoneme before.
    spans = [[start, end] for _, start, end in speech]
    resolved = [_resolve(sym) for sym, _, _ in speech]
    for k, (comps, _) in enumerate(resolved):
        stop = comps[0].stop
        if not stop:
            continue
        start, end = spans[k]
        prev_dur = speech[k - 1][2] - speech[k - 1][1] if k else 0.0
        adjacent = k > 0 and abs(speech[k - 1][2] - speech[k][1]) < 1e-3
        budget = prev_dur if adjacent else _RELEASE  # after silence the lips close in the pause
        lead = min(_STOP_LEAD[stop], _STOP_LEAD_FRACTION * budget)
        spans[k] = [start - lead, start + (end - start) * _STOP_KEEP[stop]]
        if adjacent:
            spans[k - 1][1] = min(spans[k - 1][1], start - lead)

    for (comps, stress), (a_all, b_all) in zip(resolved, spans):
        n = len(comps)
        dur = max(b_all - a_all, 1e-4)
        # Diphthongs: the first component gets a bit more than its share.
        if n == 1:
            bounds = [a_all, b_all]
        else:
            w = np.array([1.3] + [1.0] * (n - 1))
            cuts = np.concatenate([[0.0], np.cumsum(w / w.sum())])
            bounds = list(a_all + cuts * dur)
        for k, v in enumerate(comps):
            a, b = bounds[k], bounds[k + 1]
            dom = DOMINANCE.get(v.cls, DOMINANCE["alveolar"])
            half = (b - a) * (1.0 - dom.hold) / 2.0
            target = list(v.target)
            if v.cls == "vowel":
                target[0] *= _STRESS_JAW.get(stress, 1.0)
            t0s.append(a + half)
            t1s.append(b - half)
            targets.append(tuple(target))
            alphas.append(dom.alpha)
            ants.append(dom.anticipation)
            cars.append(dom.carryover)

    return (np.asarray(t0s), np.asarray(t1s), np.asarray(targets, dtype=np.float64),
            np.asarray(alphas, dtype=np.float64), np.asarray(ants), np.asarray(cars))


def _blend(times: np.ndarray, segs: tuple[np.ndarray, ...], chunk: int = 512) -> np.ndarray:
    """Dominance-weighted targets at ``times`` -> (len(times), 5)."""
    t0, t1, tg, al, an, ca = segs
    out = np.zeros((times.shape[0], 5), dtype=np.float64)
    if t0.shape[0] == 0:
        return out
    # Only segments within this reach matter (exp(-rate * reach) is negligible).
    reach = 12.0 / max(float(np.min(np.concatenate([an, ca]))), 1e-3)
    for s in range(0, times.shape[0], chunk):
        t = times[s : s + chunk]
        lo, hi = t[0] - reach, t[-1] + reach
        sel = (t1 >= lo) & (t0 <= hi)
        if not np.any(sel):
            continue
        before = np.clip(t0[sel][:, None] - t[None, :], 0.0, None)  # (k, m)
        after = np.clip(t[None, :] - t1[sel][:, None], 0.0, None)
        decay = np.exp(-(an[sel][:, None] * before + ca[sel][:, None] * after))  # (k, m)
        dom = decay[:, :, None] * al[sel][:, None, :]  # (k, m, 5)
        num = np.einsum("kmp,kp->mp", dom, tg[sel])
        den = dom.sum(axis=0) + 1e-9
        out[s : s + chunk] = num / den
    return out


def _gaussian(sigma_steps: float) -> np.ndarray:
    r = max(int(math.ceil(3.0 * sigma_steps)), 1)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma_steps, 1e-6)) ** 2)
    return k / k.sum()


def _sample(times: np.ndarray, segs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Blend on a fine grid, low-pass each parameter (articulators have inertia), then read the
    values at ``times``."""
    if times.shape[0] == 0:
        return np.zeros((0, 5))
    step = 1.0 / _GRID_HZ
    pad = 4.0 * max(_SMOOTH.values())
    grid = np.arange(times[0] - pad, times[-1] + pad + step, step)
    fine = _blend(grid, segs)
    out = np.empty((times.shape[0], 5))
    for j, name in enumerate(PARAMS):
        sig = fine[:, j]
        kernel = _gaussian(_SMOOTH[name] / step)
        padded = np.pad(sig, (kernel.size // 2, kernel.size // 2), mode="edge")
        smooth = np.convolve(padded, kernel, mode="valid")
        out[:, j] = np.interp(times, grid, smooth)
    return out


def mouth_track(phonemes: Iterable[Any], n_frames: int, fps: float = 25.0) -> MouthTrack:
    """Per-frame mouth parameters for a phoneme timeline.

    ``phonemes``: :class:`lipsync.tts.PhonemeEvent` objects, ``{"symbol", "start", "end"}``
    dicts or ``(symbol, start, end)`` tuples, times in seconds on the video's clock (gaps and
    pause symbols are silence).  ``n_frames`` frames at ``fps``; frame i is evaluated at
    ``(i + 0.5) / fps``.  Deterministic.
    """
    n = int(n_frames)
    if n < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if not (float(fps) > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    events = _as_events(phonemes)
    times = (np.arange(n, dtype=np.float64) + 0.5) / float(fps)
    segs = _segments(events)
    values = _sample(times, segs)
    lo = np.array([0.0, -1.0, 0.0, 0.0, 0.0])
    hi = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    values = np.clip(values, lo, hi)
    values[np.abs(values) < 1e-4] = 0.0
    return MouthTrack(fps=float(fps), **{p: values[:, i] for i, p in enumerate(PARAMS)})


def speech_activity(phonemes: Iterable[Any], n_frames: int, fps: float = 25.0,
                    min_coverage: float = 0.5) -> np.ndarray:
    """Boolean per frame: at least ``min_coverage`` of the frame interval is covered by
    non-silent phonemes (pause symbols and gaps count as silence)."""
    n = int(n_frames)
    if n < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    fps = float(fps)
    cover = np.zeros(n, dtype=np.float64)
    for sym, start, end in _as_events(phonemes):
        if _is_silence(sym) or viseme_for(sym)[0].cls == "marker":
            continue
        a = max(int(math.floor(start * fps)), 0)
        b = min(int(math.ceil(end * fps)), n)
        for i in range(a, b):
            lo, hi = i / fps, (i + 1) / fps
            cover[i] += max(0.0, min(hi, end) - max(lo, start)) * fps
    return cover >= float(min_coverage) - 1e-9
