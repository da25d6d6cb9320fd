"""One-Euro filter (Casiez, Roussel & Vogel, CHI 2012) over arrays, element-wise.

A low-pass filter whose cutoff rises with the signal's speed: still landmarks are smoothed hard
(no jitter in aligned crops), moving ones are followed with little lag. Each element of the array
gets its own cutoff, so fast lips do not unlock smoothing of a still forehead, and vice versa.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """x_hat = filter(x, t), t in seconds.

    min_cutoff (Hz): cutoff for a still signal; lower = smoother, more lag when slow.
    beta: how much the cutoff rises per unit of speed (units of x per second); higher = less lag
        when fast. Its scale depends on x's units: the tracker feeds landmarks in face widths.
    d_cutoff (Hz): cutoff of the speed estimate itself.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        if min_cutoff <= 0 or d_cutoff <= 0:
            raise ValueError("cutoff frequencies must be > 0")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, x, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self._t
        if dt <= 0:
            # Same or earlier timestamp (repeated frame): nothing new to learn from it.
            return self._x.copy()
        dx = (x - self._x) / dt
        a_d = _alpha(self.d_cutoff, dt)
        dx_hat = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(dx_hat)
        a = _alpha(cutoff, dt)
        x_hat = a * x + (1.0 - a) * self._x
        self._x, self._dx, self._t = x_hat, dx_hat, float(t)
        return x_hat.copy()
