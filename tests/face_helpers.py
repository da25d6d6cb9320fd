"""Synthetic test frames built from the bundled astronaut portrait.

The portrait's face (mesh extents about x 179..271, y 71..178 in the 512 x 512 photo) is cut out with
its hair and neck, scaled so the face has a wanted width, optionally rotated, and blended with a soft
elliptical edge onto a textured background: a flat background would make detection too easy and
would hide false positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ASTRONAUT = Path(__file__).resolve().parents[1] / "lipsync" / "assets" / "faces" / "astronaut.jpg"

# Face box in the photo (tight box around the 478 mesh points, measured once with FaceDetector).
PHOTO_FACE_BOX = (179.0, 71.0, 271.0, 178.0)
# Patch cut around the face: head, hair and some neck, so the detector sees a whole head.
_PATCH = (110, 20, 340, 250)  # x0, y0, x1, y1 in the photo


def load_astronaut() -> np.ndarray:
    bgr = cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR)
    assert bgr is not None, ASTRONAUT
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def textured_background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blobs at several scales plus stripes and fine grain: no flat areas, no faces."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((256, 0.5), (64, 0.3), (16, 0.15)):
        small = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        acc += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    acc += 0.08 * np.sin((xx * 0.7 + yy * 0.3) / 9.0)[..., None]
    acc += 0.05 * rng.standard_normal((height, width, 3)).astype(np.float32)
    acc = (acc - acc.min()) / (acc.max() - acc.min())
    return (40 + 180 * acc).astype(np.uint8)


@dataclass
class Pasted:
    box: tuple[float, float, float, float]  # expected face box (mesh extents) in the frame
    center: tuple[float, float]  # where the face box centre was put
    face_width: float
    angle: float


def paste_face(
    frame: np.ndarray,
    photo: np.ndarray,
    face_width: float,
    center: tuple[float, float],
    angle: float = 0.0,
) -> Pasted:
    """Blend the astronaut's head into `frame` (in place) so its face box has width `face_width` and
    is centred on `center`, rolled by `angle` degrees (counter-clockwise, as cv2). Returns the
    expected face box (axis-aligned box of the rotated face box corners, for angle 0 exact)."""
    fx0, fy0, fx1, fy1 = PHOTO_FACE_BOX
    s = face_width / (fx1 - fx0)
    fc = np.array([(fx0 + fx1) / 2, (fy0 + fy1) / 2])
    px0, py0, px1, py1 = _PATCH
    patch = photo[py0:py1, px0:px1].astype(np.float32)
    ph, pw = patch.shape[:2]
    # Elliptical alpha with a soft edge, so no square seam is pasted.
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    r = np.sqrt(((xx - pw / 2) / (pw / 2)) ** 2 + ((yy - ph / 2) / (ph / 2)) ** 2)
    alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0)
    rgba = np.dstack([patch, alpha * 255.0])
    # Patch coords -> frame coords: rotate about the face centre, scale, translate.
    c_patch = fc - np.array([px0, py0])
    m = cv2.getRotationMatrix2D((float(c_patch[0]), float(c_patch[1])), angle, s)
    m[:, 2] += np.asarray(center) - c_patch
    h, w = frame.shape[:2]
    warped = cv2.warpAffine(rgba, m, (w, h), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = warped[..., 3:4] / 255.0
    frame[:] = np.clip(frame * (1 - a) + warped[..., :3] * a + 0.5, 0, 255).astype(np.uint8)
    corners = np.array([[fx0, fy0, 1], [fx1, fy0, 1], [fx1, fy1, 1], [fx0, fy1, 1]], np.float64)
    corners[:, :2] -= [px0, py0]
    pts = corners @ m.T
    box = (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))
    return Pasted(box=box, center=tuple(map(float, center)), face_width=face_width, angle=angle)


def iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


@dataclass
class Frame:
    """Stand-in for the media layer's VideoFrame: anything with .index, .time, .image works."""

    index: int
    time: float
    image: np.ndarray
