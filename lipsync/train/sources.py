"""Finding the clips of a training dataset (driver side, no decoding): local folders or ``s3://``.

Layouts recognised under the input folder, in this order:

* a ``lipsync synth`` corpus: ``clip_xxxxx/{video.mp4, audio.wav, meta.json}``: one clip per folder
  holding ``meta.json`` (its ground truth: split, language, identity, per-frame jaw opening and
  speech activity, is read by the worker and kept in the segments' metadata);
* the seed documentation's layout ``{train,val}/{videos,audios}/``: videos and audios paired by file
  stem; a video without an audio file of the same stem uses its own audio track;
* any other folder: every video under it (recursively), each with its own audio track, split
  ``train``.

Clip ids are unique, file-system safe names made from the path (``train-speaker1``, ``clip_00042``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from lipsync.media.formats import AUDIO_SUFFIXES, VIDEO_SUFFIXES

SPLIT_DIRS = ("train", "val", "test")


@dataclass
class ClipTask:
    """One input clip: a video, its audio (None = the video's own track), its split and, for a
    synthetic corpus, the ``meta.json`` to read its ground truth from."""

    id: str
    video: str
    audio: str | None = None
    split: str = "train"
    meta: str | None = None
    extra: dict = field(default_factory=dict)


def _fs(uri: str):
    """(filesystem, root path, protocol prefix to put back on listed paths)."""
    import fsspec

    from lipsync.media.uri import filesystem, is_remote, local_path

    if not is_remote(uri):
        return fsspec.filesystem("file"), os.path.abspath(local_path(uri)), ""
    fs, path = filesystem(uri)
    return fs, path.rstrip("/"), uri.split("://", 1)[0] + "://"


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def safe_id(text: str) -> str:
    """A file-system safe clip id (letters, digits, ``._-``); long names keep a hash suffix."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "clip"
    if len(s) > 100:
        s = s[:80] + "-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return s


def held_out(clip_id: str, fraction: float) -> bool:
    """Deterministic choice of a ``fraction`` of clips (by a hash of the id) for validation."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha256(clip_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def discover(input_uri: str, val_fraction: float = 0.0) -> tuple[list[ClipTask], list[str]]:
    """The clips under ``input_uri`` and notes for the user (e.g. a video paired with no audio).

    ``val_fraction`` moves a deterministic share of the ``train`` clips whose layout names no
    validation split to split ``val`` (a synthetic corpus made in one go has only ``train``)."""
    fs, root, proto = _fs(str(input_uri))
    if not fs.exists(root):
        raise FileNotFoundError(f"{input_uri}: no such folder")
    if not fs.isdir(root):
        raise NotADirectoryError(f"{input_uri}: not a folder (give the dataset's folder)")
    files = sorted(p for p in fs.find(root) if not os.path.basename(p).startswith("."))
    rel = {p: os.path.relpath(p, root) if not proto else p[len(root) + 1:] for p in files}
    uri = lambda p: proto + p  # noqa: E731
    notes: list[str] = []
    tasks: list[ClipTask] = []

    metas = [p for p in files if os.path.basename(p) == "meta.json"]
    corpus_dirs = {os.path.dirname(p) for p in metas}
    for d in sorted(corpus_dirs):
        video = next((p for p in files if os.path.dirname(p) == d and os.path.basename(p) == "video.mp4"), None)
        if video is None:
            notes.append(f"{uri(d)}: meta.json without video.mp4, skipped")
            continue
        audio = os.path.join(d, "audio.wav") if proto == "" else d + "/audio.wav"
        name = rel[video].rsplit("/", 1)[0] if "/" in rel[video] else os.path.basename(d)
        tasks.append(ClipTask(safe_id(name.replace(os.sep, "-")), uri(video),
                              uri(audio) if audio in rel else None, "train", uri(d + "/meta.json")))

    rest = [p for p in files if os.path.dirname(p) not in corpus_dirs]
    used: set[str] = set()
    for split in SPLIT_DIRS:
        vdir = f"{split}/videos/"
        adir = f"{split}/audios/"
        videos = [p for p in rest if rel[p].replace(os.sep, "/").startswith(vdir) and _suffix(p) in VIDEO_SUFFIXES]
        audios = {os.path.splitext(rel[p].replace(os.sep, "/")[len(adir):])[0]: p for p in rest
                  if rel[p].replace(os.sep, "/").startswith(adir) and _suffix(p) in AUDIO_SUFFIXES + VIDEO_SUFFIXES}
        for v in videos:
            stem = os.path.splitext(rel[v].replace(os.sep, "/")[len(vdir):])[0]
            a = audios.get(stem)
            if a is None:
                notes.append(f"{uri(v)}: no audio named {stem}.* in {split}/audios/: using the video's own track")
            tasks.append(ClipTask(safe_id(f"{split}-{stem}".replace("/", "-")), uri(v), uri(a) if a else None, split))
            used.add(v)
            if a:
                used.add(a)
    seed_layout = any(rel[p].replace(os.sep, "/").split("/")[0] in SPLIT_DIRS for p in used)
    for p in rest:
        if p in used or _suffix(p) not in VIDEO_SUFFIXES:
            continue
        r = rel[p].replace(os.sep, "/")
        if seed_layout and r.split("/")[0] in SPLIT_DIRS and "/audios/" in f"/{r}":
            continue  # an audio track stored as a video container
        tasks.append(ClipTask(safe_id(os.path.splitext(r)[0].replace("/", "-")), uri(p), None, "train"))

    seen: dict[str, int] = {}
    for t in tasks:  # ids unique whatever the names
        if t.id in seen:
            seen[t.id] += 1
            t.id = f"{t.id}-{seen[t.id]}"
        else:
            seen[t.id] = 0
        if t.meta is None and t.split == "train" and held_out(t.id, val_fraction):
            t.split = "val"
    if val_fraction > 0:
        for t in tasks:
            if t.meta is not None:
                t.extra["val_fraction"] = val_fraction  # the worker decides once it has read the split
    return tasks, notes
