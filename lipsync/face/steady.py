"""Zero-phase smoothing of the per-frame alignment, streamed with a short lookahead.

The landmark fit of each frame jitters; the tracker's One-Euro landmarks remove that but lag
behind the face (a causal filter). A Gaussian over frames on both sides has no lag, and at sigma =
2.5 frames (0.1 s at 25 fps) it passes head motion (82 % at 1 Hz) and removes frame-to-frame
jitter. It does not remove the mesh's habit of moving its upper-face points with the mouth (speech
has energy at head-motion rates too); ``lipsync.face.register`` does that, on the smoothed result.

The matrices are fitted per frame from the raw landmarks and averaged element-wise: a weighted
mean of similarities (and of the same similarity followed by a fixed stretch) is one of them, so
the smoothed map is still a valid alignment, and paste-back uses the very matrix the crop was cut
with. Smoothing never crosses a run boundary: a frame without a face, a gap in the indices, a
caller-given break (a shot cut) or a jump of the crop larger than ``MAX_JUMP`` start a new run; at
a run's ends the window is one-sided.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from lipsync.face.align import TEMPLATE

T = TypeVar("T")

SIGMA_FRAMES = 2.5
# Mean displacement of the template points between two consecutive raw matrices, as a fraction of
# the crop, beyond which the face is taken to have jumped (cut, another person, re-detection).
MAX_JUMP = 0.1


def _gaussian(sigma: float, radius: int) -> np.ndarray:
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.exp(-0.5 * (k / sigma) ** 2)


def jumped(prev: np.ndarray, new: np.ndarray, size: float) -> bool:
    """Whether the crop cut by ``new`` moved by more than MAX_JUMP of the crop from ``prev``'s."""
    pts = TEMPLATE * size - 0.5
    p3 = np.hstack([pts, np.ones((len(pts), 1))])
    inv = np.linalg.inv(np.vstack([prev, [0.0, 0.0, 1.0]]))
    frame_pts = p3 @ inv.T
    moved = frame_pts @ np.asarray(new, np.float64).T
    return float(np.linalg.norm(moved - pts, axis=1).mean()) > MAX_JUMP * size


class SteadyAlignment:
    """push(index, matrix | None, payload, new_run=False) -> the items now settled, in order, as
    (index, smoothed matrix | None, payload); finish() -> the rest. ``size``: the crop size the
    matrices map to (for the jump test)."""

    def __init__(self, size: int, sigma: float = SIGMA_FRAMES, radius: int | None = None):
        self.size = float(size)
        self.radius = int(np.ceil(3 * sigma)) if radius is None else int(radius)
        self.weights = _gaussian(sigma, self.radius) if sigma > 0 else np.eye(1, 2 * self.radius + 1, self.radius)[0]
        self._idx: list[int] = []  # the current run: up to `radius` released frames, then pending ones
        self._mats: list[np.ndarray] = []
        self._pending: deque = deque()  # payloads of the run's unreleased frames, in order
        self._released = 0  # how many of the run's kept frames are already out
        self.starts: set[int] = set()  # indices that began a run and are not yet released

    def _smoothed(self, p: int) -> np.ndarray:
        r = self.radius
        lo, hi = max(0, p - r), min(len(self._mats), p + r + 1)
        w = self.weights[lo - p + r:hi - p + r]
        return np.tensordot(w / w.sum(), np.stack(self._mats[lo:hi]), axes=1)

    def _release(self, final: bool) -> list[tuple[int, np.ndarray, T]]:
        out = []
        while self._pending and (final or len(self._mats) - 1 - self._released >= self.radius):
            p = self._released
            out.append((self._idx[p], self._smoothed(p), self._pending.popleft()))
            self._released += 1
        drop = self._released - self.radius
        if drop > 0:
            del self._idx[:drop], self._mats[:drop]
            self._released -= drop
        return out

    def _close(self) -> list[tuple[int, np.ndarray, T]]:
        out = self._release(final=True)
        self._idx, self._mats, self._released = [], [], 0
        return out

    def push(self, index: int, matrix: np.ndarray | None, payload: T = None, new_run: bool = False
             ) -> list[tuple[int, np.ndarray | None, T]]:
        out: list = []
        if self._idx and (matrix is None or new_run or index != self._idx[-1] + 1
                          or jumped(self._mats[-1], matrix, self.size)):
            out += self._close()
        if matrix is None:
            out.append((index, None, payload))
            return out
        if not self._idx:
            self.starts.add(int(index))
        self._idx.append(int(index))
        self._mats.append(np.asarray(matrix, np.float64))
        self._pending.append(payload)
        return out + self._release(final=False)

    def finish(self) -> list[tuple[int, np.ndarray | None, T]]:
        return self._close()


def steady_alignments(items: Iterable[T], index_of: Callable[[T], int],
                      matrix_of: Callable[[T], np.ndarray | None], size: int,
                      breaks: Callable[[T], bool] | None = None, image_of: Callable[[T], np.ndarray] | None = None,
                      sigma: float = SIGMA_FRAMES) -> Iterator[tuple[T, np.ndarray | None]]:
    """(item, smoothed matrix or None) for every item, in order, ``radius`` items behind the input.
    ``matrix_of`` gives an item's raw alignment (None: no face); ``breaks`` says where smoothing
    must not reach across (e.g. a shot cut at this item). With ``image_of``, each smoothed matrix
    is then refined by registering the crop's upper face to its run's first crop
    (lipsync.face.register)."""
    from lipsync.face.register import UpperFaceRegistrar

    steady = SteadyAlignment(size, sigma)
    registrar = UpperFaceRegistrar(size) if image_of is not None else None

    def settled(released):
        for index, m, it in released:
            first = index in steady.starts
            steady.starts.discard(index)
            if registrar is not None and m is not None:
                m = registrar.refine(m, image_of(it), new_run=first)
            yield it, m

    for item in items:
        yield from settled(steady.push(index_of(item), matrix_of(item), item, bool(breaks and breaks(item))))
    yield from settled(steady.finish())
