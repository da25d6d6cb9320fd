"""The input of a batch dubbing job: a manifest (CSV, JSONL or Parquet) or two folders paired by
file stem, turned into one :class:`DubTask` per row.

Columns: ``id``; ``video`` (or ``image``); ``audio`` (or ``text`` with ``lang`` / ``language`` and
optional ``voice``); optional ``output``; optional per-row options, one column per request option of
``lipsync.options`` (``num_steps``, ``guidance_scale``, ``seed``, ``face``, ``loop``,
``silence_gating``, ``overlap``, ``deepcache``: the names of the flags). An empty cell takes the
job's default. A row with both ``audio`` and ``text`` is driven by the audio
(the text is taken as its transcript, as in ``lipsync synth`` manifests). Other columns are ignored
(and listed once). Relative media paths are relative to the manifest's folder; a relative
``output`` is relative to the job's output directory (default ``<output_dir>/<id>.mp4``).

A problem with one row (a missing field, a bad option value) makes that row an error, not the
job; ids and outputs must be unique (the job's completion records are keyed by them), which is
checked for the whole manifest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass, field

from lipsync.errors import LipSyncError, MediaNotFoundError
from lipsync.media.formats import AUDIO_SUFFIXES, IMAGE_SUFFIXES, OUTPUT_SUFFIXES, VIDEO_SUFFIXES
from lipsync.media.uri import is_remote, join, list_files, read_bytes, suffix_of
from lipsync.options import REQUEST_OPTIONS, GenerateOptions, options_from

# One column per request option, named like its flag. The job-wide batch_size is not a column: the
# denoise pool batches windows of any videos (an unknown column is listed once and ignored).
OPTION_COLUMNS = tuple(o.name for o in REQUEST_OPTIONS)
KNOWN_COLUMNS = {"id", "video", "image", "audio", "text", "lang", "language", "voice", "output", *OPTION_COLUMNS}


class ManifestError(LipSyncError):
    """The job's input as a whole is unusable (unreadable manifest, duplicate ids ...)."""


@dataclass
class DubTask:
    """One video to dub: a manifest row with its options resolved."""

    id: str
    output: str
    video: str | None = None
    image: str | None = None
    audio: str | None = None
    text: str | None = None
    lang: str = "en"
    voice: str | None = None
    options: GenerateOptions = field(default_factory=GenerateOptions)
    fingerprint: str = ""  # what the output depends on (see batch.fingerprint); kept in its completion record

    @property
    def source(self) -> str:
        return self.video if self.video is not None else self.image

    @property
    def speech(self) -> str:
        return self.audio if self.audio is not None else f"text:{self.lang}"


@dataclass
class RowError:
    """A manifest row that cannot be run: it becomes an error row of the results."""

    id: str
    message: str
    output: str | None = None


@dataclass
class JobInput:
    tasks: list[DubTask]
    errors: list[RowError]
    ignored_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # every id, in manifest order

    def __post_init__(self):
        if not self.order:
            self.order = [t.id for t in self.tasks] + [e.id for e in self.errors]


# -- reading -----------------------------------------------------------------------------------
def read_manifest(uri: str) -> tuple[list[dict], str]:
    """The rows of a CSV / JSONL / Parquet manifest (values as read; format from the extension),
    and the folder relative paths refer to."""
    suffix = suffix_of(uri)
    if not is_remote(uri) and not os.path.isfile(uri):
        raise ManifestError(f"{uri}: cannot read the manifest (no such file)")
    try:
        data = read_bytes(uri)
    except MediaNotFoundError as err:
        raise ManifestError(f"{uri}: cannot read the manifest ({err.problem})") from err
    try:
        if suffix == ".csv":
            # A row with more cells than the header keeps them under a named (ignored) column.
            rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig")), restkey="(cells past the header)"))
        elif suffix in (".jsonl", ".ndjson", ".json"):
            text = data.decode("utf-8-sig").strip()
            if suffix == ".json" and text.startswith("["):
                rows = json.loads(text)
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            raise ManifestError(f"{uri}: unknown manifest format {suffix or '(no extension)'!r}: "
                                "use .csv, .jsonl or .parquet")
    except ManifestError:
        raise
    except Exception as err:  # a parser's own error: say which file and why, in one line
        raise ManifestError(f"{uri}: cannot parse the manifest ({type(err).__name__}: {err})") from err
    if not all(isinstance(r, dict) for r in rows):
        raise ManifestError(f"{uri}: every manifest row must be an object with named columns")
    base = posixpath.dirname(uri) if is_remote(uri) else os.path.dirname(os.path.abspath(uri))
    return rows, base


def _list_dir(uri: str) -> list[str]:
    try:
        return list_files(uri)
    except MediaNotFoundError as err:  # the job's input as a whole is unusable
        raise ManifestError(str(err)) from None


def _stem(uri: str) -> str:
    name = posixpath.basename(uri.rstrip("/")) if is_remote(uri) else os.path.basename(uri)
    return name[: len(name) - len(suffix_of(name))] if suffix_of(name) else name


def pair_folders(videos: str, audios: str) -> tuple[list[dict], list[str]]:
    """Rows pairing each video (or image) in ``videos`` with the audio of the same stem in
    ``audios``; a video without its audio becomes a row that fails with a clear message."""
    media = [u for u in _list_dir(videos) if suffix_of(u) in VIDEO_SUFFIXES + IMAGE_SUFFIXES]
    sounds = {}
    for u in _list_dir(audios):
        if suffix_of(u) in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
            sounds.setdefault(_stem(u), u)
    if not media:
        raise ManifestError(f"{videos}: no video or image files in the folder")
    rows, used = [], set()
    for u in media:
        key = "image" if suffix_of(u) in IMAGE_SUFFIXES else "video"
        stem = _stem(u)
        rows.append({"id": stem, key: u, "audio": sounds.get(stem, "")})
        used.add(stem)
    notes = []
    unpaired = sorted(set(sounds) - used)
    if unpaired:
        notes.append(f"{len(unpaired)} audio file(s) in {audios} have no video of the same name: "
                     + ", ".join(unpaired[:5]) + (" ..." if len(unpaired) > 5 else ""))
    return rows, notes


# -- rows -> tasks -----------------------------------------------------------------------------
def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _resolve(path: str, base: str | None) -> str:
    path = str(path).strip()
    if base is None or is_remote(path) or os.path.isabs(path) or path.startswith("file://"):
        return path
    return posixpath.join(base, path) if is_remote(base) else os.path.normpath(os.path.join(base, path))


def row_options(row: dict, defaults: GenerateOptions) -> GenerateOptions:
    """``defaults`` with the row's non-empty option cells applied (ValueError names a bad cell)."""
    return options_from(row, defaults, REQUEST_OPTIONS)


def _check_id(raw) -> str:
    if _blank(raw):
        raise ValueError("id is empty")
    ident = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():  # not int(raw): inf has none
        ident = str(int(raw))
    parts = ident.replace("\\", "/").split("/")
    if ident.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"id {ident!r} is not usable as a file name (no empty, '.' or '..' parts)")
    return ident


def build_tasks(rows: list[dict], output_dir: str, defaults: GenerateOptions, base: str | None = None,
                lang: str = "en", source: str = "manifest") -> JobInput:
    """One task per row; rows that cannot run become RowErrors. Duplicate ids or outputs are a
    ManifestError (resume and completion records are keyed by them)."""
    if rows and not any("id" in r for r in rows):
        raise ManifestError(f"{source}: no 'id' column (columns: {', '.join(rows[0])})")
    ignored = sorted({k for r in rows for k in r} - KNOWN_COLUMNS)
    tasks: list[DubTask] = []
    errors: list[RowError] = []
    seen_ids: dict[str, int] = {}
    seen_out: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        try:
            ident = _check_id(row.get("id"))
        except ValueError as err:
            raise ManifestError(f"{source}: row {n}: {err}") from None
        if ident in seen_ids:
            raise ManifestError(f"{source}: id {ident!r} appears twice (rows {seen_ids[ident]} and {n}): "
                                "ids must be unique")
        seen_ids[ident] = n
        out = row.get("output")
        output = (join(output_dir, f"{ident}.mp4") if _blank(out) else
                  _resolve(str(out), output_dir))
        key = output if is_remote(output) else os.path.abspath(output)
        if key in seen_out:
            raise ManifestError(f"{source}: ids {seen_out[key]!r} and {ident!r} write the same output {output}")
        seen_out[key] = ident
        try:
            tasks.append(_task(row, ident, output, defaults, base, lang))
        except ValueError as err:
            errors.append(RowError(ident, f"{source} row {n} (id {ident}): {err}", output))
    return JobInput(tasks, errors, ignored, order=list(seen_ids))


def _task(row: dict, ident: str, output: str, defaults: GenerateOptions, base, lang) -> DubTask:
    video, image = row.get("video"), row.get("image")
    if not _blank(video) and not _blank(image):
        raise ValueError("give a video or an image, not both")
    if _blank(video) and _blank(image):
        raise ValueError("no video or image")
    audio, text = row.get("audio"), row.get("text")
    if _blank(audio) and _blank(text):
        raise ValueError("no audio or text")
    row_lang = row.get("lang") if not _blank(row.get("lang")) else row.get("language")
    task = DubTask(
        id=ident, output=output,
        video=None if _blank(video) else _resolve(video, base),
        image=None if _blank(image) else _resolve(image, base),
        audio=None if _blank(audio) else _resolve(audio, base),
        text=None if not _blank(audio) else str(text),
        lang=lang if _blank(row_lang) else str(row_lang).strip(),
        voice=None if _blank(row.get("voice")) else str(row["voice"]).strip(),
        options=row_options(row, defaults))
    if task.image is not None and suffix_of(task.image) not in IMAGE_SUFFIXES:
        raise ValueError(f"image {task.image}: not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if suffix_of(output) not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {output}: must end in {', '.join(sorted(OUTPUT_SUFFIXES))}")
    return task


def load_job_input(output_dir: str, defaults: GenerateOptions, manifest: str | None = None,
                   videos: str | None = None, audios: str | None = None, lang: str = "en") -> JobInput:
    """Tasks of a job from ``manifest``, or from ``videos`` + ``audios`` paired by stem."""
    if manifest is not None:
        rows, base = read_manifest(manifest)
        if not rows:
            raise ManifestError(f"{manifest}: the manifest has no rows")
        job = build_tasks(rows, output_dir, defaults, base, lang, source=manifest)
        return job
    if videos is None or audios is None:
        raise ManifestError("give --manifest FILE, or --videos DIR and --audios DIR")
    rows, notes = pair_folders(videos, audios)
    job = build_tasks(rows, output_dir, defaults, None, lang, source=videos)
    unpaired = {r["id"] for r in rows if not r["audio"]}
    for e in job.errors:  # a video without its audio: say where the audio was looked for
        if e.id in unpaired:
            source = next(r.get("video") or r.get("image") for r in rows if r["id"] == e.id)
            e.message = f"{source}: no audio file named {e.id}.* in {audios}"
    job.notes += notes
    return job
