"""Cutting the frame stream into overlapping denoising windows, and cross-fading their results.

Windows lie inside runs of consecutive frames that have a face: a frame without a face ends the
run (it passes through untouched). Inside a run, windows of ``size`` frames start every
``size - overlap`` frames; the run's last window is pulled back so it ends on the run's last frame
(a full-size window, overlapping its neighbour more) unless the run is shorter than ``size``.
Where windows overlap, their crops are blended with weights that ramp across the overlap, so
there is no seam at window joins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int
    stop: int  # exclusive

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start


class WindowPlanner:
    """Streaming: push frames in order; windows come out as soon as their frames are known."""

    def __init__(self, size: int = 16, overlap: int = 4):
        if not 0 <= overlap < size:
            raise ValueError(f"overlap must be in [0, {size}), got {overlap}")
        self.size, self.overlap = int(size), int(overlap)
        self.run_start: int | None = None
        self.next_start = 0
        self.covered = 0  # frames before this index are covered by an emitted window
        self.last = -1

    def push(self, index: int, has_face: bool) -> list[Window]:
        out: list[Window] = []
        if not has_face:
            out += self._end_run()
            self.last = index
            return out
        if self.run_start is None or index != self.last + 1:
            out += self._end_run()
            self.run_start = self.next_start = self.covered = index
        self.last = index
        if index - self.next_start + 1 == self.size:
            out.append(Window(self.next_start, index + 1))
            self.covered = index + 1
            self.next_start += self.size - self.overlap
        return out

    def finish(self) -> list[Window]:
        return self._end_run()

    def _end_run(self) -> list[Window]:
        out = []
        if self.run_start is not None and self.covered <= self.last:
            out.append(Window(max(self.run_start, self.last - self.size + 1), self.last + 1))
            self.covered = self.last + 1
        self.run_start = None
        return out

    def earliest_future_start(self) -> int:
        """No window emitted from now on starts before this frame index."""
        if self.run_start is None:
            return self.last + 1
        return min(self.next_start, max(self.run_start, self.last - self.size + 1))


def window_weights(n: int, overlap: int) -> np.ndarray:
    """Per-frame blend weights of a window: a ramp over the first and last ``overlap`` frames."""
    i = np.arange(n, dtype=np.float32)
    ramp = np.minimum((i + 1) / (overlap + 1), (n - i) / (overlap + 1))
    return np.clip(ramp, 1e-3, 1.0)


class Blender:
    """Weighted sums of generated crops per frame; a frame's crop is their weighted mean."""

    def __init__(self):
        self.acc: dict[int, np.ndarray] = {}
        self.weight: dict[int, float] = {}

    def add(self, window: Window, crops: np.ndarray, overlap: int) -> None:
        w = window_weights(len(window), overlap)
        for k, j in enumerate(window.frames):
            c = crops[k].astype(np.float32) * w[k]
            if j in self.acc:
                self.acc[j] += c
                self.weight[j] += float(w[k])
            else:
                self.acc[j], self.weight[j] = c, float(w[k])

    def pop(self, index: int) -> np.ndarray | None:
        if index not in self.acc:
            return None
        c = self.acc.pop(index) / self.weight.pop(index)
        return np.clip(c + 0.5, 0, 255).astype(np.uint8)
