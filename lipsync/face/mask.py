"""Crop-space masks of the region the model regenerates.

Convention here: float32 in [0, 1], 1 = REGENERATED (replaced when pasting back), 0 = kept.
LatentSync's UNet mask input channel uses the opposite (1 = keep, 0 = generate): feed it
``1 - lower_face_mask(...)``.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.face import landmarks as lmk


def lower_face_mask(size: int, top: float = 0.5, side: float = 0.0, bottom: float = 1.0) -> np.ndarray:
    """LatentSync-style fixed mask: the crop's rows from `top` to `bottom` (fractions of the height)
    and columns from `side` to 1 - `side`. With the template of ``align`` (nose tip 0.51, lips 0.61,
    chin 0.88, eyes 0.28), the default covers the mouth, jaw and chin and leaves the eyes and the
    upper nose alone."""
    m = np.zeros((size, size), np.float32)
    r0, r1 = int(round(top * size)), int(round(bottom * size))
    c0, c1 = int(round(side * size)), int(round((1.0 - side) * size))
    m[r0:r1, c0:c1] = 1.0
    return m


# Lower face outline: jaw from the cheek at nose height over the chin, plus the nose's lower rim;
# the lips lie inside but are added so an open jaw never leaves them out.
_LOWER_FACE = tuple(lmk.JAW[2:-2]) + lmk.NOSE_BOTTOM_ARC + lmk.LIPS_OUTER


def landmark_mask(crop_landmarks: np.ndarray, size: int, dilate: float | None = None) -> np.ndarray:
    """Filled convex hull of the lower face (jaw + nose bottom + lips) in crop coordinates, grown
    by `dilate` crop pixels (default size / 25) so the mask's feathered edge falls on skin
    outside the moving parts."""
    pts = np.asarray(crop_landmarks, dtype=np.float64)[list(_LOWER_FACE), :2]
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))  # 4 fractional bits
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 1, lineType=cv2.LINE_8, shift=4)
    r = int(round(size / 25.0 if dilate is None else dilate))
    if r > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        m = cv2.dilate(m, k)
    return m.astype(np.float32)


def feather(mask: np.ndarray, px: float) -> np.ndarray:
    """Soft-edged copy of `mask`: a smooth 0 -> 1 ramp about `px` pixels wide lying INSIDE the
    mask's edge (the result is 0 wherever the mask is 0, so whatever the mask excludes stays
    untouched when pasting). The crop's border counts as outside, so a mask touching it also fades
    to 0 there and leaves no seam in the frame."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0]
    m = np.clip(m, 0.0, 1.0)
    r = int(round(px / 2.0))
    if r <= 0:
        return m.copy()
    k = 2 * r + 1
    padded = cv2.copyMakeBorder(m, k, k, k, k, cv2.BORDER_CONSTANT, value=0)
    # Erode and blur with the same square: the blur then reaches exactly back to the original edge.
    eroded = cv2.erode(padded, np.ones((k, k), np.uint8))
    soft = cv2.blur(eroded, (k, k), borderType=cv2.BORDER_CONSTANT)[k:-k, k:-k]
    soft = np.clip(soft, 0.0, 1.0)
    soft = soft * soft * (3.0 - 2.0 * soft)  # smoothstep: no visible kink where the ramp ends
    soft[m <= 0] = 0.0  # already so, up to float rounding
    return soft.astype(np.float32)


# Where the lips move on an aligned crop: around the template's mouth corners (u 0.33 / 0.67,
# v 0.58) down to the open jaw's lower lip; the chin (v 0.88) is left out.
MOUTH_BOX = (0.28, 0.72, 0.50, 0.78)  # u0, u1, v0, v1 as fractions of the crop at aspect 1


def mouth_region(size: int, aspect: float = 1.0) -> np.ndarray:
    """(size, size) float32 box over the moving mouth of a crop aligned by :mod:`lipsync.face.align`
    (``aspect`` stretches it horizontally about the centre, as the alignment does)."""
    u0, u1, v0, v1 = MOUTH_BOX
    u0, u1 = 0.5 + aspect * (u0 - 0.5), 0.5 + aspect * (u1 - 0.5)
    m = np.zeros((size, size), np.float32)
    c0, c1 = max(0, int(round(u0 * size))), min(size, int(round(u1 * size)))
    m[int(round(v0 * size)):int(round(v1 * size)), c0:c1] = 1.0
    return m
