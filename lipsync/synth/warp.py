"""Landmark-driven piecewise-affine image warping.

The synthetic corpus moves a photographed face by moving its mesh landmarks. A backward map is
built on the *destination* triangulation (every output pixel knows which source pixel it shows),
so the warp never leaves holes and unchanged regions stay bit-identical.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay


def anchor_ring(center: np.ndarray, radius: float, n: int = 24) -> np.ndarray:
    """Fixed points on a circle: they do not move, so the deformation fades out inside the ring."""
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)], 1)


def piecewise_affine_maps(src: np.ndarray, dst: np.ndarray, box: tuple[int, int, int, int]):
    """Backward maps (map_x, map_y) for the pixels of ``box`` = (x0, y0, x1, y1) in the output.

    Output pixel q inside a destination triangle shows the source point given by that triangle's
    affine map onto its source triangle; pixels outside every triangle map to themselves.
    Triangles are rasterised into a label image (one C call each), which is far cheaper than
    point-location of every pixel.
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    simplices = Delaunay(dst).simplices
    d = dst[simplices] - np.array([x0, y0])  # (t, 3, 2) in box coordinates
    lo, hi = d.min(1), d.max(1)
    keep = (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < w) & (lo[:, 1] < h)
    d, sv = d[keep], src[simplices[keep]]
    D = np.concatenate([d, np.ones((len(d), 3, 1))], 2)  # rows [x, y, 1]
    ok = np.abs(np.linalg.det(D)) > 1e-9
    d, D, sv = d[ok], D[ok], sv[ok]
    A = np.linalg.solve(D, sv)  # (t, 3, 2): [x, y, 1] @ A = source point
    label = np.full((h, w), -1, np.int32)
    shift = 4  # sub-pixel vertex precision for the rasteriser
    verts = np.round(d * (1 << shift)).astype(np.int32)
    for k in range(len(verts)):
        cv2.fillConvexPoly(label, verts[k], int(k), lineType=cv2.LINE_8, shift=shift)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    map_x, map_y = gx + x0, gy + y0
    inside = label >= 0
    a = A[label[inside]]
    px, py = gx[inside], gy[inside]
    map_x[inside] = px * a[:, 0, 0] + py * a[:, 1, 0] + a[:, 2, 0]
    map_y[inside] = px * a[:, 0, 1] + py * a[:, 1, 1] + a[:, 2, 1]
    return map_x.astype(np.float32), map_y.astype(np.float32)


def warp_region(image: np.ndarray, src: np.ndarray, dst: np.ndarray, box=None) -> np.ndarray:
    """Warp ``image`` so that points ``src`` move to ``dst``; only ``box`` is resampled."""
    h, w = image.shape[:2]
    if box is None:
        lo = np.floor(np.minimum(src.min(0), dst.min(0))).astype(int)
        hi = np.ceil(np.maximum(src.max(0), dst.max(0))).astype(int) + 1
        box = (max(lo[0], 0), max(lo[1], 0), min(hi[0], w), min(hi[1], h))
    x0, y0, x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0), min(int(box[2]), w), min(int(box[3]), h)
    box = (x0, y0, x1, y1)
    if x1 <= x0 or y1 <= y0:
        return image.copy()
    mx, my = piecewise_affine_maps(src.astype(np.float64), dst.astype(np.float64), box)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return out
