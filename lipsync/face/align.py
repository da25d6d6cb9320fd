"""Aligned face crops: a similarity fit to a frozen template, the warp, and the exact paste-back.

Crop coordinates. A crop of ``size`` px maps the template's unit square onto it: (0, 0) is the
crop's top-left corner, (1, 1) its bottom-right one, so pixel (i, j) has its centre at
((i + 0.5) / size, (j + 0.5) / size). Crop pixel = unit * size - 0.5. The same template therefore
frames the face identically at 64, 96, 128, 256 or 512 px.

Framing (``TEMPLATE``) reproduces LatentSync's aligned crops. LatentSync (AlignRestore, from
StyleSync) fits a 3-point similarity taking the two eyebrow centres and the nose centre to
(17, 20), (58, 20), (37.5, 40) in a 75 x 100 box, then resizes that box to a square. We fitted the
same 3 points, measured on the mesh of the bundled astronaut portrait (brow centre = mean of the
10 brow points, nose centre = mean of 197, 195, 5, 4, the choice for which the portrait's brow /
nose triangle matches LatentSync's with < 0.5 px residual), mapped the portrait's mesh through it
into a square of the box's height, made it left/right symmetric, and froze the numbers below.
Result: eyes at 0.28 of the height, nose tip 0.51, lips 0.61, chin 0.88, forehead top 0.03.

LatentSync's resize of the 75 x 100 box to a square stretches faces horizontally by 4/3. Our
default keeps proportions (a true similarity, aspect 1); ``aspect=LATENTSYNC_ASPECT`` reproduces
LatentSync's geometry (then M is a similarity followed by that stretch), for its public weights.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.face.mask import feather

# (mesh index, u, v, weight). Weights: rigid upper face 1; mouth corners and chin 0 (kept for the
# template's framing only). They move with speech, and at any weight the crop shifts and zooms with
# the jaw: at 0.3 the upper face (the UNet's unmasked input) moved ~0.1 px in step with the jaw
# (median |r| 0.86 over the points above the mask), a cue the trained UNet read, so dubs kept some
# of the original speaker's mouth motion (LSE-C 0.74x of the ground truth, 0.79x at weight 0).
_TEMPLATE_ROWS = (
    (33, 0.2551, 0.2815, 1.0),   # right eye outer corner
    (133, 0.4067, 0.2976, 1.0),  # right eye inner corner
    (362, 0.5933, 0.2976, 1.0),  # left eye inner corner
    (263, 0.7449, 0.2815, 1.0),  # left eye outer corner
    (168, 0.5000, 0.2668, 1.0),  # nose bridge, between the eyes
    (6, 0.5000, 0.3084, 1.0),
    (197, 0.5000, 0.3480, 1.0),
    (195, 0.5000, 0.3845, 1.0),
    (5, 0.5000, 0.4241, 1.0),
    (4, 0.5000, 0.4717, 1.0),
    (1, 0.5000, 0.5063, 1.0),    # nose tip
    (2, 0.5000, 0.5271, 1.0),    # nose bottom (subnasale)
    (98, 0.3920, 0.5001, 1.0),   # nostril wings
    (327, 0.6080, 0.5001, 1.0),
    (61, 0.3271, 0.5843, 0.0),   # mouth corners
    (291, 0.6729, 0.5843, 0.0),
    (152, 0.5000, 0.8807, 0.0),  # chin
)
TEMPLATE_INDICES = np.array([r[0] for r in _TEMPLATE_ROWS], dtype=np.int64)
TEMPLATE = np.array([(r[1], r[2]) for r in _TEMPLATE_ROWS], dtype=np.float64)  # unit square
TEMPLATE_WEIGHTS = np.array([r[3] for r in _TEMPLATE_ROWS], dtype=np.float64)

# LatentSync's crop box is 75 x 100 resized to a square: horizontal / vertical scale ratio.
LATENTSYNC_ASPECT = 100.0 / 75.0
SUPPORTED_SIZES = (64, 96, 128, 256, 512)  # any size works; these are the ones the models use
# Bicubic, not bilinear, for the image warps: an unchanged 96 px crop pasted back reproduces a
# 60 px face at ~44 dB PSNR instead of ~35 dB (measured); overshoot is clipped for uint8.
DEFAULT_INTERPOLATION = cv2.INTER_CUBIC


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation; never a
    reflection) taking src points to dst points, as a 2 x 3 matrix."""
    src = np.asarray(src, dtype=np.float64)[:, :2]
    dst = np.asarray(dst, dtype=np.float64)[:, :2]
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    p, q = src - mu_s, dst - mu_d
    den = float(w @ (p * p).sum(axis=1))
    if den < 1e-12:
        raise ValueError("degenerate landmarks: all alignment points coincide")
    # In complex form the optimum is (a + ib) = sum w conj(p) q / sum w |p|^2.
    a = float(w @ (p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1])) / den
    b = float(w @ (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])) / den
    r = np.array([[a, -b], [b, a]])
    t = mu_d - r @ mu_s
    return np.hstack([r, t[:, None]])


def estimate_alignment(landmarks: np.ndarray, size: int, aspect: float = 1.0) -> np.ndarray:
    """2 x 3 matrix taking frame pixel coordinates to the pixel coordinates of a size x size
    aligned crop (see the module doc). `landmarks`: the 478 (or 468) mesh points in frame pixels.
    aspect != 1 stretches the crop horizontally about its centre after the similarity fit."""
    lm = np.asarray(landmarks, dtype=np.float64)
    dst = TEMPLATE * size - 0.5
    m = fit_similarity(lm[TEMPLATE_INDICES, :2], dst, TEMPLATE_WEIGHTS)
    if aspect != 1.0:
        c = size / 2.0 - 0.5
        stretch = np.array([[aspect, 0.0, c * (1.0 - aspect)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = (stretch @ np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    return m


def _to3(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))


def warp_landmarks(landmarks: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply M to (N, 2) or (N, 3) points; z (if any) is scaled by M's scale."""
    pts = np.asarray(landmarks, dtype=np.float64)
    m = np.asarray(M, dtype=np.float64)
    out = pts.copy()
    out[:, :2] = pts[:, :2] @ m[:, :2].T + m[:, 2]
    if pts.shape[1] > 2:
        out[:, 2:] *= np.sqrt(abs(np.linalg.det(m[:, :2])))
    return out.astype(np.float32)


def _resample_matrix(k: float) -> np.ndarray:
    """3 x 3 map from an image's pixel coords to those of the image resized by k (cv2.resize's
    pixel-centre convention)."""
    return np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5], [0.0, 0.0, 1.0]])


def warp_to_crop(image: np.ndarray, M: np.ndarray, size: int, interpolation: int = DEFAULT_INTERPOLATION,
                 border_mode: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """The size x size crop seen through M (frame -> crop), borders replicated. When the crop is
    coarser than the frame (the usual case on 1080p), the covered region is first area-averaged
    to about the crop's resolution, because point sampling alone would alias."""
    m = np.asarray(M, dtype=np.float64)
    s_max = float(np.linalg.svd(m[:, :2], compute_uv=False).max())
    if s_max < 0.7:
        h, w = image.shape[:2]
        inv = invert(m)
        box = np.array([[-0.5, -0.5], [size, -0.5], [-0.5, size], [size, size]])
        corners = box @ inv[:, :2].T + inv[:, 2]
        pad = 2.0 / s_max
        x0 = int(max(0, np.floor(corners[:, 0].min() - pad)))
        y0 = int(max(0, np.floor(corners[:, 1].min() - pad)))
        x1 = int(min(w, np.ceil(corners[:, 0].max() + pad)))
        y1 = int(min(h, np.ceil(corners[:, 1].max() + pad)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            roi = image[y0:y1, x0:x1]
            nw, nh = max(2, int(round((x1 - x0) * s_max))), max(2, int(round((y1 - y0) * s_max)))
            small = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            kx, ky = nw / (x1 - x0), nh / (y1 - y0)
            # small pixel -> frame pixel
            back = np.array([[1 / kx, 0.0, x0 + 0.5 / kx - 0.5],
                             [0.0, 1 / ky, y0 + 0.5 / ky - 0.5],
                             [0.0, 0.0, 1.0]])
            m = (_to3(m) @ back)[:2]
            image = small
    return cv2.warpAffine(image, m, (size, size), flags=interpolation, borderMode=border_mode)


def paste_back(image: np.ndarray, crop: np.ndarray, M: np.ndarray, mask: np.ndarray,
               feather_px: float | None = None, interpolation: int = DEFAULT_INTERPOLATION) -> np.ndarray:
    """New frame = `image` with `crop` warped back through the exact inverse of M (frame -> crop)
    and blended by `mask` (crop-space, 1 = regenerated region), feathered over `feather_px` crop
    pixels (default size / 20) inside the mask's edge. Pixels where the warped feathered mask is 0
    are bit-identical to `image`; only the mask's bounding box in the frame is processed."""
    size = crop.shape[0]
    if crop.shape[1] != size or mask.shape[:2] != crop.shape[:2]:
        raise ValueError(f"crop {crop.shape} and mask {mask.shape} must be the same square size")
    m = np.asarray(M, dtype=np.float64)
    hard = np.asarray(mask, dtype=np.float32)
    hard = hard[..., 0] if hard.ndim == 3 else hard
    px = size / 20.0 if feather_px is None else float(feather_px)
    out = image.copy()
    # When the crop is much finer than the frame (512 crop of a small face), shrink it first:
    # sampling a 4x finer image point-wise would alias. The mask shrinks to the pixels lying wholly
    # inside it, so the pasted region never grows past the mask
    s_min = float(np.linalg.svd(m[:, :2], compute_uv=False).min())
    if s_min > 1.5:
        n = max(2, int(round(size / s_min)))
        k = n / size
        crop = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
        inside = cv2.resize((hard > 0).astype(np.float32), (n, n), interpolation=cv2.INTER_AREA) >= 1.0 - 1e-6
        # ... and one more pixel in: bilinear sampling reaches a pixel's neighbours' footprints.
        inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8),
                           borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        hard = np.where(inside, cv2.resize(hard, (n, n), interpolation=cv2.INTER_AREA), 0.0).astype(np.float32)
        px *= k
        m = (_resample_matrix(k) @ _to3(m))[:2]
    soft = feather(hard, px)
    ys, xs = np.nonzero(soft > 0)
    if len(xs) == 0:
        return out
    inv = invert(m)
    u0, u1, v0, v1 = xs.min() - 1.0, xs.max() + 1.0, ys.min() - 1.0, ys.max() + 1.0
    corners = np.array([[u0, v0], [u1, v0], [u0, v1], [u1, v1]]) @ inv[:, :2].T + inv[:, 2]
    h, w = image.shape[:2]
    x0 = int(max(0, np.floor(corners[:, 0].min())))
    y0 = int(max(0, np.floor(corners[:, 1].min())))
    x1 = int(min(w, np.ceil(corners[:, 0].max()) + 1))
    y1 = int(min(h, np.ceil(corners[:, 1].max()) + 1))
    if x1 <= x0 or y1 <= y0:
        return out
    # ROI pixel -> crop pixel, for warpAffine's inverse-map mode.
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    rw, rh = x1 - x0, y1 - y0
    face = cv2.warpAffine(crop, m_roi, (rw, rh), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    # The mask stays bilinear: cubic would ring below 0 / above 1 along its edge.
    alpha = cv2.warpAffine(soft.astype(np.float32), m_roi, (rw, rh),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(alpha, 0.0, 1.0)
    roi = out[y0:y1, x0:x1]
    a = alpha[..., None] if roi.ndim == 3 else alpha
    blended = roi.astype(np.float32) * (1.0 - a) + face.astype(np.float32) * a
    if np.issubdtype(roi.dtype, np.integer):
        info = np.iinfo(roi.dtype)
        blended = np.clip(np.rint(blended), info.min, info.max)
    out[y0:y1, x0:x1] = np.where(a > 0, blended.astype(roi.dtype), roi)
    return out
