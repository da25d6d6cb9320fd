"""Compositing a regenerated face crop back into its frame so that the person stays who they are.

The model regenerates a whole lower-face crop at low resolution (96 px for ``tiny``) through a VAE
that shifts colour and drops fine texture. Pasting that crop back as it is (LatentSync's way, kept as
``composite: latentsync``) replaces the person's skin, stubble and wrinkles with a smooth patch of a
slightly different colour. The ``person`` composite keeps of the generated crop only what speech
changes and takes everything else from the source frame:

* **Where**: the lower face as the face mesh draws it (jaw from cheek to cheek under the nose, the
  nose's lower rim, the lips), grown downwards by how far a jaw may drop, and never above the
  nostrils: eyes, brows and hair are never touched. Outside a feathered band the frame is
  bit-for-bit the input.
* **Colour and lighting**: the generated crop is shifted by a smooth offset field, the source minus
  the generated crop averaged (normalised convolution) over the skin around the mouth, so its
  colour and shading gradients follow the source frame's. Over a clip, the model's *steady*
  difference from this person (a beard it draws as bare skin, a mole, a shadow: the same in every
  frame) is learnt per crop pixel (:class:`Appearance`, a running mean over about a second) and
  taken out, so what is left of the model's image there is what it changes from frame to frame:
  the speech. Around the mouth only the smooth field applies: there the steady difference would
  include the mean mouth shape.
* **The person's pixels in the model's shape** (the ``person_warp`` mode: given ``gen_points``, the
  generated crop's own mesh points from :class:`lipsync.face.crop_mesh.CropMesh`): the source is moved by a thin-plate
  spline so that its jaw and lips land where the model put them (:func:`shape_warp`), and the
  region shows that moved source (the person's lips, beard, skin and, below the jaw, neck),
  with the model's pixels inside its inner lips (:func:`mouth_inside`) and, elsewhere, the model's
  coarse shape added where it still differs from the moved source (``WARP_SHAPE``: an opening the
  mesh read short). A jaw the model closes thus leaves no second chin, and a low-resolution model
  no blur. The bundled model's mode. Without ``gen_points`` (no face found on the
  crop) or with ``PERSON_PIXELS`` off, the blend below applies.
* **Texture**: at frame resolution, the generated image contributes its low frequencies everywhere
  in the region (the jaw and lip shape) and its high frequencies only where its shape differs from
  the source's (an opening mouth, a dropping jaw: judged on coarse low-passes, so the model's blur
  alone is no change); elsewhere the source's fine detail (pores, stubble, wrinkles, lip lines)
  rides on the generated shape, like a two-band Laplacian-pyramid blend with a per-band mask.

Per-frame inputs: the generated crop, the frame -> crop matrix and a few mesh points in crop
coordinates (:func:`crop_points`), small enough to travel with a batch job's plan.
"""

from __future__ import annotations

import cv2
import numpy as np

from lipsync.face import landmarks as lmk
from lipsync.face.align import DEFAULT_INTERPOLATION, _resample_matrix, _to3, invert, warp_landmarks, warp_to_crop
from lipsync.face.mask import feather
from lipsync.options import COMPOSITE_MODES  # noqa: F401  (declared with the options; re-exported here)

# The mesh points the composite needs, in this order; crop_points() returns them.
_JAW = tuple(lmk.JAW[2:-2])  # cheek at nose height, over the chin, to the other cheek
_NOSE = lmk.NOSE_BOTTOM_ARC
_LIPS = lmk.LIPS_OUTER
_INNER = lmk.LIPS_INNER  # where the opening is: the shape warp moves the source's onto the generated one
POINT_INDICES = np.array(_JAW + _NOSE + _LIPS + _INNER, dtype=np.int64)
_J = slice(0, len(_JAW))
_N = slice(len(_JAW), len(_JAW) + len(_NOSE))
_L = slice(len(_JAW) + len(_NOSE), len(_JAW) + len(_NOSE) + len(_LIPS))
_I = slice(len(_JAW) + len(_NOSE) + len(_LIPS), len(POINT_INDICES))

# Fractions of the crop size (the template puts nose tip 0.51, lips 0.61, chin 0.88).
JAW_DROP = 0.07  # how far the generated chin may sit below the source's
REGION_GROW = 0.04  # the region's edge lies this far outside the jaw line, on background or neck
REGION_FEATHER = 0.08  # width of the blend ramp inside the region's edge
MOUTH_GROW = 0.05  # around the lips (and below, where an opening mouth's lower lip goes) the skin's
MOUTH_DROP = 0.05  # colour is not measured: an open mouth's teeth and dark inside are no skin
COLOUR_SIGMA = 0.12  # smoothness of the colour / lighting offset field
COLOUR_OUTLIER = 20.0  # grey levels: larger differences are of shape, not colour (see match_colour)
# Frame-space: generated and source low-passes differing by more than this (grey levels, luma)
# mean the shape changed there, so the generated detail is kept as well.
CHANGE_LO, CHANGE_HI = 6.0, 16.0
CHANGE_SCALE = 2.0  # the change is judged on low-passes this many crop pixels wide: a blur is no change
# Appearance: half-life of the per-pixel running mean, frames (0: off). Syllables (~5 Hz) average
# out, lighting changes over seconds are followed.
APPEARANCE_HALF_LIFE = 25.0
APPEARANCE_PRIOR = 3.0  # frames of evidence at which the per-pixel offset gets half the weight
# person_warp's shape warp (shape_warp): moves of at most JAW_FOLLOW_MAX, back to none at
# JAW_FOLLOW_BAND below the lower jaw (neck, collar) and at the nose's rim. BAND > MAX keeps the
# mapping one-to-one (nothing folds).
JAW_FOLLOW_MAX = 0.12
JAW_FOLLOW_BAND = 0.25
JAW_FOLLOW_MARGIN = 0.02  # the region then ends this far below the generated jaw (plus REGION_GROW)
# With the generated face's points the region shows the person's own pixels moved into the generated
# shape, and the model's pixels inside the mouth (mouth_inside): its whole inner lip contour
# ("inner"), or within its outer lips where darker than the moved source by INSIDE_LO..INSIDE_HI
# grey levels ("dark"), judged on low-passes INSIDE_BLUR of the crop wide.
PERSON_PIXELS = True
WARP_GAIN = 1.5  # the moves the mesh reads, scaled (it reads about 2/3 of a blurred mouth's)
INSIDE = "inner"
INSIDE_LO, INSIDE_HI = 10.0, 30.0
INSIDE_BLUR = 0.015
# The moved source alone lost SyncNet confidence (the mesh reads a blurred opening short): the
# model's coarse shape (its wide low-pass minus the moved source's, where the two differ) is added
# back outside the mouth's inside. Wide, so the source's own mid-band detail stays.
WARP_SHAPE = 1.0


class Appearance:
    """The model's steady difference from one face, per crop pixel: a running (exponentially
    decaying) mean of ``source - generated`` over the skin, one per face track. It starts anew
    when a frame is skipped (no face, another shot) or the crop size changes."""

    def __init__(self) -> None:
        self.num: np.ndarray | None = None
        self.den: np.ndarray | None = None
        self.last: int | None = None

    def update(self, index: int | None, diff: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Adds one frame; returns (mean offset per pixel, its confidence in [0, 1))."""
        fresh = (self.num is None or self.num.shape != diff.shape or index is None or self.last is None
                 or index != self.last + 1)
        if fresh:
            self.num = np.zeros_like(diff, dtype=np.float32)
            self.den = np.zeros(diff.shape[:2], np.float32)
        decay = 0.5 ** (1.0 / APPEARANCE_HALF_LIFE)
        self.num = decay * self.num + diff * weight[..., None]
        self.den = decay * self.den + weight
        self.last = index
        mean = self.num / np.maximum(self.den, 1e-6)[..., None]
        return mean, self.den / (self.den + APPEARANCE_PRIOR)


def crop_points(landmarks: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(K, 2) float32: the composite's mesh points (``POINT_INDICES``) in crop coordinates."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return warp_landmarks(lm[POINT_INDICES, :2], M)[:, :2].astype(np.float32)


def _hull_mask(points: np.ndarray, size: int) -> np.ndarray:
    hull = cv2.convexHull(np.round(np.asarray(points, np.float64) * 16).astype(np.int32))
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 1, lineType=cv2.LINE_8, shift=4)
    return m


def _dilate(m: np.ndarray, r: float) -> np.ndarray:
    r = int(round(r))
    if r <= 0:
        return m
    return cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def shape_warp(points: np.ndarray, gen_points: np.ndarray | None, size: int):
    """``(u, v) -> (du, dv)`` in crop pixels, or None when there is nothing to move: where to read
    the source so that its jaw and lips (``points``) land where the generated crop has them
    (``gen_points``). A thin-plate spline through the point pairs, held at 0 on a frame around them
    (the nose's lower rim above, ``JAW_FOLLOW_BAND`` below the lower jaw, a little outside the jaw's
    ends), and 0 outside that frame. Moves are clipped to ``JAW_FOLLOW_MAX``."""
    from scipy.interpolate import RBFInterpolator

    if gen_points is None:
        return None
    src, gen = np.asarray(points, np.float64), np.asarray(gen_points, np.float64)
    if src.shape != gen.shape or not np.isfinite(gen).all():
        return None
    lim = JAW_FOLLOW_MAX * size
    idx = np.arange(len(POINT_INDICES))
    moving = np.concatenate([idx[_J], idx[_L], idx[_I]])
    d = np.clip(WARP_GAIN * (src[moving] - gen[moving]), -lim, lim)
    v0 = float(src[_N][:, 1].min())  # the nose's rim: nothing above it moves
    # The jaw's upper ends (the cheeks at nose height) barely move with the mouth; moving them as
    # much as the chin sheared the face's outline against the still frame above (a step at the cheek).
    chin = float(src[_J][:, 1].max())
    t = np.clip((src[moving][:, 1] - v0) / max(chin - v0, 1.0), 0.0, 1.0)
    d *= (t * t * (3.0 - 2.0 * t))[:, None]
    if np.abs(d).max() < 0.25:  # under a quarter crop pixel: not worth resampling the source
        return None
    taper = 0.05 * size
    jaw = np.concatenate([src[_J], gen[_J]])
    u0, u1 = jaw[:, 0].min() - taper, jaw[:, 0].max() + taper
    v1 = float(jaw[:, 1].max()) + JAW_FOLLOW_BAND * size
    ring = [(u, v0) for u in np.linspace(u0, u1, 9)] + [(u, v1) for u in np.linspace(u0, u1, 9)]
    ring += [(u, v) for v in np.linspace(v0, v1, 7)[1:-1] for u in (u0, u1)]
    ctrl = np.concatenate([gen[moving], src[_N], np.array(ring)])
    disp = np.concatenate([d, np.zeros((len(src[_N]) + len(ring), 2))])
    spline = RBFInterpolator(ctrl, disp, kernel="thin_plate_spline", smoothing=0.5)
    # The spline on a grid of 2 crop pixels, sampled bilinearly: the same field at a tenth of the cost.
    step = 2.0
    gu, gv = np.arange(u0, u1 + step, step), np.arange(v0, v1 + step, step)
    uu, vv = np.meshgrid(gu, gv)
    field = spline(np.stack([uu.ravel(), vv.ravel()], axis=1)).reshape(len(gv), len(gu), 2).astype(np.float32)

    def warp(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        inside = (u > u0) & (u < u1) & (v > v0) & (v < v1)
        at = cv2.remap(field, ((u - u0) / step).astype(np.float32), ((v - v0) / step).astype(np.float32),
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.where(inside, at[..., 0], 0.0), np.where(inside, at[..., 1], 0.0)

    warp.reach = v1  # lowest crop row the warp touches
    warp.span = (float(u0), float(u1), v0)
    return warp


def region_masks(points: np.ndarray, size: int, regen: np.ndarray | None = None,
                 gen_points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crop-space (paste, mouth) masks, float32 in [0, 1], feathered inside their edges.

    ``paste``: where the composite may change the frame (lower face below the nostrils, grown
    downwards for a dropping jaw), cut to ``regen`` (the model's regenerated region) if given.
    With ``gen_points`` (the generated face's points, the source's jaw moved onto them) the region
    ends at the generated jaw instead: below it the moved source continues the generated chin.
    ``mouth``: around the lips and below them, where the mouth may move: left out when the colour
    of the skin is matched."""
    pts = np.asarray(points, np.float64)
    if pts.shape != (len(POINT_INDICES), 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected {len(POINT_INDICES)} finite crop points, got {pts.shape}")
    if gen_points is None:
        drop = np.array([0.0, JAW_DROP * size])
        lower = np.concatenate([pts[_J], pts[_N], pts[_L], pts[_J] + drop, pts[_L] + drop])
    else:
        gen = np.asarray(gen_points, np.float64)
        margin = np.array([0.0, JAW_FOLLOW_MARGIN * size])
        lower = np.concatenate([gen[_J] + margin, pts[_N], pts[_L], gen[_L]])
    region = _dilate(_hull_mask(lower, size), REGION_GROW * size)
    # Nothing above the nose's lower rim (a line through its wings), whatever the dilation did.
    nose = pts[_N]
    (x0, y0), (x1, y1) = nose[0], nose[-1]
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    slope = (y1 - y0) / (x1 - x0) if abs(x1 - x0) > 1e-6 else 0.0
    region[v < y0 + slope * (u - x0) + 0.02 * size] = 0
    paste = region.astype(np.float32)
    if regen is not None:
        paste *= (np.asarray(regen, np.float32) > 0.5)
    lips = pts[_L]
    mouth = _dilate(_hull_mask(np.concatenate([lips, lips + [0.0, MOUTH_DROP * size]]), size), MOUTH_GROW * size)
    mouth = mouth.astype(np.float32) * (paste > 0)
    return feather(paste, REGION_FEATHER * size), feather(mouth, MOUTH_GROW * size)


def match_colour(generated: np.ndarray, source: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """``generated`` (float32 crop) plus a smooth offset field: the weighted local mean of
    ``source - generated`` over ``weight`` (normalised convolution with a Gaussian of ``sigma``
    px), falling back to the global offset where the weight is thin.

    Only pixels whose difference is a colour difference count: after the global (median) offset is
    taken out, a pixel still differing by ``COLOUR_OUTLIER`` grey levels or more is a difference of
    shape (the source's own jaw or mouth where the model put another), and averaging it in would
    paint the source's mouth motion back in at low frequency (synthetic pair: LSE-C 0.266 with it,
    0.336 without, 0.314 for LatentSync's paste)."""
    w = np.asarray(weight, np.float32)
    src = source.astype(np.float32)
    diff = src - generated
    ring = w > 0
    if int(ring.sum()) < 4:
        return generated
    offset = np.median(diff[ring], axis=0)
    w = w * (np.abs(_luma(diff - offset)) < COLOUR_OUTLIER)
    total = float(w.sum())
    if total < 1.0:
        return generated + offset
    k = (0, 0)
    num = cv2.GaussianBlur(diff * w[..., None], k, sigma, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(w, k, sigma, borderType=cv2.BORDER_CONSTANT)[..., None]
    # Where little skin is near, lean on the global offset: no wild values from tiny denominators.
    floor = 0.05
    return generated + (num + floor * offset) / (den + floor)


def _shifted_crop(image: np.ndarray, m: np.ndarray, size: int, warp) -> np.ndarray:
    """The source crop read through ``warp`` (:func:`shape_warp`): what lies beyond the crop comes
    from a crop warped with a margin around it."""
    a = int(np.ceil(JAW_FOLLOW_MAX * size)) + 2
    m_big = m.copy()
    m_big[:, 2] += a
    big = warp_to_crop(image, m_big, size + 2 * a)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    du, dv = warp(u, v)
    return cv2.remap(big, (u + du + a).astype(np.float32), (v + dv + a).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _shifted_roi(image: np.ndarray, m: np.ndarray, warp, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` with the source read through ``warp``: frame pixel (x, y) at crop
    (u, v) shows the source at crop (u + du, v + dv); where nothing moves the pixels are the input's own."""
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u = m[0, 0] * x + m[0, 1] * y + m[0, 2]
    v = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    du, dv = warp(u, v)
    inv = invert(m)
    moved = cv2.remap(image, (x + inv[0, 0] * du + inv[0, 1] * dv).astype(np.float32),
                      (y + inv[1, 0] * du + inv[1, 1] * dv).astype(np.float32),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    roi = image[y0:y1, x0:x1]
    keep = (np.abs(du) + np.abs(dv) < 1e-3)
    if roi.ndim == 3:
        keep = keep[..., None]
    return np.where(keep, roi, moved)


def mouth_inside(generated: np.ndarray, moved_source: np.ndarray, gen_points: np.ndarray, size: int) -> np.ndarray:
    """Crop-space weight of the generated mouth's inside, feathered. ``INSIDE == "dark"``: within
    the generated lips' outline, where the generated crop is darker than the source moved into its
    shape (an opening the source does not have: the source's lips there are only stretched).
    ``"inner"``: all of the generated inner lip contour (the source's teeth and tongue, which move
    with the source's own speech, never show)."""
    sigma = max(1.0, INSIDE_BLUR * size)
    if INSIDE == "inner":
        inner = _dilate(_hull_mask(np.asarray(gen_points, np.float64)[_I], size), 0.01 * size).astype(np.float32)
        return cv2.GaussianBlur(inner, (0, 0), sigma)
    lips = _hull_mask(np.asarray(gen_points, np.float64)[_L], size).astype(np.float32)
    dark = _luma(cv2.GaussianBlur(moved_source, (0, 0), sigma)) - _luma(cv2.GaussianBlur(generated, (0, 0), sigma))
    w = np.clip((dark - INSIDE_LO) / (INSIDE_HI - INSIDE_LO), 0.0, 1.0) * lips
    return cv2.GaussianBlur(w, (0, 0), sigma)


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def composite_person(image: np.ndarray, crop: np.ndarray, M: np.ndarray, points: np.ndarray,
                     regen: np.ndarray | None = None, interpolation: int = DEFAULT_INTERPOLATION,
                     appearance: Appearance | None = None, index: int | None = None,
                     gen_points: np.ndarray | None = None) -> np.ndarray:
    """The frame with the person-keeping composite of ``crop`` (see the module doc). ``M`` maps
    frame -> crop, ``points`` are :func:`crop_points` of this frame's face, ``regen`` the crop's
    regenerated region (1 = generated). ``appearance``: the face track's :class:`Appearance`, fed
    the frames in order (``index`` is the frame's number); without it only the smooth colour field
    applies. ``gen_points``: the same mesh points found on ``crop`` (the generated jaw), or None
    to keep the source's jaw. Pixels outside the feathered region (and, with ``gen_points``, the
    band below the jaw that follows it) are bit-identical to ``image``; only the region's
    bounding box is processed."""
    size = crop.shape[0]
    m = np.asarray(M, dtype=np.float64)
    m_frame = m.copy()  # frame -> crop at the crop's own size (m is rescaled below for fine crops)
    shift = shape_warp(points, gen_points, size)
    paste, mouth = region_masks(points, size, regen, gen_points if shift is not None else None)
    out = image.copy()
    if not (paste > 0).any():
        return out
    src_crop = (warp_to_crop(image, m, size) if shift is None else _shifted_crop(image, m, size, shift)).astype(np.float32)
    skin = (paste > 0.5).astype(np.float32) * (1.0 - np.minimum(1.0, mouth * 4.0))
    raw = crop.astype(np.float32)
    gen = match_colour(raw, src_crop, skin, COLOUR_SIGMA * size)
    if appearance is not None and APPEARANCE_HALF_LIFE > 0:
        inside = (paste > 0.5).astype(np.float32)
        steady, confidence = appearance.update(index, src_crop - raw, inside)
        # Not around the mouth: there the steady difference holds the mean mouth shape, and taking
        # it out (wholly, half, or its colour only) broke the mouth's sync on real portraits
        # (mouth r against the speech 0.78 -> -0.81 on one of them).
        w = (confidence * skin)[..., None]
        gen = w * (raw + steady) + (1.0 - w) * gen
    inner = None
    if shift is not None and PERSON_PIXELS:
        inner = mouth_inside(gen, src_crop, gen_points, size)
    # A crop much finer than the frame (512 px crop of a small face) is shrunk first, as paste_back
    # does: sampling it point-wise would alias.
    s_min = float(np.linalg.svd(m[:, :2], compute_uv=False).min())
    if s_min > 1.5:
        n = max(2, int(round(size / s_min)))
        k = n / size
        gen = cv2.resize(gen, (n, n), interpolation=cv2.INTER_AREA)
        paste = cv2.resize(paste, (n, n), interpolation=cv2.INTER_AREA)
        if inner is not None:
            inner = cv2.resize(inner, (n, n), interpolation=cv2.INTER_AREA)
        m = (_resample_matrix(k) @ _to3(m))[:2]
        s_min /= k
    ys, xs = np.nonzero(paste > 0)
    inv = invert(m)
    u0, u1, v0, v1 = xs.min() - 1.0, xs.max() + 1.0, ys.min() - 1.0, ys.max() + 1.0
    corners = np.array([[u0, v0], [u1, v0], [u0, v1], [u1, v1]]) @ inv[:, :2].T + inv[:, 2]
    if shift is not None:  # the band below the jaw that moves with it, in the frame
        inv_f = invert(m_frame)
        su0, su1, sv0 = shift.span
        band = np.array([[su0, sv0], [su1, sv0], [su0, shift.reach], [su1, shift.reach]])
        corners = np.concatenate([corners, band @ inv_f[:, :2].T + inv_f[:, 2]])
    h, w = image.shape[:2]
    pad = int(np.ceil(3.0 / max(s_min, 1e-3)))  # room for the low-pass near the ROI's edge
    x0 = int(max(0, np.floor(corners[:, 0].min()) - pad))
    y0 = int(max(0, np.floor(corners[:, 1].min()) - pad))
    x1 = int(min(w, np.ceil(corners[:, 0].max()) + 1 + pad))
    y1 = int(min(h, np.ceil(corners[:, 1].max()) + 1 + pad))
    if x1 <= x0 or y1 <= y0:
        return out
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    rw, rh = x1 - x0, y1 - y0
    inverse = cv2.WARP_INVERSE_MAP

    def back(a: np.ndarray, flags: int, border: int) -> np.ndarray:
        return cv2.warpAffine(a, m_roi, (rw, rh), flags=flags | inverse, borderMode=border, borderValue=0)

    g = back(gen, interpolation, cv2.BORDER_REPLICATE)
    a_p = np.clip(back(paste, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT), 0.0, 1.0)
    roi = out[y0:y1, x0:x1]
    if shift is not None:
        roi = _shifted_roi(image, m_frame, shift, x0, y0, x1, y1)
    s = roi.astype(np.float32)
    # The split between "shape" and "texture": the generated crop holds nothing finer than one
    # crop pixel, which covers 1 / s_min frame pixels.
    sigma = max(0.8, 1.0 / max(s_min, 1e-3))
    lg = cv2.GaussianBlur(g, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    ls = cv2.GaussianBlur(s, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    wide = CHANGE_SCALE * sigma
    wg = cv2.GaussianBlur(lg, (0, 0), wide, borderType=cv2.BORDER_REFLECT)
    ws = cv2.GaussianBlur(ls, (0, 0), wide, borderType=cv2.BORDER_REFLECT)
    change = np.abs(_luma(wg) - _luma(ws))
    a_c = np.clip((change - CHANGE_LO) / (CHANGE_HI - CHANGE_LO), 0.0, 1.0)
    a_c = cv2.GaussianBlur(a_c, (0, 0), 2.0 * sigma, borderType=cv2.BORDER_REFLECT)
    # A fixed mouth mask here would throw away the source's lip texture whenever the mouth keeps its
    # shape (sharpness 0.62 vs 0.95 on a blurred copy of the source): the change decides alone.
    a_hf = a_c * a_p
    ap, ahf = a_p[..., None], a_hf[..., None]
    if inner is None:
        blended = s + ap * (lg - ls) + ahf * ((g - lg) - (s - ls))
    else:  # the person's own pixels, moved into the generated shape; the model's inside of the mouth
        a_i = (np.clip(back(inner, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT), 0.0, 1.0) * a_p)[..., None]
        blended = s + a_i * (g - s)
        if WARP_SHAPE > 0:
            blended = blended + (1.0 - a_i) * WARP_SHAPE * ahf * (wg - ws)
    if np.issubdtype(roi.dtype, np.integer):
        info = np.iinfo(roi.dtype)
        blended = np.clip(np.rint(blended), info.min, info.max)
    out[y0:y1, x0:x1] = np.where(ap > 0, blended.astype(roi.dtype), roi)
    return out
