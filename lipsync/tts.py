"""Offline text-to-speech with espeak-ng, driven through ``ctypes``.

The engine is the ``libespeak-ng.so`` shipped inside the ``espeakng-loader`` wheel together with its
``espeak-ng-data`` directory; no system espeak, no network.  Besides the audio, espeak reports a
phoneme event (its own ASCII phoneme mnemonic, e.g. ``'aI``, ``tS``, ``_:``) and a word event with the
exact sample position, which gives the phoneme timeline the viseme layer (:mod:`lipsync.synth.visemes`)
turns into mouth motion.

Public API::

    speech = synthesize("Hello world.", lang="en", voice="m1", rate=175, pitch=50)
    speech.samples      # float32 mono in [-1, 1] at speech.sample_rate (16 kHz by default)
    speech.phonemes     # [PhonemeEvent(symbol, start, end), ...] in seconds, contiguous
    speech.to_json()    # JSON-ready metadata (timeline, words, text, language, voice)

    list_languages()    # language codes ``synthesize`` accepts
    list_voices()       # espeak voices in the data directory (one per language/dialect)
    list_variants()     # voice variants (``voice=`` values): m1..m8, f1..f5, klatt, whisper, ...

espeak-ng holds process-global state.  All calls go through one lock, the engine is initialised once
per process (lazily), and a fork never copies a half-finished synthesis into the child: the lock is
taken around ``fork()`` (``os.register_at_fork``), so a forked worker inherits a consistent, idle,
already-initialised engine (in SYNCHRONOUS mode espeak runs no threads of its own).  Synthesis is
deterministic: the engine's random seed is reset before every call.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lipsync.errors import SpeechError

__all__ = [
    "PhonemeEvent",
    "Speech",
    "VoiceInfo",
    "synthesize",
    "list_languages",
    "list_voices",
    "list_variants",
    "resolve_language",
    "timeline_to_json",
    "timeline_from_json",
    "is_pause",
    "espeak_version",
]

# --------------------------------------------------------------------------------------------
# espeak-ng C API (speak_lib.h, API revision 12)
# --------------------------------------------------------------------------------------------

AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakINITIALIZE_PHONEME_EVENTS = 0x0001
espeakINITIALIZE_DONT_EXIT = 0x8000  # without it espeak calls exit() when the data dir is bad
espeakCHARS_UTF8 = 1
POS_CHARACTER = 1

espeakEVENT_LIST_TERMINATED = 0
espeakEVENT_WORD = 1
espeakEVENT_SENTENCE = 2
espeakEVENT_END = 5
espeakEVENT_MSG_TERMINATED = 6
espeakEVENT_PHONEME = 7
espeakEVENT_SAMPLERATE = 8

espeakRATE = 1
espeakVOLUME = 2
espeakPITCH = 3
espeakRANGE = 4
espeakPUNCTUATION = 5
espeakCAPITALS = 6
espeakWORDGAP = 7
espeakINTONATION = 9

EE_OK = 0

RATE_MIN, RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM (words per minute)
_SEED = 1234567  # fixed engine seed -> bit-identical output for identical requests


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),  # WORD / SENTENCE events
        ("name", ctypes.c_char_p),  # MARK / PLAY events
        ("string", ctypes.c_char * 8),  # PHONEME events: mnemonic, NUL-terminated unless 8 bytes
    ]


class _Event(ctypes.Structure):
    # 64-bit layout: 6 x int32 (24 bytes), void* at 24, union (8 bytes, 8-aligned) at 32 -> 40 bytes
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the output
        ("sample", ctypes.c_int),  # sample index (engine rate) from the start of the output
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte + NUL-terminated name)*, then NUL
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)

# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


def is_pause(symbol: str) -> bool:
    """True for espeak's pause/boundary mnemonics (``_``, ``_:``, ``_!``, ``_|``, ...)."""
    return symbol.startswith("_") or symbol.strip() == ""


@dataclass
class PhonemeEvent:
    """One phoneme of the timeline: espeak mnemonic (stress marks kept) and its span in seconds."""

    symbol: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def is_pause(self) -> bool:
        return is_pause(self.symbol)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "start": round(self.start, 5), "end": round(self.end, 5)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhonemeEvent":
        return cls(symbol=str(d["symbol"]), start=float(d["start"]), end=float(d["end"]))


def timeline_to_json(phonemes: Iterable[PhonemeEvent]) -> list[dict[str, Any]]:
    """Phoneme timeline as a list of ``{"symbol", "start", "end"}`` dicts (seconds)."""
    return [p.to_dict() for p in phonemes]


def timeline_from_json(items: Iterable[dict[str, Any]]) -> list[PhonemeEvent]:
    """Inverse of :func:`timeline_to_json`."""
    return [PhonemeEvent.from_dict(d) for d in items]


@dataclass
class Speech:
    """Synthesised speech plus its timing.

    ``lang`` is the espeak language the text was spoken in (e.g. ``"en-us"``, ``"cmn"``), ``voice``
    the variant name (``"default"`` when none was requested).  ``phonemes`` are contiguous: each
    event ends where the next starts, the last one at the end of the audio; pauses are events too
    (symbols starting with ``_``).  ``words`` holds ``(word, start_seconds)`` from espeak's word events.
    """

    samples: np.ndarray
    sample_rate: int
    phonemes: list[PhonemeEvent]
    words: list[tuple[str, float]]
    text: str
    lang: str
    voice: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return float(len(self.samples)) / float(self.sample_rate)

    def __repr__(self) -> str:
        return (f"Speech({self.duration:.2f} s @ {self.sample_rate} Hz, {len(self.phonemes)} phonemes, "
                f"lang={self.lang!r}, voice={self.voice!r}, text={self.text[:40]!r})")

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable metadata (no samples): text, language, voice, timeline, words."""
        return {
            "text": self.text,
            "lang": self.lang,
            "voice": self.voice,
            "sample_rate": int(self.sample_rate),
            "duration": round(self.duration, 5),
            "params": dict(self.params),
            "engine": f"espeak-ng {espeak_version()}",
            "phonemes": timeline_to_json(self.phonemes),
            "words": [{"word": w, "start": round(t, 5)} for w, t in self.words],
        }


@dataclass(frozen=True)
class VoiceInfo:
    """An espeak voice (language/dialect) from the data directory."""

    name: str  # e.g. "English (America)"
    identifier: str  # file under espeak-ng-data/lang, e.g. "gmw/en-US"
    languages: tuple[str, ...]  # language codes it serves, most specific first, e.g. ("en-us", "en")
    gender: str  # "male" / "female" / "" (espeak voices are mostly unspecified)


# --------------------------------------------------------------------------------------------
# Language codes users type -> espeak language codes
# --------------------------------------------------------------------------------------------

# Anything espeak itself knows (``list_voices()``) is accepted as is; these are the extra spellings.
_ALIASES: dict[str, str] = {
    "en": "en-us",
    "eng": "en-us",
    "english": "en-us",
    "en-uk": "en-gb",
    "british": "en-gb",
    "american": "en-us",
    "zh": "cmn",
    "zh-cn": "cmn",
    "zh-hans": "cmn",
    "zh-sg": "cmn",
    "zh-tw": "cmn",
    "zh-hant": "cmn",
    "zh-cmn": "cmn",
    "cmn-cn": "cmn",
    "mandarin": "cmn",
    "chinese": "cmn",
    "zh-hk": "yue",
    "zh-yue": "yue",
    "cantonese": "yue",
    "jp": "ja",
    "ja-jp": "ja",
    "japanese": "ja",
    "es-es": "es",
    "spa": "es",
    "spanish": "es",
    "es-mx": "es-419",
    "es-la": "es-419",
    "fr-fr": "fr",
    "fra": "fr",
    "french": "fr",
    "de-de": "de",
    "deu": "de",
    "ger": "de",
    "german": "de",
    "it-it": "it",
    "italian": "it",
    "pt-pt": "pt",
    "portuguese": "pt",
    "pt-br": "pt-br",
    "ru-ru": "ru",
    "russian": "ru",
    "ko-kr": "ko",
    "korean": "ko",
    "nl-nl": "nl",
    "no": "nb",
    "nb-no": "nb",
    "hi-in": "hi",
    "ar-sa": "ar",
}


# espeak lists "en" for British English first; users typing "en" here get American English.
_FORCED_ALIASES = frozenset({"en"})


def _norm_code(code: str) -> str:
    return code.strip().lower().replace("_", "-")


def _data_path() -> str:
    import espeakng_loader

    return str(espeakng_loader.get_data_path())


def _library_path() -> str:
    import espeakng_loader

    return str(espeakng_loader.get_library_path())


# --------------------------------------------------------------------------------------------
# Engine (process-global, guarded by _LOCK)
# --------------------------------------------------------------------------------------------

_LOCK = threading.Lock()


class _Engine:
    """The loaded library, initialised once per process. Every method requires ``_LOCK`` held."""

    def __init__(self) -> None:
        lib_path, data_path = _library_path(), _data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:  # pragma: no cover - broken installation
            raise SpeechError(f"cannot load espeak-ng library {lib_path}: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_GetCurrentVoice.argtypes = []
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
            self._set_seed.restype = None

        if not os.path.isfile(os.path.join(data_path, "phontab")):
            raise SpeechError(f"espeak-ng data directory {data_path} is missing or incomplete")
        rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS,
            200,  # ms of audio per callback
            data_path.encode(),
            espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_DONT_EXIT,
        )
        if rate <= 0:
            raise SpeechError(f"espeak-ng failed to initialise with data directory {data_path}")
        self.lib = lib
        self.native_rate = int(rate)
        self.pid = os.getpid()
        self.version = (lib.espeak_Info(None) or b"?").decode("utf-8", "replace")
        self._collector: _Collector | None = None
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        try:
            libc = ctypes.CDLL(None)
            self._srand = libc.srand  # espeak's breath/noise generators also draw from rand()
            self._srand.argtypes = [ctypes.c_uint]
            self._srand.restype = None
        except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
            self._srand = None
        # Snapshot of the waveform generators' hidden state, taken before the first utterance.
        self._pristine = _StateSnapshot.take(lib, lib_path)
        self.voices = self._list_voices()

    # -- callback --------------------------------------------------------------------------
    def _on_synth(self, wav, numsamples, events) -> int:  # called from inside espeak_Synth
        col = self._collector
        if col is None:
            return 0
        try:
            if wav and numsamples > 0:
                col.chunks.append(ctypes.string_at(wav, numsamples * 2))
            if events:
                i = 0
                while True:
                    ev = events[i]
                    if ev.type == espeakEVENT_LIST_TERMINATED:
                        break
                    if ev.type == espeakEVENT_PHONEME:
                        raw = bytes(ev.id.string).split(b"\0", 1)[0]
                        col.events.append((ev.type, ev.audio_position, ev.sample, raw))
                    elif ev.type == espeakEVENT_WORD:
                        col.events.append(
                            (ev.type, ev.audio_position, ev.sample, (ev.text_position, ev.length))
                        )
                    elif ev.type == espeakEVENT_SAMPLERATE:
                        col.sample_rate = int(ev.id.number) or col.sample_rate
                    i += 1
        except Exception as exc:  # never let an exception unwind through C
            col.error = exc
            return 1
        return 0

    # -- voices ----------------------------------------------------------------------------
    def _list_voices(self) -> list[VoiceInfo]:
        arr = self.lib.espeak_ListVoices(None)
        out: list[VoiceInfo] = []
        self.priorities: dict[tuple[str, str], int] = {}  # (identifier, code) -> priority
        i = 0
        while arr and arr[i]:
            v = arr[i].contents
            langs: list[str] = []
            if v.languages:
                addr = v.languages
                while True:
                    prio = ctypes.string_at(addr, 1)
                    if prio == b"\0":
                        break
                    name = ctypes.string_at(addr + 1)
                    langs.append(name.decode("utf-8", "replace"))
                    ident = (v.identifier or b"").decode("utf-8", "replace")
                    self.priorities[(ident, langs[-1])] = prio[0]
                    addr += 1 + len(name) + 1
            gender = {1: "male", 2: "female"}.get(int(v.gender), "")
            out.append(
                VoiceInfo(
                    name=(v.name or b"").decode("utf-8", "replace"),
                    identifier=(v.identifier or b"").decode("utf-8", "replace"),
                    languages=tuple(langs),
                    gender=gender,
                )
            )
            i += 1
        return out

    # -- synthesis -------------------------------------------------------------------------
    def synth(self, text: str, voice_spec: str, params: dict[int, int]) -> "_Collector":
        lib = self.lib
        # Make the utterance independent of what was spoken before (see _StateSnapshot); done
        # before the voice is selected so that the voice's own set-up is kept.
        self._pristine.restore()
        if lib.espeak_SetVoiceByName(voice_spec.encode("utf-8")) != EE_OK:
            raise SpeechError(f"espeak-ng could not select voice {voice_spec!r}")
        for key, value in params.items():
            if lib.espeak_SetParameter(key, int(value), 0) != EE_OK:
                raise SpeechError(f"espeak-ng rejected parameter {key}={value}")
        if self._set_seed is not None:
            self._set_seed(_SEED)
        if self._srand is not None:
            self._srand(_SEED)
        data = text.encode("utf-8", "ignore") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        col = _Collector(self.native_rate)
        self._collector = col
        try:
            err = lib.espeak_Synth(
                ctypes.cast(buf, ctypes.c_void_p), len(data), 0, POS_CHARACTER, 0,
                espeakCHARS_UTF8, None, None,
            )
            if err != EE_OK:
                raise SpeechError(f"espeak-ng synthesis failed (error {err}) for voice {voice_spec!r}")
            lib.espeak_Synchronize()
        finally:
            self._collector = None
        if col.error is not None:
            raise SpeechError(f"espeak-ng callback failed: {col.error!r}") from col.error
        return col


def _elf_local_objects(path: str) -> tuple[dict[str, int], dict[str, list[tuple[str, int, int]]]]:
    """Parse an ELF64 little-endian shared object's ``.symtab``.

    Returns (all symbol name -> value) and, per source file (``STT_FILE`` entries), its local data
    objects as (name, value, size).  Empty results when there is no symbol table (stripped).
    """
    import struct

    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}, {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, _ = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    values: dict[str, int] = {}
    by_file: dict[str, list[tuple[str, int, int]]] = {}
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        off, size, link, entsize = sec[4], sec[5], sec[6], sec[9]
        stroff = sections[link][4]
        current = ""
        for j in range(size // max(entsize, 1)):
            st_name, st_info, _, _, st_value, st_size = struct.unpack_from("<IBBHQQ", data, off + j * entsize)
            end = data.index(b"\0", stroff + st_name)
            name = data[stroff + st_name : end].decode("ascii", "replace")
            stype, sbind = st_info & 0xF, st_info >> 4
            if stype == 4:  # STT_FILE: the following local symbols come from this file
                current = name
                continue
            values.setdefault(name, st_value)
            if stype == 1 and sbind == 0 and st_size > 0:  # local STT_OBJECT
                by_file.setdefault(current, []).append((name, st_value, st_size))
    return values, by_file


class _StateSnapshot:
    """Restores espeak's hidden waveform-generator state before every utterance.

    espeak-ng keeps state across utterances in function-static variables that no API resets:
    the pitch "flutter" phase (``Flutter_ix`` in wavegen.c), the glottal cycle counter, the AGC,
    and the Klatt synthesiser's resonators/noise (klatt.c).  Without a reset the same request gives
    different audio depending on what was spoken before.  We locate these variables through the
    library's symbol table (the wheel's build is not stripped), copy their bytes right after
    ``espeak_Initialize`` and write them back before each synthesis.  Only variables whose bytes
    changed are written (constants live in read-only pages).  On a stripped build this degrades to
    a no-op: output is then deterministic only per process history.
    """

    _WAVEGEN = ("Flutter_ix", "cycle_count", "agc")

    def __init__(self, saved: list[tuple[int, bytes]], note: str) -> None:
        self.saved = saved
        self.note = note

    @classmethod
    def take(cls, lib: ctypes.CDLL, lib_path: str) -> "_StateSnapshot":
        try:
            values, by_file = _elf_local_objects(os.path.realpath(lib_path))
            anchor = values.get("espeak_Synth")
            if not anchor:
                return cls([], "no symbol table")
            base = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value - anchor
            objs = [o for o in by_file.get("klatt.c", [])]
            objs += [o for o in by_file.get("wavegen.c", []) if o[0].split(".")[0] in cls._WAVEGEN]
            if not any(o[0].startswith("Flutter_ix") for o in objs):
                return cls([], "flutter state not found")
            saved = [(base + value, ctypes.string_at(base + value, size)) for _, value, size in objs]
            return cls(saved, f"{len(saved)} state variables")
        except Exception as exc:  # pragma: no cover - exotic builds: fall back to no reset
            return cls([], f"snapshot failed: {exc!r}")

    def restore(self) -> None:
        for addr, data in self.saved:
            if ctypes.string_at(addr, len(data)) != data:
                ctypes.memmove(addr, data, len(data))


class _Collector:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.chunks: list[bytes] = []
        self.events: list[tuple[int, int, int, Any]] = []
        self.error: BaseException | None = None


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    """The process's engine; call with ``_LOCK`` held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


# Fork safety: never fork while another thread is inside espeak (its global buffers would be
# copied half-written and the lock copied "held").  The child gets a fresh, free lock and the
# parent's idle, initialised engine; SYNCHRONOUS mode starts no threads, so nothing else is lost.
def _before_fork() -> None:
    _LOCK.acquire()


def _after_fork_parent() -> None:
    _LOCK.release()


def _after_fork_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_parent, after_in_child=_after_fork_child
    )


# --------------------------------------------------------------------------------------------
# Voices, variants, languages
# --------------------------------------------------------------------------------------------


def espeak_version() -> str:
    """Version string of the bundled espeak-ng (e.g. ``"1.52.0"``)."""
    with _LOCK:
        return _engine().version


def list_voices() -> list[VoiceInfo]:
    """All espeak voices (languages and dialects) in the bundled data directory."""
    with _LOCK:
        return list(_engine().voices)


@lru_cache(maxsize=1)
def _variant_files() -> dict[str, str]:
    vdir = Path(_data_path()) / "voices" / "!v"
    if not vdir.is_dir():
        return {}
    return {p.name.lower(): p.name for p in sorted(vdir.iterdir()) if p.is_file()}


def list_variants() -> list[str]:
    """Voice variants usable as ``synthesize(voice=...)``: ``m1``..``m8``, ``f1``..``f5``, ``klatt``..."""
    return sorted(_variant_files().values(), key=lambda s: (s.lower(), s))


@lru_cache(maxsize=1)
def _language_table() -> dict[str, tuple[str, str]]:
    """Every accepted (normalised) code -> (espeak voice identifier, canonical language code).

    The identifier (``"gmw/en-US"``, ``"sit/cmn"``) is what selects the voice; the canonical code
    is the voice's own first language (``"en-us"``, ``"cmn"``).  When several voices serve a code,
    the one with espeak's best (lowest) priority wins; the aliases in ``_ALIASES`` come last and
    override (so ``"en"`` means American English, ``"en-gb"`` British).
    """
    with _LOCK:
        eng = _engine()
        voices, prios = list(eng.voices), dict(eng.priorities)
    best: dict[str, tuple[int, int, str, str]] = {}
    for order, v in enumerate(voices):
        if v.identifier.startswith("mb/") or "mbrola" in v.identifier or not v.languages:
            continue  # mbrola voices need external databases that are not bundled
        if not _has_dictionary(v):
            continue  # e.g. fo, kaa, xex: espeak would run on a stale translator and may crash
        canonical = _norm_code(v.languages[0])
        for code in v.languages:
            key = (prios.get((v.identifier, code), 5), order, v.identifier, canonical)
            c = _norm_code(code)
            if c not in best or key < best[c]:
                best[c] = key
    base = {c: (k[2], k[3]) for c, k in best.items()}
    table = dict(base)
    for alias, target in _ALIASES.items():
        if target in base and (alias not in base or alias in _FORCED_ALIASES):
            table[alias] = base[target]
    return table


def _has_dictionary(v: VoiceInfo) -> bool:
    """Whether the voice's pronunciation dictionary (``<name>_dict``) is in the data directory.

    The name comes from the voice file's ``dictionary`` line, else from its first ``language``
    (the part before ``-``), as espeak-ng does.
    """
    data = Path(_data_path())
    name = ""
    try:
        text = (data / "lang" / v.identifier).read_text("utf-8", "replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "dictionary":
            name = parts[1]
            break
    if not name:
        first = next((ln.split()[1] for ln in text.splitlines()
                      if len(ln.split()) >= 2 and ln.split()[0] == "language"), "")
        name = (first or (v.languages[0] if v.languages else "")).split("-")[0]
    return bool(name) and (data / f"{name}_dict").is_file()


def list_languages() -> list[str]:
    """Language codes accepted by :func:`synthesize` (espeak's codes plus common aliases)."""
    return sorted(_language_table())


def _lookup_language(lang: str) -> tuple[str, str]:
    if not isinstance(lang, str) or not lang.strip():
        raise SpeechError(f"no language given (got {lang!r}); supported: {', '.join(list_languages())}")
    table = _language_table()
    code = _norm_code(lang)
    if code in table:
        return table[code]
    # "fr-ca" -> "fr", "de-at" -> "de": fall back to the base language.
    base = code.split("-", 1)[0]
    if base in table:
        return table[base]
    raise SpeechError(
        f"unsupported TTS language {lang!r}; supported codes: {', '.join(list_languages())}"
    )


def resolve_language(lang: str) -> str:
    """Map a user-typed code (``"en"``, ``"zh-CN"``, ``"es"``...) to espeak's language code
    (``"en-us"``, ``"cmn"``, ``"es"``).  Raises :class:`SpeechError` naming the language and
    listing the supported codes.
    """
    return _lookup_language(lang)[1]


def _resolve_variant(voice: str | None) -> str | None:
    if voice is None:
        return None
    v = str(voice).strip().lstrip("+")
    if not v or v.lower() in ("default", "none"):
        return None
    files = _variant_files()
    if v.lower() not in files:
        raise SpeechError(
            f"unknown voice variant {voice!r}; available: {', '.join(list_variants())}"
        )
    return files[v.lower()]


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


def _clean_text(text: str) -> str:
    # Control characters (NUL would truncate the C string) become spaces; keep punctuation: it
    # drives espeak's pauses and intonation.
    out = []
    for ch in unicodedata.normalize("NFC", text):
        cat = unicodedata.category(ch)
        out.append(" " if cat in ("Cc", "Cf", "Cs", "Co") and ch not in "\n\t" else ch)
    return "".join(out)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst or x.size == 0:
        return x.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(int(src), int(dst))
    y = resample_poly(x.astype(np.float64), int(dst) // g, int(src) // g)
    return y.astype(np.float32)


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        iv = int(round(float(value)))
    except (TypeError, ValueError):
        raise SpeechError(f"TTS {name} must be a number in [{lo}, {hi}], got {value!r}") from None
    if not lo <= iv <= hi:
        raise SpeechError(f"TTS {name} must be in [{lo}, {hi}], got {value!r}")
    return iv


def synthesize(
    text: str,
    lang: str = "en",
    voice: str | None = None,
    rate: int = 175,
    pitch: int = 50,
    sample_rate: int = 16000,
    *,
    pitch_range: int = 50,
    volume: int = 100,
    word_gap: int = 0,
) -> Speech:
    """Speak ``text`` in ``lang`` and return the audio with its phoneme/word timeline.

    - ``lang``: a code from :func:`list_languages` (``"en"`` = American English, ``"en-gb"``,
      ``"zh"``/``"cmn"`` = Mandarin, ``"es"``, ``"fr"``, ``"de"``, ``"ja"``, ...).
    - ``voice``: a variant from :func:`list_variants` (``"m1"``, ``"f2"``, ``"klatt"``...) or None.
    - ``rate``: words per minute, 80..450 (espeak's 175 is normal).
    - ``pitch`` / ``pitch_range``: 0..100 (50 = normal).  ``volume`` 0..200, ``word_gap`` in 10 ms.
    - ``sample_rate``: output rate; espeak renders at 22050 Hz and the audio is resampled.

    Commas, full stops etc. keep their pauses (they appear as ``_``-events in the timeline).
    Deterministic: the same arguments give bit-identical audio.  Thread- and fork-safe (serialised).
    """
    if not isinstance(text, str):
        raise SpeechError(f"TTS text must be a string, got {type(text).__name__}")
    identifier, espeak_lang = _lookup_language(lang)
    variant = _resolve_variant(voice)
    clean = _clean_text(text)
    if not clean.strip():
        raise SpeechError(f"nothing to say: the text for language {lang!r} is empty or whitespace")
    rate_i = _check_int("rate", rate, RATE_MIN, RATE_MAX)
    pitch_i = _check_int("pitch", pitch, 0, 100)
    range_i = _check_int("pitch_range", pitch_range, 0, 100)
    volume_i = _check_int("volume", volume, 0, 200)
    gap_i = _check_int("word_gap", word_gap, 0, 1000)
    sr_out = _check_int("sample_rate", sample_rate, 4000, 192000)

    voice_spec = identifier + (f"+{variant}" if variant else "")
    params = {
        espeakRATE: rate_i,
        espeakPITCH: pitch_i,
        espeakRANGE: range_i,
        espeakVOLUME: volume_i,
        espeakWORDGAP: gap_i,
    }
    with _LOCK:
        col = _engine().synth(clean, voice_spec, params)

    native = col.sample_rate
    pcm = np.frombuffer(b"".join(col.chunks), dtype="<i2").astype(np.float32) / 32768.0
    if pcm.size == 0 or not np.any(pcm):
        raise SpeechError(
            f"espeak-ng produced no audio for {text!r} in language {lang!r} (nothing pronounceable?)"
        )
    samples = np.clip(_resample(pcm, native, sr_out), -1.0, 1.0).astype(np.float32)
    total = pcm.size / float(native)

    phonemes, words = _timeline(col.events, native, total, clean)
    return Speech(
        samples=samples,
        sample_rate=sr_out,
        phonemes=phonemes,
        words=words,
        text=text,
        lang=espeak_lang,
        voice=variant or "default",
        params={"rate": rate_i, "pitch": pitch_i, "pitch_range": range_i, "volume": volume_i,
                "word_gap": gap_i},
    )


def _event_time(audio_ms: int, sample: int, rate: int) -> float:
    """Seconds of an event; ``sample`` is exact, ``audio_position`` is whole milliseconds."""
    t_ms = audio_ms / 1000.0
    if sample > 0:
        t_s = sample / float(rate)
        if abs(t_s - t_ms) < 0.003:
            return t_s
    return t_ms


_EDGE_PUNCT = "".join(
    chr(c) for c in range(0x20, 0x3100) if unicodedata.category(chr(c)).startswith(("P", "Z", "S"))
) + "\u3000\uff01\uff0c\uff0e\uff1a\uff1b\uff1f\uff08\uff09\u3001\u3002"


def _timeline(
    events: list[tuple[int, int, int, Any]], rate: int, total: float, text: str
) -> tuple[list[PhonemeEvent], list[tuple[str, float]]]:
    raw: list[tuple[str, float]] = []
    word_events: list[tuple[float, int, int]] = []
    for etype, ms, sample, payload in events:
        t = min(max(_event_time(ms, sample, rate), 0.0), total)
        if etype == espeakEVENT_PHONEME:
            sym = payload.decode("utf-8", "replace").strip()
            # "(en)" / "(ja)": language switches (e.g. Latin letters inside Mandarin), not sounds.
            if sym and not (sym.startswith("(") and sym.endswith(")")):
                raw.append((sym, t))
        elif etype == espeakEVENT_WORD:
            pos, length = payload
            word_events.append((t, max(int(pos) - 1, 0), max(int(length), 0)))

    # A word runs from its position to the next word's position (espeak's own length is unreliable
    # for CJK and elided words such as French "m'appelle"), trimmed of spaces and punctuation.
    words: list[tuple[str, float]] = []
    for i, (t, pos, length) in enumerate(word_events):
        nxt = next((p for _, p, _ in word_events[i + 1 :] if p > pos), None)
        span = text[pos:nxt] if nxt is not None else text[pos:]
        word = span.strip().split()[0] if span.strip() else ""
        word = word.strip(_EDGE_PUNCT)
        if not word and length:
            word = text[pos : pos + length].strip().strip(_EDGE_PUNCT)
        if word:
            words.append((word, t))

    # Contiguous spans; zero-length events (e.g. a "_" boundary at the same instant as the next
    # phoneme) carry no time and are dropped, so starts are strictly increasing.
    phonemes: list[PhonemeEvent] = []
    for i, (sym, t) in enumerate(raw):
        end = raw[i + 1][1] if i + 1 < len(raw) else total
        end = max(min(end, total), t)
        if end - t > 1e-6:
            phonemes.append(PhonemeEvent(sym, float(t), float(end)))
    return phonemes, words
