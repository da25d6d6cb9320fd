"""Face tracks over a video: cheap per-frame updates, stable ids, smoothed landmarks.

Per frame, ``FaceTracker.update`` either runs the full detector (a keyframe) or only
``FaceDetector.refine`` (the mesh on a crop around each track's previous landmarks, ~6 ms a face).
Full detection runs
  * every ``detect_every`` frames (new faces are picked up there),
  * on the same frame when a refine loses a track (the face moved fast, turned, or left),
  * on every frame while the previous frame had no face at all,
  * every ``redetect_lost_every`` frames while a lost track is still remembered.
On a keyframe, a track the detector misses still gets a refine before it is declared lost, so a
single detector miss does not break a track.

Identity. Detections are matched to live tracks by IoU of the mesh boxes and by the mean distance
of the 68 iBUG points (in face widths), optimal assignment (Hungarian). A track without a face is
"lost" but remembered for ``max_missed`` frames; a new face is re-identified as a lost track when
its box centre lies within ``REID_MAX_SHIFT`` face widths of the lost face's last centre and its
width is within a factor ``REID_MAX_SCALE`` of it (nearest first). Anything else starts a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

from lipsync.face.detect import Face, box_iou
from lipsync.face.landmarks import MESH_TO_68
from lipsync.face.smooth import OneEuroFilter

# Re-identification of a lost face by position / size (see module doc).
REID_MAX_SHIFT = 1.0  # box-centre distance, in widths of the last seen face
REID_MAX_SCALE = 1.5  # width ratio, either way
# A detection farther than this (mean 68-point distance / face width) from a live track's last
# landmarks is not that track, whatever the IoU says.
_MAX_LANDMARK_DIST = 0.5


@dataclass(eq=False)
class TrackedFace(Face):
    """A Face with its track id and One-Euro-smoothed landmarks (use ``smoothed_landmarks`` for
    alignment / crops, raw ``landmarks`` for measures such as mouth opening)."""

    track_id: int = -1
    smoothed_landmarks: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _Track:
    track_id: int
    face: Face
    last_seen: int
    scale: float  # face width when the track started: the filter works in these units
    filter: OneEuroFilter | None
    lost: bool = False


def _landmark_dist(a: Face, b: Face) -> float:
    pa = a.landmarks[MESH_TO_68, :2]
    pb = b.landmarks[MESH_TO_68, :2]
    return float(np.linalg.norm(pa - pb, axis=1).mean()) / max(a.width, 1.0)


def reidentifies(last: Face, candidate: Face) -> bool:
    """The position / size rule for taking `candidate` as the face last seen as `last`."""
    (lx, ly), (cx, cy) = last.center, candidate.center
    w = max(last.width, 1.0)
    ratio = candidate.width / w
    return (np.hypot(cx - lx, cy - ly) <= REID_MAX_SHIFT * w
            and 1.0 / REID_MAX_SCALE <= ratio <= REID_MAX_SCALE)


class FaceTracker:
    """Streaming multi-face tracker; see the module doc for when it detects and how ids stick.

    detect_every: frames between full detections when nothing is lost.
    iou_threshold: least box IoU to continue a live track (or landmark distance < 0.5 face width).
    max_missed: frames a lost track is remembered for re-identification.
    smoothing: One-Euro smoothing of ``smoothed_landmarks``; min_cutoff (Hz), beta (per face
        width / s) and d_cutoff (Hz) are the filter's parameters, landmarks being expressed in face
        widths so they do not depend on resolution.
    fps: used to derive time from the frame index when update() is not given a time.
    redetect_lost_every: while a lost track is remembered, detect at least this often, so a face
        that comes back (other faces still on screen) is found again within a frame or two.
    """

    def __init__(self, detect_every: int = 10, iou_threshold: float = 0.3, max_missed: int = 50,
                 smoothing: bool = True, min_cutoff: float = 1.0, beta: float = 5.0, d_cutoff: float = 1.0,
                 fps: float = 25.0, redetect_lost_every: int = 2):
        self.detect_every = max(1, int(detect_every))
        self.redetect_lost_every = max(1, int(redetect_lost_every))
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.smoothing = bool(smoothing)
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.fps = float(fps)
        self.reset()

    def reset(self) -> None:
        self._tracks: dict[int, _Track] = {}
        self._next_id = 0
        self._last_detect: int | None = None
        self._prev_had_face = False
        self.detections_run = 0  # how many frames ran the full detector (for cost accounting)

    def has_track(self, track_id: int) -> bool:
        """Whether `track_id` is live or lost-but-remembered."""
        return track_id in self._tracks

    # -- internals ----------------------------------------------------------------------------
    def _new_track(self, face: Face, frame_index: int) -> _Track:
        filt = OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff) if self.smoothing else None
        tr = _Track(self._next_id, face, frame_index, max(face.width, 1.0), filt)
        self._tracks[tr.track_id] = tr
        self._next_id += 1
        return tr

    def _match_live(self, live: list[_Track], faces: list[Face]) -> tuple[dict[int, int], list[int]]:
        """Hungarian assignment track -> face index on IoU + landmark distance, gated."""
        if not live or not faces:
            return {}, list(range(len(faces)))
        big = 1e6
        cost = np.full((len(live), len(faces)), big)
        for i, tr in enumerate(live):
            for j, f in enumerate(faces):
                iou = box_iou(tr.face.bbox, f.bbox)
                dist = _landmark_dist(tr.face, f)
                if (iou >= self.iou_threshold or dist < _MAX_LANDMARK_DIST) and dist < 2 * _MAX_LANDMARK_DIST:
                    cost[i, j] = (1.0 - iou) + dist
        rows, cols = linear_sum_assignment(cost)
        pairs = {live[r].track_id: c for r, c in zip(rows, cols) if cost[r, c] < big}
        used = set(pairs.values())
        return pairs, [j for j in range(len(faces)) if j not in used]

    def _match_lost(self, lost: list[_Track], faces: list[Face], free: list[int]) -> dict[int, int]:
        if not lost or not free:
            return {}
        big = 1e6
        cost = np.full((len(lost), len(free)), big)
        for i, tr in enumerate(lost):
            for k, j in enumerate(free):
                if reidentifies(tr.face, faces[j]):
                    (lx, ly), (cx, cy) = tr.face.center, faces[j].center
                    cost[i, k] = np.hypot(cx - lx, cy - ly) / tr.scale
        rows, cols = linear_sum_assignment(cost)
        return {lost[r].track_id: free[c] for r, c in zip(rows, cols) if cost[r, c] < big}

    def _emit(self, tr: _Track, face: Face, frame_index: int, t: float) -> TrackedFace:
        if tr.filter is not None:
            if tr.lost or frame_index - tr.last_seen > 1:
                tr.filter.reset()  # no smoothing across a gap: the face may have moved anywhere
            smoothed = (tr.filter(face.landmarks / tr.scale, t) * tr.scale).astype(np.float32)
        else:
            smoothed = face.landmarks.copy()
        tr.face, tr.last_seen, tr.lost = face, frame_index, False
        return TrackedFace(bbox=face.bbox, score=face.score, landmarks=face.landmarks,
                           track_id=tr.track_id, smoothed_landmarks=smoothed)

    # -- public -----------------------------------------------------------------------------
    def update(self, frame_index: int, image_rgb: np.ndarray, detector, time: float | None = None
               ) -> list[TrackedFace]:
        """Faces of this frame with stable track ids, largest first ([] when there is none)."""
        t = float(time) if time is not None else frame_index / self.fps
        live = [tr for tr in self._tracks.values() if not tr.lost]
        since = None if self._last_detect is None else frame_index - self._last_detect
        keyframe = (since is None or not self._prev_had_face or not live or since >= self.detect_every
                    or (since >= self.redetect_lost_every and len(live) < len(self._tracks)))

        found: dict[int, Face] = {}  # track id -> face of this frame
        refined: set[int] = set()  # tracks refine() was already tried on, this frame
        if not keyframe:
            for tr in live:
                refined.add(tr.track_id)
                f = detector.refine(image_rgb, tr.face)
                if f is None:
                    keyframe = True  # lost one: look for everything again, on this very frame
                else:
                    found[tr.track_id] = f

        new_faces: list[Face] = []
        if keyframe:
            self._last_detect = frame_index
            self.detections_run += 1
            faces = detector.detect(image_rgb)
            # Faces refined a moment ago keep their id: drop the detections that are those faces.
            faces = [f for f in faces if all(box_iou(f.bbox, g.bbox) < 0.3 for g in found.values())]
            pending = [tr for tr in live if tr.track_id not in found]
            pairs, free = self._match_live(pending, faces)
            for tid, j in pairs.items():
                found[tid] = faces[j]
            # A live track the detector missed gets one refine before it is called lost.
            for tr in pending:
                if tr.track_id in found or tr.track_id in refined:
                    continue
                f = detector.refine(image_rgb, tr.face)
                if f is not None:
                    found[tr.track_id] = f
                    free = [j for j in free if box_iou(faces[j].bbox, f.bbox) < 0.3]
            relinked = self._match_lost([tr for tr in self._tracks.values() if tr.lost], faces, free)
            for tid, j in relinked.items():
                found[tid] = faces[j]
            new_faces = [faces[j] for j in free if j not in set(relinked.values())]

        out: list[TrackedFace] = []
        for tid, f in found.items():
            out.append(self._emit(self._tracks[tid], f, frame_index, t))
        for f in new_faces:
            tr = self._new_track(f, frame_index)
            out.append(self._emit(tr, f, frame_index, t))
        # Bookkeeping: tracks without a face this frame are lost; forget the old ones.
        for tid in list(self._tracks):
            tr = self._tracks[tid]
            if tr.last_seen != frame_index:
                tr.lost = True
                if frame_index - tr.last_seen > self.max_missed:
                    del self._tracks[tid]
        self._prev_had_face = bool(out)
        out.sort(key=lambda f: -f.width)
        return out


def select_target(faces: list, how="largest"):
    """Pick one face: "largest" | int index into the faces ordered by width (0 = largest) |
    "track:<id>". None when there is no such face."""
    if not faces:
        return None
    if isinstance(how, (int, np.integer)) and not isinstance(how, bool):
        ordered = sorted(faces, key=lambda f: -f.width)
        return ordered[how] if -len(ordered) <= how < len(ordered) else None
    if how == "largest":
        return max(faces, key=lambda f: f.width)
    if isinstance(how, str) and how.startswith("track:"):
        tid = int(how.split(":", 1)[1])
        return next((f for f in faces if getattr(f, "track_id", None) == tid), None)
    raise ValueError(f"unknown face selection {how!r}: use 'largest', an int index or 'track:<id>'")


def track_video(frames_iterable: Iterable, detector, target="largest", **tracker_kwargs
                ) -> Iterator[tuple[object, TrackedFace | None]]:
    """Stream (frame, face of the target or None). Frames need .index, .time and .image (RGB).

    The target is chosen with ``select_target(faces, target)`` on the first frame that has a
    matching face, and from then on it is that track id. While it is lost the frames yield None.
    It comes back (1) by the tracker's own re-identification while the track is remembered
    (``max_missed`` frames, position / size rule of this module), or (2) after that, as the first
    face satisfying the same rule against the target's last seen face, excluding any track that
    was ever on screen together with the target (it is someone else); the target id then becomes
    that track's id.
    """
    tracker = FaceTracker(**tracker_kwargs)
    target_id: int | None = None
    last_seen: TrackedFace | None = None
    others: set[int] = set()  # ids seen together with the target: never the target
    for frame in frames_iterable:
        faces = tracker.update(frame.index, frame.image, detector, time=frame.time)
        chosen = None
        if target_id is None:
            chosen = select_target(faces, target)
            if chosen is not None:
                target_id = chosen.track_id
        else:
            chosen = next((f for f in faces if f.track_id == target_id), None)
            if chosen is None and not tracker.has_track(target_id) and last_seen is not None:
                cands = [f for f in faces if f.track_id not in others and reidentifies(last_seen, f)]
                if cands:
                    lx, ly = last_seen.center
                    chosen = min(cands, key=lambda f: np.hypot(f.center[0] - lx, f.center[1] - ly))
                    target_id = chosen.track_id
        if chosen is not None:
            last_seen = chosen
            others.update(f.track_id for f in faces if f.track_id != target_id)
        yield frame, chosen
