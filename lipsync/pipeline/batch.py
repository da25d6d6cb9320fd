"""The batch job's units of work, without Ray: ``pipelines/dub.py`` runs them in Ray worker pools.

* :class:`PrepareVideo` (CPU, one video at a time): the job set up by ``lipsync.pipeline.job``
  (speech + audio features, frames + face track + alignment, windows with aligned crops and audio
  tokens, as ``LipSyncPipeline`` does), the windows grouped into :class:`Shard` s of a few
  consecutive windows (the overlap between windows comes with them), then one :class:`VideoPlan`
  (per-frame alignment matrices, source frame count, shard count). Frames are not kept.
* :func:`denoise_shards` (GPU, any shards of any videos): every window of the shards through the
  :class:`~lipsync.pipeline.stages.Denoiser`, batched; the crops and tokens are replaced by the
  regenerated crops.
* :func:`finish_video` (CPU, one video): decodes the source again, cross-fades the windows, pastes
  each crop back, encodes with the speech (atomic write), then writes the completion record.

Everything is built from ``lipsync.pipeline.job`` and ``lipsync.pipeline.stages``, the setup and
stages of ``LipSyncPipeline``. Run in a plain loop (prepare every task, ``denoise_shards`` over all
shards, ``finish_video`` per task) they are the batch job in one process (tests/test_dub.py does that).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.errors import LipSyncError, MediaError
from lipsync.media.formats import FPS
from lipsync.media.uri import exists, join, remove_stale_partials
from lipsync.pipeline.denoise import DenoiseSettings
from lipsync.pipeline.frames import FrameSource
from lipsync.pipeline.inputs import load_native_audio
from lipsync.pipeline.job import NO_FACE_NOTE, JobSetup
from lipsync.pipeline.manifest import DubTask
from lipsync.pipeline.stages import CompositeSpec, Compositor, Denoiser, WindowInput, composite_spec_of
from lipsync.pipeline.windows import Window

RECORD_DIR = "_done"
RESULTS_FILE = "results.parquet"


@dataclass
class Shard:
    """Consecutive windows of one video: inputs (CPU -> GPU) or regenerated crops (GPU -> finish)."""

    id: str
    index: int
    windows: list[Window]
    settings: DenoiseSettings
    seed: int
    crops: list[np.ndarray] | None = None  # per window (F, S, S, 3) uint8
    tokens: list[np.ndarray] | None = None  # per window (F, T, D) float32
    generated: list[np.ndarray] | None = None  # per window (F, S, S, 3) uint8
    seconds: float = 0.0  # denoising time spent on this shard
    where: str = ""  # who denoised it (node), for the results table
    source: str = ""  # the video (or image) it comes from, for error messages


@dataclass
class VideoPlan:
    """What the finish stage needs besides the regenerated crops."""

    task: DubTask
    n_out: int  # output frames (the speech's length at 25 fps)
    n_src: int  # source frames found by the first pass
    is_image: bool
    matrices: np.ndarray  # (n_out, 2, 3) float64 frame -> crop alignment; NaN where no face
    points: np.ndarray  # (n_out, K, 2) float32 the composite's crop points (crop_points); NaN where no face
    n_shards: int
    overlap: int
    composite: CompositeSpec  # the profile's composite: composite_spec_of(profile)
    frames_with_face: int
    native: np.ndarray | None = None  # the speech for text tasks (audio files are read again)
    native_rate: int | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # preparation time
    where: str = ""
    no_face: bool = False  # no frame had a face and the policy is passthrough: the frames go out as they are


STATUSES = ("ok", "no_face", "skipped", "error")
WRITTEN = ("ok", "no_face")  # statuses whose output was written by this run


@dataclass
class Result:
    """One row of the job's results table."""

    id: str
    status: str  # ok | no_face | skipped | error (STATUSES)
    output: str | None = None
    error: str | None = None
    frames: int | None = None
    frames_with_face: int | None = None
    media_seconds: float | None = None
    processing_seconds: float | None = None
    sync_score: float | None = None  # set by an evaluator (see pipelines/dub.py); None without one
    stages: str | None = None  # JSON: per stage, where it ran and how long it took
    notes: str | None = None


def describe_error(err: BaseException, task: DubTask | None = None) -> str:
    """One line: the typed errors already read ``"<file>: <problem>"``; anything else gets the
    task's source file in front so the row still says which input failed."""
    if isinstance(err, LipSyncError):
        return str(err).splitlines()[0] if isinstance(err, MediaError) else " ".join(str(err).split())
    where = f"{task.source}: " if task is not None else ""
    text = " ".join(str(err).split()) or "(no message)"
    return f"{where}{type(err).__name__}: {text}"


class PrepareVideo:
    """CPU stage: one task -> its shards, then its plan. Reuse one instance for many videos."""

    def __init__(self, setup: JobSetup, shard_windows: int = 4, detector=None):
        self.setup = setup
        self.profile = setup.profile
        self.shard_windows = max(1, int(shard_windows))
        self._detector = detector

    @property
    def detector(self):
        if self._detector is None:
            from lipsync.face import FaceDetector

            self._detector = FaceDetector(max_faces=8)
        return self._detector

    def __call__(self, task: DubTask) -> Iterator[Shard | VideoPlan]:
        t0 = time.perf_counter()
        opts = task.options
        n_shards = with_face = 0
        spent = 0.0  # time already accounted to yielded shards' preparation
        with self.setup.open(video=task.video, image=task.image, audio=task.audio, text=task.text, lang=task.lang,
                             voice=task.voice, options=opts, detector=self.detector) as job:
            n_out = job.num_frames
            matrices = np.full((n_out, 2, 3), np.nan)
            points = None
            windows: list[WindowInput] = []

            def shard() -> Shard:
                return Shard(task.id, n_shards, [w.window for w in windows], job.settings, int(opts.seed),
                             crops=[w.crops for w in windows], tokens=[w.tokens.numpy() for w in windows],
                             source=job.source)

            for step in job.steps():
                if step.matrix is not None:
                    matrices[step.item.index] = step.matrix
                    if points is None:
                        points = np.full((n_out, *step.points.shape), np.nan, np.float32)
                    points[step.item.index] = step.points
                    with_face += 1
                windows += step.windows
                if len(windows) >= self.shard_windows:
                    pause = time.perf_counter()
                    yield shard()
                    spent -= time.perf_counter() - pause  # time waiting downstream is not ours
                    n_shards += 1
                    windows = []
        # No face anywhere: NoFaceError (an error row), or, by default in dub, passthrough.
        no_face = job.check_faces(with_face, default="passthrough")
        if windows:
            yield shard()
            n_shards += 1
        driving = job.speech.driving
        native = rate = None
        if task.audio is None:  # synthesised speech: small, and costly to make again
            native, rate = driving.native, driving.native_rate
        notes = job.notes() + ([NO_FACE_NOTE] if no_face else [])
        composite = composite_spec_of(self.profile, task.options.composite)
        yield VideoPlan(task, n_out, int(job.frames.n_src or 0), task.image is not None, matrices, points, n_shards,
                        job.planner.overlap, composite, with_face, native, rate, notes,
                        time.perf_counter() - t0 + spent, no_face=no_face)


def denoise_shards(denoiser: Denoiser, shards: list[Shard], max_batch: int | None = None) -> list[Shard]:
    """Regenerate every window of ``shards`` (any videos), batching windows of the same length and
    settings ``max_batch`` at a time; returns the shards with ``generated`` set and inputs dropped."""
    inputs, settings, seeds = [], [], []
    for sh in shards:
        for w, c, t in zip(sh.windows, sh.crops, sh.tokens):
            inputs.append(WindowInput(w, c, torch.from_numpy(np.asarray(t))))
            settings.append(sh.settings)
            seeds.append(sh.seed)
    t0 = time.perf_counter()
    gen = denoiser(inputs, settings, seeds, max_batch) if inputs else []
    dt = time.perf_counter() - t0
    k = 0
    for sh in shards:
        n = len(sh.windows)
        sh.generated = gen[k:k + n]
        sh.seconds += dt * n / max(len(inputs), 1)
        sh.crops = sh.tokens = None
        k += n
    return shards


def finish_video(plan: VideoPlan, shards: list[Shard], output_dir: str | None = None, evaluator=None,
                 extra: dict | None = None) -> Result:
    """Paste the regenerated crops back into the source frames (decoded again), encode with the
    speech and write the output atomically; then, if ``output_dir`` is given, the completion
    record. ``evaluator(output, task) -> float | None`` fills ``sync_score``. A plan without a face
    (``plan.no_face``, no shards) writes the source frames untouched with the speech: status
    ``no_face``."""
    from lipsync.media.uri import local_input
    from lipsync.media.writer import VideoWriter

    t0 = time.perf_counter()
    task = plan.task
    compositor = Compositor(plan.composite, plan.overlap)
    # Windows are blended in as the frames reach them: memory holds one window span, not the video.
    pending = sorted(((w, g) for sh in shards for w, g in zip(sh.windows, sh.generated)),
                  key=lambda p: p[0].start, reverse=True)
    if plan.native is not None:
        native, rate = plan.native, plan.native_rate
    else:
        native, rate = load_native_audio(task.audio)
    remove_stale_partials(task.output)
    pasted = 0
    source_uri = task.source
    with local_input(source_uri) as local, VideoWriter(task.output, fps=FPS, audio=native, audio_rate=rate) as writer:
        source = FrameSource(local, plan.n_out, None, loop=task.options.loop, is_image=plan.is_image,
                             name=source_uri)
        for item in source.replay(plan.n_src):
            while pending and pending[-1][0].start <= item.index:
                compositor.add(*pending.pop())
            m = plan.matrices[item.index]
            frame, done = compositor.frame(item.index, item.image, None if np.isnan(m[0, 0]) else m,
                                           None if plan.points is None else plan.points[item.index])
            pasted += done
            writer.write(frame)
        if writer.frames_written != plan.n_out:
            raise MediaError(source_uri, f"wrote {writer.frames_written} frames, expected {plan.n_out}")
    finish_s = time.perf_counter() - t0
    score = None
    if evaluator is not None:
        score = evaluator(task.output, task)
        score = None if score is None else float(score)
    stages = {"prepare": {"s": round(plan.seconds, 3), "node": plan.where},
              "denoise": {"s": round(sum(sh.seconds for sh in shards), 3),
                          "nodes": sorted({sh.where for sh in shards if sh.where})},
              "finish": {"s": round(finish_s, 3), "node": (extra or {}).get("node", "")}}
    result = Result(task.id, "no_face" if plan.no_face else "ok", task.output, None, plan.n_out, pasted, plan.n_out / FPS,
                    plan.seconds + sum(sh.seconds for sh in shards) + finish_s, score, json.dumps(stages),
                    "; ".join(plan.notes) or None)
    if output_dir is not None:
        write_record(output_dir, result, task)
    return result


# -- completion records and results ------------------------------------------------------------
def record_uri(output_dir: str, ident: str) -> str:
    return join(output_dir, RECORD_DIR, urllib.parse.quote(ident, safe="") + ".json")


_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.[0-9a-f]{12}\.partial(?P<suffix>\.[^.]*)?$")


def sweep_partials(output_dir: str, tasks: list[DubTask]) -> int:
    """Delete the temporary files (``.<name>.<12 hex>.partial<ext>``, see ``lipsync.media.uri``) that
    writers killed with an earlier run of this job left beside its outputs, completion records and
    results table, so nothing half-written stays visible under the output prefix. Local outputs
    only (remote ones are staged outside the bucket and uploaded whole). One listing per folder.
    Returns how many were deleted."""
    import os

    from lipsync.media.uri import is_remote, local_path

    finals: dict[str, set[str]] = {}
    uris = [t.output for t in tasks] + [record_uri(output_dir, t.id) for t in tasks]
    uris.append(join(output_dir, RESULTS_FILE))
    for uri in uris:
        if uri and not is_remote(uri):
            folder, name = os.path.split(os.path.abspath(local_path(uri)))
            finals.setdefault(folder, set()).add(name)
    removed = 0
    for folder, names in finals.items():
        try:
            listing = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listing:
            m = _PARTIAL.match(entry)
            if m and m.group("stem") + (m.group("suffix") or "") in names:
                try:
                    os.remove(os.path.join(folder, entry))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def fingerprint(task: DubTask, model: str) -> str:
    """A digest of what ``task``'s output depends on: its inputs (by name), speech, options and the
    model (``model`` names the profile and weights). A rerun skips an output only when its record
    has the same fingerprint; change an option or the model and the video is made again."""
    import dataclasses
    import hashlib

    data = {k: v for k, v in dataclasses.asdict(task).items() if k not in ("id", "fingerprint")}
    data["model"] = model
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_record(output_dir: str, result: Result, task: DubTask | None = None) -> None:
    """The completion record of one output, written (atomically) after the output itself."""
    from lipsync.media.uri import write_bytes

    data = {k: getattr(result, k) for k in Result.__dataclass_fields__}
    data["fingerprint"] = task.fingerprint if task is not None else ""
    data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_bytes(record_uri(output_dir, result.id), json.dumps(data, indent=1).encode())


def completed(output_dir: str, task: DubTask) -> Result | None:
    """The recorded result if ``task``'s output was finished by an earlier run (its record names
    the same output and fingerprint, and the output is still there), else None."""
    from lipsync.media.uri import read_bytes

    uri = record_uri(output_dir, task.id)
    if not exists(uri):
        return None
    try:
        data = json.loads(read_bytes(uri))
    except (LipSyncError, ValueError):
        return None  # unreadable record: do the work again
    if (data.get("output") != task.output or data.get("status") not in WRITTEN
            or data.get("fingerprint", "") != task.fingerprint or not exists(task.output)):
        return None
    fields = {k: data.get(k) for k in Result.__dataclass_fields__}
    fields["status"] = "skipped"
    return Result(**fields)


def results_table(results: list[Result]):
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("status", pa.string()), ("output", pa.string()),
                        ("error", pa.string()), ("frames", pa.int64()), ("frames_with_face", pa.int64()),
                        ("media_seconds", pa.float64()), ("processing_seconds", pa.float64()),
                        ("sync_score", pa.float64()), ("stages", pa.string()), ("notes", pa.string())])
    cols = {name: [getattr(r, name) for r in results] for name in schema.names}
    return pa.table(cols, schema=schema)


def write_results(output_dir: str, results: list[Result]) -> str:
    """``<output_dir>/results.parquet`` (atomically): one row per manifest row."""
    import io

    import pyarrow.parquet as pq

    from lipsync.media.uri import write_bytes

    buf = io.BytesIO()
    pq.write_table(results_table(results), buf)
    uri = join(output_dir, RESULTS_FILE)
    write_bytes(uri, buf.getvalue())
    return uri


def format_summary(results: list[Result], elapsed: float, results_uri: str | None = None) -> str:
    """The table printed at the end of a job, and a totals line."""
    head = ("id", "status", "frames", "media s", "time s", "sync", "output / error")
    rows = []
    for r in results:
        rows.append((r.id, r.status, "" if r.frames is None else str(r.frames),
                     "" if r.media_seconds is None else f"{r.media_seconds:.2f}",
                     "" if r.processing_seconds is None else f"{r.processing_seconds:.1f}",
                     "" if r.sync_score is None else f"{r.sync_score:.2f}",
                     (r.error if r.status == "error" else r.output) or ""))
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
    widths[-1] = 0
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w if w else "-" * 14 for w in widths])] + [line(x) for x in rows]
    n = {s: sum(r.status == s for r in results) for s in STATUSES}
    frames = sum(r.frames or 0 for r in results if r.status in WRITTEN)
    rate = f", {frames / elapsed:.2f} frames/s" if elapsed > 0 and frames else ""
    no_face = f", {n['no_face']} without a face (passed through)" if n["no_face"] else ""
    out.append(f"{len(results)} videos: {n['ok']} done{no_face}, {n['skipped']} already done (skipped), "
               f"{n['error']} failed; {frames} frames in {elapsed:.1f} s{rate}")
    if results_uri:
        out.append(f"results: {results_uri}")
    return "\n".join(out)
