"""Training batches from the preprocessing shards (see :mod:`lipsync.train.prepare`).

A worker reads its shard of the Ray dataset (``ray.train.get_dataset_shard``; anything with
``iter_batches(batch_format="pyarrow")`` works, so the code here imports no Ray), keeps the segments
(encoded crops + audio) and samples windows from them:

* ``frames``: (B, F, 3, S, S) float32 in [-1, 1], F consecutive frames of one segment;
* ``ref`` (with ``reference``): F other frames of the same segment (LatentSync's reference
  frames: same person, different mouth, so the model cannot copy the target's mouth);
* ``audio``: (B, (F + 2 m) * 640) float32 16 kHz, the window's audio with ``m`` frames of context
  on each side (frame j of the window starts at sample (m + j) * 640);
* ``start`` / ``clip``: where each window comes from (for logs and tests);
* ``segment_audio`` / ``segment_audio_offset``: each window's whole segment audio (for the SyncNet
  losses, whose log-mel is normalised over the segment as in SyncNet training);
* ``segment`` (the :class:`Segment` objects) and ``ref_start``: for per-segment caches (latents).

The segments are decoded lazily: only the sampled frames' images are decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lipsync.train.prepare import SAMPLES_PER_FRAME, decode_image

COLUMNS = ["clip_id", "segment", "num_frames", "frames", "audio", "audio_offset", "gt_jaw"]


@dataclass
class Segment:
    clip_id: str
    index: int
    frames: list  # encoded images
    audio: np.ndarray  # float32, ``audio_offset`` samples before frame 0
    audio_offset: int
    gt_jaw: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def margin_frames(self) -> int:
        """Audio context available on each side, in whole frames."""
        after = len(self.audio) - self.audio_offset - self.num_frames * SAMPLES_PER_FRAME
        return max(0, min(self.audio_offset, after) // SAMPLES_PER_FRAME)

    def crops(self, start: int, n: int) -> np.ndarray:
        return np.stack([decode_image(self.frames[i]) for i in range(start, start + n)])

    def audio_window(self, start: int, n: int, margin: int) -> np.ndarray:
        """Samples of frames ``start - margin .. start + n + margin`` (zeros outside the segment's audio)."""
        a0 = self.audio_offset + (start - margin) * SAMPLES_PER_FRAME
        length = (n + 2 * margin) * SAMPLES_PER_FRAME
        out = np.zeros(length, np.float32)
        lo, hi = max(a0, 0), min(a0 + length, len(self.audio))
        if hi > lo:
            out[lo - a0:hi - a0] = self.audio[lo:hi]
        return out


def segments_from_table(table) -> list[Segment]:
    cols = {c: table.column(c).to_pylist() for c in COLUMNS if c in table.column_names and c != "audio"}
    audio = table.column("audio")
    out = []
    for i in range(table.num_rows):
        a = audio[i].values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        jaw = cols.get("gt_jaw", [None] * table.num_rows)[i]
        out.append(Segment(cols["clip_id"][i], int(cols["segment"][i]), cols["frames"][i], a,
                           int(cols["audio_offset"][i]), None if jaw is None else np.asarray(jaw, np.float32)))
    return out


def read_segments(source, batch_size: int = 32) -> list[Segment]:
    """Every segment of ``source``: a Ray DataIterator / Dataset (``iter_batches``), a pyarrow
    Table, a Parquet file (local or s3://), a list of them, or a local folder of them."""
    if hasattr(source, "iter_batches"):
        out = []
        for batch in source.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
            out += segments_from_table(batch)
        return out
    if hasattr(source, "num_rows"):
        return segments_from_table(source)
    import pyarrow.parquet as pq

    files = [source] if isinstance(source, (str, os.PathLike)) else list(source or [])
    if len(files) == 1 and os.path.isdir(files[0]):
        files = sorted(os.path.join(files[0], f) for f in os.listdir(files[0]) if f.endswith(".parquet"))
    out = []
    for f in files:
        from lipsync.media.uri import local_input

        with local_input(str(f)) as path:
            out += segments_from_table(pq.read_table(path, columns=COLUMNS))
    return out


@dataclass
class WindowSpec:
    frames: int = 16
    batch_size: int = 2
    reference: bool = False
    audio_margin: int = 12

    @classmethod
    def from_config(cls, data: dict) -> "WindowSpec":
        return cls(int(data["window"]), int(data["batch_size"]), bool(data["reference"]), int(data["audio_margin"]))


def usable(segments: list[Segment], spec: WindowSpec) -> list[Segment]:
    """Segments long enough for a window (and a reference window that differs from it), with
    enough audio context."""
    need = spec.frames + (1 if spec.reference else 0)
    return [s for s in segments if s.num_frames >= need and s.margin_frames >= spec.audio_margin]


def _to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(n, S, S, 3) uint8 -> (n, 3, S, S) float32 in [-1, 1]."""
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def reference_start(rng: np.random.Generator, n: int, f: int, start: int) -> int:
    """A window start in [0, n - f] not overlapping ``start``'s window when the segment allows it,
    else as far from it as possible."""
    far = [s for s in range(0, n - f + 1) if abs(s - start) >= f]
    if far:
        return int(rng.choice(far))
    cands = list(range(0, n - f + 1))
    return max(cands, key=lambda s: (abs(s - start), -s))


def sample_batch(segments: list[Segment], spec: WindowSpec, rng: np.random.Generator) -> dict:
    if not segments:
        raise ValueError("no segment long enough for the requested windows")
    frames, refs, audio, starts, clips, jaw, seg_audio, seg_offset = [], [], [], [], [], [], [], []
    ref_starts, segs = [], []
    for _ in range(spec.batch_size):
        seg = segments[int(rng.integers(len(segments)))]
        f = spec.frames
        start = int(rng.integers(0, seg.num_frames - f + 1))
        frames.append(_to_tensor(seg.crops(start, f)))
        if spec.reference:
            ref_starts.append(reference_start(rng, seg.num_frames, f, start))
            refs.append(_to_tensor(seg.crops(ref_starts[-1], f)))
        segs.append(seg)
        audio.append(torch.from_numpy(seg.audio_window(start, f, spec.audio_margin)))
        starts.append(start)
        seg_audio.append(seg.audio)  # (references) for losses that want the whole segment's audio
        seg_offset.append(seg.audio_offset)
        clips.append(f"{seg.clip_id}#{seg.index}")
        jaw.append(torch.full((f,), float("nan")) if seg.gt_jaw is None
                   else torch.from_numpy(seg.gt_jaw[start:start + f]))
    batch = {"frames": torch.stack(frames), "audio": torch.stack(audio), "start": torch.tensor(starts),
             "clip": clips, "jaw": torch.stack(jaw), "audio_margin": spec.audio_margin,
             "segment_audio": seg_audio, "segment_audio_offset": seg_offset, "segment": segs}
    if spec.reference:
        batch["ref"] = torch.stack(refs)
        batch["ref_start"] = torch.tensor(ref_starts)
    return batch


class WindowSampler:
    """Endless random windows from the segments of one worker.

    ``cache=True`` reads the shard once and samples from memory; ``cache=False`` streams it epoch
    after epoch through a buffer of ``buffer_segments`` segments (for datasets larger than memory)."""

    def __init__(self, source, spec: WindowSpec, seed: int, cache: bool = True, buffer_segments: int = 256):
        self.source, self.spec, self.cache = source, spec, cache
        self.buffer_segments = int(buffer_segments)
        self.rng = np.random.default_rng(seed)
        self.segments: list[Segment] = []
        self._stream: Iterator | None = None
        if cache:
            self.segments = usable(read_segments(source), spec)
            if not self.segments:
                raise ValueError(f"this worker's shard holds no segment of at least {spec.frames} frames "
                                 f"with {spec.audio_margin} frames of audio margin")

    def _rows(self) -> Iterator[Segment]:
        while True:
            n = 0
            for batch in self.source.iter_batches(batch_size=16, batch_format="pyarrow"):
                for s in usable(segments_from_table(batch), self.spec):
                    n += 1
                    yield s
            if n == 0:
                raise ValueError("this worker's shard holds no usable segment")

    def _refill(self) -> None:
        if self.cache:
            return
        if self._stream is None:
            self._stream = self._rows()
        want = min(self.buffer_segments, max(1, len(self.segments)) + self.spec.batch_size)
        while len(self.segments) < want:
            self.segments.append(next(self._stream))
        for _ in range(self.spec.batch_size):  # refresh the buffer a little each step
            self.segments[int(self.rng.integers(len(self.segments)))] = next(self._stream)

    def next(self) -> dict:
        self._refill()
        return sample_batch(self.segments, self.spec, self.rng)

    def random_segments(self, k: int) -> list[Segment]:
        """``k`` distinct random segments (fewer if the worker holds fewer)."""
        self._refill()
        idx = self.rng.choice(len(self.segments), size=min(int(k), len(self.segments)), replace=False)
        return [self.segments[int(i)] for i in idx]


def fixed_batches(segments: list[Segment], spec: WindowSpec, count: int, seed: int = 1234) -> list[dict]:
    """``count`` batches drawn with a fixed seed: the same validation windows at every checkpoint."""
    segs = usable(segments, spec)
    if not segs:
        return []
    rng = np.random.default_rng(seed)
    return [sample_batch(segs, spec, rng) for _ in range(count)]
