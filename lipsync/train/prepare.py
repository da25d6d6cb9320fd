"""Dataset preparation, one clip at a time (no Ray): decode at 25 fps / 16 kHz, detect shot cuts,
track and align the face with the inference pipeline's own code (:meth:`lipsync.face.aligner.FaceAligner.aligned`), cut
fixed-length segments, optionally filter them by audio-visual sync, and write one Parquet shard
per clip plus a completion record. ``pipelines/preprocess.py`` runs this stage on Ray Data.

Output folder::

    <out>/<split>/<clip_id>.parquet   one row per segment (schema: :func:`segment_schema`)
    <out>/_done/<clip_id>.json        completion record, written last (a rerun skips the clip)
    <out>/report.parquet              one row per input clip (written by the job)
    <out>/dataset.json                what the shards hold (profile, resolution, segment length ...)

A segment is ``segment_frames`` consecutive frames (default 48: room for the trainer's 16-frame
windows, a reference window and SyncNet windows) inside one shot, all with the target face; a
frame without a face, a shot cut or the end of the audio ends a run of frames, and a run is cut
into as many whole segments as fit (the remainder is dropped). Its audio is the 16 kHz mono
samples of exactly its frames plus ``audio_margin_frames`` on each side (zeros past the file's
ends), ``audio_offset`` samples before its first frame.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from lipsync.media.formats import FPS, SAMPLE_RATE
from lipsync.media.uri import join
from lipsync.train.sources import ClipTask, held_out

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
DATASET_VERSION = 1


@dataclass
class PrepareOptions:
    profile: str = "tiny"  # whose crop resolution / aspect / alignment the crops use
    segment_frames: int = 48
    audio_margin_frames: int = 12  # 0.48 s: the tiny audio encoder's receptive field fits in it
    image_format: str = "jpg"  # jpg | png
    jpeg_quality: int = 95
    cut_threshold: float = 0.5  # histogram distance (0..1) between consecutive frames that is a cut
    max_faces: int = 4
    face: str = "largest"
    min_sync_confidence: float = 0.2  # with a sync filter; our SyncNet (unit embeddings: distances 0..2)
    max_sync_offset: int = 6  # frames
    correct_sync_offset: bool = True

    def fingerprint(self) -> str:
        import hashlib

        d = asdict(self)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ClipReport:
    id: str
    video: str
    audio: str
    split: str = ""
    status: str = "ok"  # ok | error | skipped
    error: str = ""
    frames: int = 0
    face_frames: int = 0
    cuts: int = 0
    segments: int = 0
    filtered: int = 0  # segments dropped by the sync filter
    shard: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# A sync filter takes a segment's crops (F, S, S, 3) uint8, its audio (float32 16 kHz, the given number
# of samples before the first frame) and the frame rate, and returns {"confidence": float (LSE-C),
# "offset": int}: frames by which the audio is ahead of the video, as `lipsync eval` reports it
# (the sound of video frame i is at audio frame i - offset; 0 = in sync). With
# ``correct_sync_offset`` the segment keeps the audio that matches its frames (read from
# ``offset`` frames earlier).
SyncFilter = Callable[[np.ndarray, np.ndarray, int, float], dict]


class ShotCutDetector:
    """A cut is a jump in the colour histogram between consecutive frames: hue x saturation
    histogram (16 x 8 bins) of a 64 x 64 thumbnail, half the L1 distance (0 = same, 1 = disjoint)
    above ``threshold``. Lighting drift and head motion stay far below 0.5; a hard cut between
    different scenes scores above it."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)
        self._prev: np.ndarray | None = None

    @staticmethod
    def histogram(image: np.ndarray) -> np.ndarray:
        import cv2

        small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256]).ravel()
        return h / max(float(h.sum()), 1.0)

    def distance(self, image: np.ndarray) -> float:
        h = self.histogram(image)
        d = 0.0 if self._prev is None else 0.5 * float(np.abs(h - self._prev).sum())
        self._prev = h
        return d

    def __call__(self, image: np.ndarray) -> bool:
        """True when ``image`` starts a new shot (never for the first frame)."""
        return self.distance(image) > self.threshold


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt in ("jpg", "jpeg") else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + ("jpg" if fmt in ("jpg", "jpeg") else "png"), np.ascontiguousarray(rgb[:, :, ::-1]),
                           params)
    if not ok:
        raise ValueError(f"cannot encode a crop as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable crop image in a shard")
    return np.ascontiguousarray(img[:, :, ::-1])


def audio_slice(audio: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``audio[start:stop]`` with zeros where the range leaves the array."""
    out = np.zeros(max(0, stop - start), np.float32)
    lo, hi = max(start, 0), min(stop, len(audio))
    if hi > lo:
        out[lo - start:hi - start] = audio[lo:hi]
    return out


def segment_schema():
    import pyarrow as pa

    return pa.schema([
        ("clip_id", pa.string()), ("segment", pa.int32()), ("split", pa.string()),
        ("video", pa.string()), ("audio_source", pa.string()),
        ("start_frame", pa.int32()), ("num_frames", pa.int32()), ("fps", pa.float32()),
        ("resolution", pa.int32()), ("image_format", pa.string()), ("frames", pa.list_(pa.binary())),
        ("sample_rate", pa.int32()), ("audio", pa.list_(pa.float32())), ("audio_offset", pa.int32()),
        ("audio_margin_frames", pa.int32()),
        ("sync_confidence", pa.float32()), ("sync_offset", pa.int32()),
        ("lang", pa.string()), ("identity", pa.string()), ("text", pa.string()),
        ("gt_jaw", pa.list_(pa.float32())), ("gt_speech", pa.list_(pa.int8())),
        ("profile", pa.string()),
    ])


def _read_meta(uri: str | None) -> dict | None:
    if not uri:
        return None
    from lipsync.media.uri import read_bytes

    return json.loads(read_bytes(uri).decode("utf-8"))


def done_record_path(out: str, clip_id: str) -> str:
    return join(out, "_done", f"{clip_id}.json")


def read_done(out: str, clip_id: str) -> dict | None:
    from lipsync.media.uri import read_bytes

    try:
        return json.loads(read_bytes(done_record_path(out, clip_id)).decode())
    except Exception:
        return None


class ClipPreparer:
    """The stage: ``ClipTask -> ClipReport``, writing the clip's shard and completion record.
    Reuse one instance for many clips (the face detector is set up once)."""

    def __init__(self, out: str, options: PrepareOptions | None = None, sync_filter: SyncFilter | None = None,
                 detector=None):
        from lipsync.face.aligner import FaceAligner
        from lipsync.profiles import load_profile

        self.out = str(out)
        self.options = options or PrepareOptions()
        self.profile = load_profile(self.options.profile)
        self.faces = FaceAligner.of_profile(self.profile)  # the inference pipeline's alignment
        self.sync_filter = sync_filter
        self._detector = detector

    @property
    def detector(self):
        if self._detector is None:
            from lipsync.face import FaceDetector

            self._detector = FaceDetector(max_faces=self.options.max_faces)
        return self._detector

    def __call__(self, task: ClipTask) -> ClipReport:
        t0 = time.perf_counter()
        report = ClipReport(task.id, task.video, task.audio or task.video, task.split)
        try:
            self._run(task, report)
        except Exception as err:  # a bad clip is reported, never fatal
            from lipsync.pipeline.batch import describe_error

            report.status = "error"
            msg = describe_error(err)
            report.error = msg if task.video in msg or (task.audio or "") in msg else f"{task.video}: {msg}"
        report.seconds = round(time.perf_counter() - t0, 3)
        return report

    # -- the work ---------------------------------------------------------------------------
    def _run(self, task: ClipTask, report: ClipReport) -> None:
        from lipsync.face import track_video
        from lipsync.media.audio import load_audio
        from lipsync.media.uri import local_input
        from lipsync.media.video import iter_frames

        opts = self.options
        meta = _read_meta(task.meta)
        split = task.split
        if meta is not None:
            split = str(meta.get("split", split))
            if split == "train" and held_out(task.id, float(task.extra.get("val_fraction", 0.0))):
                split = "val"
        report.split = split
        audio = load_audio(task.audio or task.video, SAMPLE_RATE)
        audio_frames = len(audio) // SAMPLES_PER_FRAME
        size = int(self.profile.resolution)
        cuts = ShotCutDetector(opts.cut_threshold)
        rows: list[dict] = []
        run: list[tuple[int, np.ndarray]] = []

        def close_run():
            nonlocal run
            n = opts.segment_frames
            for k in range(len(run) // n):
                part = run[k * n:(k + 1) * n]
                row = self._segment(task, split, meta, audio, part, len(rows) + report.filtered, report)
                if row is not None:
                    rows.append(row)
            run = []

        def tracked(frames):
            """(frame, face or None where unusable, shot cut here), counting as it goes."""
            for frame, face in track_video(frames, self.detector, target=opts.face):
                report.frames += 1
                cut = bool(cuts(frame.image))
                report.cuts += cut
                usable = face is not None and frame.index < audio_frames
                report.face_frames += usable
                yield frame, face if usable else None, cut

        with local_input(task.video) as local:
            frames = iter_frames(local, fps=FPS)
            try:
                for (frame, face, cut), matrix in self.faces.aligned(
                        tracked(frames), face_of=lambda t: t[1], index_of=lambda t: t[0].index,
                        image_of=lambda t: t[0].image, breaks=lambda t: t[2]):
                    if cut:
                        close_run()
                    if matrix is None:
                        close_run()
                        continue
                    crop = self.faces.crop(frame.image, matrix)
                    if crop.shape[:2] != (size, size):
                        raise ValueError(f"aligned crop is {crop.shape[:2]}, expected {size} x {size}")
                    run.append((frame.index, crop))
                    if len(run) == opts.segment_frames:
                        close_run()
            finally:
                frames.close()
        close_run()
        if report.frames == 0:
            from lipsync.errors import EmptyMediaError

            raise EmptyMediaError(task.video, "holds no video frames")
        report.segments = len(rows)
        if rows:
            report.shard = self._write(split, task.id, rows)
        self._record(task, report)

    def _segment(self, task: ClipTask, split: str, meta: dict | None, audio: np.ndarray,
                 part: list[tuple[int, np.ndarray]], index: int, report: ClipReport) -> dict | None:
        opts = self.options
        start, n = part[0][0], len(part)
        crops = np.stack([c for _, c in part])
        margin = opts.audio_margin_frames * SAMPLES_PER_FRAME
        a0 = start * SAMPLES_PER_FRAME
        conf = offset = None
        if self.sync_filter is not None:
            seg_audio = audio_slice(audio, a0 - margin, a0 + n * SAMPLES_PER_FRAME + margin)
            res = self.sync_filter(crops, seg_audio, margin, float(FPS))
            conf, offset = float(res["confidence"]), int(res["offset"])
            if conf < opts.min_sync_confidence or abs(offset) > opts.max_sync_offset:
                report.filtered += 1
                return None
            if opts.correct_sync_offset and offset:
                a0 -= offset * SAMPLES_PER_FRAME  # the audio that matches these frames
        seg_audio = audio_slice(audio, a0 - margin, a0 + n * SAMPLES_PER_FRAME + margin)
        gt = _ground_truth(meta, start, n)
        return {
            "clip_id": task.id, "segment": index, "split": split, "video": task.video,
            "audio_source": task.audio or task.video, "start_frame": start, "num_frames": n, "fps": float(FPS),
            "resolution": int(crops.shape[1]), "image_format": opts.image_format,
            "frames": [encode_image(c, opts.image_format, opts.jpeg_quality) for c in crops],
            "sample_rate": SAMPLE_RATE, "audio": seg_audio, "audio_offset": margin,
            "audio_margin_frames": opts.audio_margin_frames,
            "sync_confidence": conf, "sync_offset": offset, **gt, "profile": self.profile.name,
        }

    def _write(self, split: str, clip_id: str, rows: list[dict]) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from lipsync.media.uri import atomic_output

        schema = segment_schema()
        cols = {name: [r[name] for r in rows] for name in schema.names}
        cols["audio"] = [np.asarray(a, np.float32) for a in cols["audio"]]
        table = pa.table({name: pa.array(cols[name], schema.field(name).type) for name in schema.names},
                         schema=schema)
        uri = join(self.out, split, f"{clip_id}.parquet")
        with atomic_output(uri) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        return uri

    def _record(self, task: ClipTask, report: ClipReport) -> None:
        from lipsync.media.uri import write_bytes

        rec = {"id": task.id, "video": task.video, "audio": task.audio, "split": report.split,
               "segments": report.segments, "filtered": report.filtered, "frames": report.frames,
               "face_frames": report.face_frames, "cuts": report.cuts, "shard": report.shard,
               "options": self.options.fingerprint()}
        write_bytes(done_record_path(self.out, task.id), json.dumps(rec).encode())


def _ground_truth(meta: dict | None, start: int, n: int) -> dict:
    if meta is None:
        return {"lang": None, "identity": None, "text": None, "gt_jaw": None, "gt_speech": None}
    mouth = meta.get("mouth") or {}
    jaw = mouth.get("jaw")
    speech = meta.get("speech_active")
    text = meta.get("text")
    return {
        "lang": meta.get("lang"), "identity": meta.get("identity"),
        "text": " ".join(text) if isinstance(text, list) else text,
        "gt_jaw": None if jaw is None else [float(v) for v in jaw[start:start + n]],
        "gt_speech": None if speech is None else [int(v) for v in speech[start:start + n]],
    }


def load_sync_filter(spec: str | None) -> SyncFilter | None:
    """The sync filter named by ``spec``: ``package.module:function`` (a :data:`SyncFilter`, or a
    factory taking no argument that returns one when its name starts with ``make_``), or a folder
    of SyncNet weights, used through :func:`lipsync.train.syncnet_adapter.sync_filter_from_folder`.
    None or empty: no filter."""
    if not spec:
        return None
    spec = str(spec)
    if ":" in spec and not os.path.isdir(spec) and "://" not in spec:
        import importlib

        module, _, name = spec.partition(":")
        fn = getattr(importlib.import_module(module), name)
        return fn() if name.startswith("make_") else fn
    from lipsync.train.syncnet_adapter import sync_filter_from_folder

    return sync_filter_from_folder(spec)
