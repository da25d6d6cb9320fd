"""Pixel registration of the rigid upper face: the fine alignment after the landmarks' coarse one.

The mesh moves its upper-face points with the mouth: on the synthetic corpus, opening the jaw
shifts the detected nose bridge by ~1 % of the crop (and the eye corners by ~0.6 %) against the
rendered face, which stays put. Any landmark-based crop therefore moves with the jaw, and its kept
(unmasked) upper half tells a UNet what the original mouth did, a cue it learns instead of the
audio. Smoothing cannot remove it: speech has energy at the rate of head motion too.

The pixels of the upper face (eyes, brows, nose bridge) do not move with the jaw, so each crop is
registered to the first crop of its run with ECC (OpenCV ``findTransformECC``, a similarity)
over the band above the mouth, at a fixed working size. The correction is bounded:
when ECC fails, correlates poorly or wants more than a small shift or turn (a head turn, an
occlusion), the landmark alignment is kept and that frame becomes the new anchor.
On the synthetic clips (``benchmarks/alignment_leak.py``) this brings the upper face's correlation
with the jaw to the level of crops cut with the renderer's true landmarks.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.face.align import _resample_matrix, _to3, warp_to_crop

WORK_SIZE = 96  # registration runs on crops of this size whatever the profile's size
BAND = (0.05, 0.45, 0.10, 0.90)  # rows top, bottom, columns left, right (fractions of the crop)
MAX_SHIFT = 0.06  # largest accepted correction: translation, fraction of the crop
MAX_TURN = np.deg2rad(5.0)  # ... rotation
MAX_ZOOM = 0.06  # ... and scale change (log)
MIN_CORR = 0.7  # least ECC correlation accepted
_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)


class UpperFaceRegistrar:
    """refine(matrix, image, new_run) -> the matrix corrected so the crop's upper face sits where
    it sat in the run's first crop. ``size``: the crop size the matrices map to."""

    def __init__(self, size: int):
        self.size = float(size)
        self.to_work = _resample_matrix(WORK_SIZE / self.size)
        self.from_work = np.linalg.inv(self.to_work)
        s = WORK_SIZE
        self.mask = np.zeros((s, s), np.uint8)
        self.mask[int(BAND[0] * s):int(BAND[1] * s), int(BAND[2] * s):int(BAND[3] * s)] = 1
        self.anchor: np.ndarray | None = None
        self.fallbacks = 0  # frames where the landmark alignment was kept (for diagnostics)

    def _grey(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        m = (self.to_work @ _to3(matrix))[:2]
        crop = warp_to_crop(image, m, WORK_SIZE)
        return (cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if crop.ndim == 3 else crop).astype(np.float32)

    def refine(self, matrix: np.ndarray, image: np.ndarray, new_run: bool = False) -> np.ndarray:
        matrix = np.asarray(matrix, np.float64)
        grey = self._grey(image, matrix)
        if new_run or self.anchor is None:
            self.anchor = grey
            return matrix
        w = np.eye(2, 3, dtype=np.float32)
        # Affine ECC, then its closest similarity: Euclidean ECC leaves the scale, which the mesh
        # also moves with the jaw, uncorrected.
        try:
            corr, w = cv2.findTransformECC(self.anchor, grey, w, cv2.MOTION_AFFINE, _CRITERIA, self.mask, 3)
        except cv2.error:  # did not converge (flat or very different content)
            corr = -1.0
        a, b = 0.5 * (w[0, 0] + w[1, 1]), 0.5 * (w[1, 0] - w[0, 1])
        w = np.array([[a, -b, w[0, 2]], [b, a, w[1, 2]]], np.float32)
        turn = abs(float(np.arctan2(b, a)))
        zoom = abs(float(np.log(max(np.hypot(a, b), 1e-6))))
        if (corr < MIN_CORR or np.abs(w[:, 2]).max() > MAX_SHIFT * WORK_SIZE or turn > MAX_TURN
                or zoom > MAX_ZOOM):
            self.fallbacks += 1
            self.anchor = grey
            return matrix
        # ECC gives w with grey(w x) ~ anchor(x): the corrected crop is the current one seen through w.
        fix = self.from_work @ _to3(cv2.invertAffineTransform(w)) @ self.to_work
        return (fix @ _to3(matrix))[:2]
