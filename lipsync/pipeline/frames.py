"""The frames a job paints on, under the length rule, with the target face of each.

Output frame j comes from source frame ``src``: the video plays forward once; if the speech is
longer, the video loops (``pingpong``: backward then forward again, like LatentSync; ``repeat``:
from the start; ``freeze``: hold the last frame); if it is shorter, the video is trimmed. The face
track is computed once, during the first forward pass, and reused whenever a source frame comes
back, so loops cost no detection and stay consistent. Memory is bounded: the first pass streams,
later passes read chunks by seeking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lipsync.errors import CorruptMediaError, EmptyMediaError, NoFaceError
from lipsync.options import LOOP_MODES

_CHUNK_BYTES = 128 * 2**20


@dataclass
class FrameItem:
    index: int  # output frame number
    src: int  # source frame number
    image: np.ndarray  # H x W x 3 uint8 RGB
    face: object | None  # the target face (with .landmarks / .smoothed_landmarks) or None


def loop_index(j: int, n_src: int, mode: str) -> int:
    if j < n_src:
        return j
    if n_src == 1 or mode == "freeze":
        return n_src - 1
    if mode == "repeat":
        return j % n_src
    period = 2 * (n_src - 1)
    p = j % period
    return p if p < n_src else period - p


class FrameSource:
    def __init__(self, uri: str, n_out: int, detector, face="largest", loop: str = "pingpong",
                 is_image: bool | None = None, tracker_kwargs: dict | None = None, name: str | None = None):
        if loop not in LOOP_MODES:
            raise ValueError(f"loop must be one of {LOOP_MODES}, got {loop!r}")
        from lipsync.media.video import is_image_path

        self.uri, self.n_out, self.detector, self.face, self.loop = uri, int(n_out), detector, face, loop
        self.name = name or uri  # what errors call the file (the URI when uri is a local copy)
        self.is_image = is_image_path(uri) if is_image is None else is_image
        self.tracker_kwargs = tracker_kwargs or {}
        self.faces: dict[int, object | None] = {}
        self.n_src: int | None = None

    def __iter__(self) -> Iterator[FrameItem]:
        if self.is_image:
            yield from self._still()
            return
        from lipsync.face import track_video
        from lipsync.media.video import iter_frames

        j = 0
        frames = iter_frames(self.uri)
        try:
            for frame, face in track_video(frames, self.detector, target=self.face, **self.tracker_kwargs):
                if j >= self.n_out:
                    break
                self.faces[frame.index] = face
                yield FrameItem(j, frame.index, frame.image, face)
                j += 1
        finally:
            frames.close()
        if j == 0:
            raise EmptyMediaError(self.name, "holds no video frames")
        self.n_src = j
        if j < self.n_out:
            yield from self._loop(j)

    def replay(self, n_src: int) -> Iterator[FrameItem]:
        """The same output frames again, without face detection (``face`` is None): the batch
        job's finish stage decodes its source a second time rather than keep frames in memory.
        ``n_src`` is the number of source frames the first pass found (its ``n_src``)."""
        if self.is_image:
            from lipsync.media.video import read_image

            image = read_image(self.uri)
            for j in range(self.n_out):
                yield FrameItem(j, 0, image if j == 0 else image.copy(), None)
            return
        from lipsync.media.video import iter_frames

        first = min(self.n_out, int(n_src))
        j = 0
        frames = iter_frames(self.uri)
        try:
            for frame in frames:
                if j >= first:
                    break
                yield FrameItem(j, frame.index, frame.image, None)
                j += 1
        finally:
            frames.close()
        if j < first:
            raise CorruptMediaError(self.name, f"decoded {j} frames on a second pass, {first} on the first")
        if first < self.n_out:
            yield from self._loop(int(n_src))

    def _still(self) -> Iterator[FrameItem]:
        from lipsync.face import select_target
        from lipsync.media.video import read_image

        image = read_image(self.uri)
        faces = self.detector.detect(image)
        face = select_target(faces, self.face)
        if face is None:
            raise NoFaceError(self.name, "no face found in the image" if not faces else
                              f"face {self.face!r} not found ({len(faces)} face(s) in the image)")
        self.n_src = 1
        self.faces[0] = face
        for j in range(self.n_out):
            yield FrameItem(j, 0, image if j == 0 else image.copy(), face)

    def _loop(self, n_src: int) -> Iterator[FrameItem]:
        from lipsync.media.video import read_frame_range

        cache: dict[int, np.ndarray] = {}
        chunk = None
        for j in range(n_src, self.n_out):
            src = loop_index(j, n_src, self.loop)
            if src not in cache:
                if chunk is None:
                    probe = read_frame_range(self.uri, src, src + 1)[0].image
                    chunk = int(np.clip(_CHUNK_BYTES // probe.nbytes, 4, 64))
                # Read the chunk in the direction playback is going, so one seek serves many frames.
                forward = loop_index(j + 1, n_src, self.loop) >= src
                lo = src if forward else max(0, src - chunk + 1)
                hi = min(n_src, lo + chunk)
                cache = {f.index: f.image for f in read_frame_range(self.uri, lo, hi)}
            yield FrameItem(j, src, cache[src].copy(), self.faces.get(src))
