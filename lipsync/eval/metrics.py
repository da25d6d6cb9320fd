"""The numbers of ``lipsync eval``, as plain numpy functions (definitions: docs/eval.md).

Nothing here decodes media or runs a model: callers pass arrays.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lipsync.face import landmarks as lmk
from lipsync.face.align import TEMPLATE, TEMPLATE_INDICES, TEMPLATE_WEIGHTS, fit_similarity

SHIFTS = tuple(range(-15, 16))  # audio shifts searched, in frames (the LSE convention)
PSNR_CAP_DB = 100.0  # the PSNR reported for identical images (MSE = 0)

# Rigid points of the face (eye corners, nose): head-tracking jitter is measured on these.
RIGID_POINTS = TEMPLATE_INDICES[TEMPLATE_WEIGHTS >= 1.0]
MOUTH_POINTS = np.array(sorted(set(lmk.LIPS_OUTER) | set(lmk.LIPS_INNER)), dtype=np.int64)
# Inter-ocular distance (outer eye corners 33, 263) of the alignment template, in crop units.
_TEMPLATE_IOD = float(np.linalg.norm(TEMPLATE[list(TEMPLATE_INDICES).index(263)]
                                     - TEMPLATE[list(TEMPLATE_INDICES).index(33)]))

# Temporal consistency score scales (docs/eval.md): the flicker (grey levels) and the jitter
# (inter-ocular distances) at which each factor of the score falls to 1/e.
FLICKER_SCALE = 8.0
JITTER_SCALE = 0.1


# ------------------------------------------------------------------------------------ sync


def sync_distances(v_emb: np.ndarray, v_starts: np.ndarray, a_emb: np.ndarray,
                   shifts: tuple[int, ...] = SHIFTS) -> np.ndarray:
    """(len(v_starts), len(shifts)) Euclidean distances between the video window starting at
    frame ``v_starts[n]`` and the audio window starting at frame ``v_starts[n] + shift``;
    NaN where that audio window does not exist (``a_emb[j]`` is the window starting at frame j)."""
    v = np.asarray(v_emb, np.float64)
    a = np.asarray(a_emb, np.float64)
    starts = np.asarray(v_starts, np.int64)
    out = np.full((len(starts), len(shifts)), np.nan)
    for k, s in enumerate(shifts):
        j = starts + s
        ok = (j >= 0) & (j < len(a))
        if ok.any():
            out[ok, k] = np.linalg.norm(v[ok] - a[j[ok]], axis=1)
    return out


def lse(dist: np.ndarray, shifts: tuple[int, ...] = SHIFTS) -> dict:
    """LSE-D / LSE-C / offset from :func:`sync_distances` (syncnet_python's convention).

    curve[k] = mean over windows of the distance at shift k; LSE-D = min(curve),
    LSE-C = median(curve) - min(curve), offset = -shifts[argmin]: positive when the audio is
    ahead of the video (the sound comes early), negative when it is late; 0 = in sync.
    Also: the confidence at shift 0 (median - curve at 0), the per-shift curve."""
    curve = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in dist.T])
    finite = np.isfinite(curve)
    if not finite.any():
        raise ValueError("no video window has a matching audio window")
    k = int(np.nanargmin(curve))
    med = float(np.nanmedian(curve))
    zero = shifts.index(0) if 0 in shifts else None
    at0 = float(curve[zero]) if zero is not None and finite[zero] else None
    return {
        "lse_d": float(curve[k]),
        "lse_c": med - float(curve[k]),
        "offset": -int(shifts[k]),
        "distance_at_0": at0,
        "confidence_at_0": None if at0 is None else med - at0,
        "offsets": [-int(s) for s in shifts],
        "curve": [None if not np.isfinite(c) else float(c) for c in curve],
    }


def window_offsets(dist: np.ndarray, shifts: tuple[int, ...] = SHIFTS) -> np.ndarray:
    """Per video window, the offset (= -shift) of its nearest audio window; NaN when the window
    cannot be compared at shifts -1, 0 and +1 (too close to the audio's ends)."""
    out = np.full(len(dist), np.nan)
    need = [shifts.index(s) for s in (-1, 0, 1) if s in shifts]
    for n, row in enumerate(dist):
        if np.isfinite(row[need]).all():
            out[n] = -shifts[int(np.nanargmin(row))]
    return out


# ------------------------------------------------------------------------------------ images


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    # Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03; mean over the
    # positions where the window fits inside the image (scikit-image's gaussian_weights=True).
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(a):
        return cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    p = 5
    if s.shape[0] > 2 * p and s.shape[1] > 2 * p:
        s = s[p:-p, p:-p]
    return float(s.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity of two images of the same shape (H, W) or (H, W, C), channels
    averaged. 1.0 for identical images."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.ndim == 2:
        return _ssim_channel(x, y, data_range)
    return float(np.mean([_ssim_channel(x[..., c], y[..., c], data_range) for c in range(x.shape[-1])]))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; identical images give :data:`PSNR_CAP_DB`."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    if mse <= 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range * data_range / mse))


# ------------------------------------------------------------------------------------ landmarks


def pearson(x, y) -> float | None:
    """Pearson correlation over the positions where both are finite; None with fewer than 3
    such positions or a constant series."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if den <= 1e-12:
        return None
    return float((x * y).sum() / den)


def face_normalised(landmarks: np.ndarray) -> np.ndarray:
    """(478, 2) landmarks mapped by the similarity that best fits their rigid points to the
    alignment template (unit square), then divided by the template's inter-ocular distance: the
    face's own frame, in inter-ocular distances, whatever its position, size and roll."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    m = fit_similarity(lm[TEMPLATE_INDICES], TEMPLATE, TEMPLATE_WEIGHTS)
    return (lm @ m[:, :2].T + m[:, 2]) / _TEMPLATE_IOD


def lmd(measured: np.ndarray, truth: np.ndarray) -> float:
    """Mouth landmark distance of one frame: mean distance between the 40 lip points (outer +
    inner contour) of two landmark sets, each in its own face frame (:func:`face_normalised`),
    in inter-ocular distances."""
    a = face_normalised(measured)[MOUTH_POINTS]
    b = face_normalised(truth)[MOUTH_POINTS]
    return float(np.linalg.norm(a - b, axis=1).mean())


def second_difference(points: np.ndarray) -> np.ndarray:
    """(N, K, 2) -> (N,) mean over points of ||p[t] - (p[t-1] + p[t+1]) / 2||; NaN at both ends
    and wherever a neighbour is missing (NaN)."""
    p = np.asarray(points, np.float64)
    out = np.full(len(p), np.nan)
    if len(p) >= 3:
        d = p[1:-1] - 0.5 * (p[:-2] + p[2:])
        out[1:-1] = np.linalg.norm(d, axis=-1).mean(axis=-1)
    return out


def landmark_jitter(landmarks: np.ndarray) -> np.ndarray:
    """Per frame: the second difference of the rigid points (eye corners, nose) in frame pixels
    divided by the frame's inter-ocular distance. (N, 478, 2|3) with NaN rows for no face."""
    lm = np.asarray(landmarks, np.float64)
    iod = np.linalg.norm(lm[:, lmk.RIGHT_EYE_OUTER, :2] - lm[:, lmk.LEFT_EYE_OUTER, :2], axis=-1)
    return second_difference(lm[:, RIGID_POINTS, :2]) / np.where(iod > 1e-9, iod, np.nan)


def mouth_jitter(landmarks: np.ndarray) -> np.ndarray:
    """Per frame: the second difference of the lip points in the face's own frame (inter-ocular
    distances): how unsteadily the mouth shape changes, head motion removed."""
    lm = np.asarray(landmarks, np.float64)
    norm = np.full((len(lm), len(MOUTH_POINTS), 2), np.nan)
    for t, frame in enumerate(lm):
        if np.isfinite(frame[:, :2]).all():
            norm[t] = face_normalised(frame)[MOUTH_POINTS]
    return second_difference(norm)


def lower_face_change(crops: np.ndarray, has_face: np.ndarray, top: float = 0.5) -> np.ndarray:
    """(N,) mean absolute grey-level change of the aligned lower-face crop from the previous frame
    (NaN at frame 0 and wherever either frame has no face). A seam between denoising windows shows
    up as a peak at the frames where windows join."""
    out = np.full(len(crops), np.nan)
    if len(crops) < 2:
        return out
    r0 = int(round(top * crops.shape[1]))
    grey = crops[:, r0:].astype(np.float32).mean(axis=-1)
    diff = np.abs(grey[1:] - grey[:-1]).mean(axis=(1, 2))
    ok = has_face[1:] & has_face[:-1]
    out[1:][ok] = diff[ok]
    return out


def temporal_score(flicker: float | None, jitter: float | None) -> float | None:
    """0-100: ``100 * exp(-flicker / FLICKER_SCALE) * exp(-jitter / JITTER_SCALE)``."""
    if flicker is None or jitter is None or not (np.isfinite(flicker) and np.isfinite(jitter)):
        return None
    return float(100.0 * math.exp(-flicker / FLICKER_SCALE) * math.exp(-jitter / JITTER_SCALE))


def nanmean(x) -> float | None:
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else None


def speech_energy_db(samples: np.ndarray, n_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """RMS level of each video frame's 40 ms of audio, in dBFS (floor -100 dB); frames past the
    audio's end are NaN."""
    hop = sample_rate / fps
    out = np.full(n_frames, np.nan)
    for i in range(n_frames):
        seg = samples[int(round(i * hop)): int(round((i + 1) * hop))]
        if len(seg):
            out[i] = 20.0 * math.log10(math.sqrt(float(np.mean(np.square(seg, dtype=np.float64)))) + 1e-5)
    return out


# ------------------------------------------------------------------------------ fidelity
# What a dub must keep of the person (docs/eval.md): eyes untouched, lower-face texture as sharp as
# the input's and of the same colour. Regions come from the face mesh in frame pixels.
EYE_REGION = lmk.RIGHT_EYE + lmk.LEFT_EYE + lmk.RIGHT_EYEBROW + lmk.LEFT_EYEBROW
LOWER_FACE_REGION = tuple(lmk.JAW[2:-2]) + lmk.NOSE_BOTTOM_ARC


def region_mask(shape: tuple[int, int], landmarks: np.ndarray, indices, grow: float = 0.0) -> np.ndarray:
    """Bool (H, W) mask: the convex hull of ``landmarks[indices]`` (frame pixels), grown by
    ``grow`` pixels; all False when the points are missing."""
    h, w = shape[:2]
    pts = np.asarray(landmarks, np.float64)[list(indices), :2]
    m = np.zeros((h, w), np.uint8)
    if not np.isfinite(pts).all():
        return m.astype(bool)
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
    cv2.fillConvexPoly(m, hull, 1, lineType=cv2.LINE_8, shift=4)
    r = int(round(grow))
    if r > 0:
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return m > 0


def eye_region(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """Both eyes and brows, grown by a tenth of the inter-ocular distance."""
    return region_mask(shape, landmarks, EYE_REGION, 0.1 * lmk.inter_ocular_distance(np.asarray(landmarks)[:, :2]))


def lower_face_region(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    """The face below the nose: jaw from cheek to cheek and the nose's lower rim."""
    return region_mask(shape, landmarks, LOWER_FACE_REGION)


def sharpness(image: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image over ``region`` (NaN when empty)."""
    if not region.any():
        return math.nan
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))[region].mean())


def mean_lab(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of the region's mean colour; NaN when empty."""
    if not region.any():
        return np.full(3, np.nan)
    rgb = image[region].astype(np.float32).mean(axis=0) / 255.0
    return cv2.cvtColor(rgb.reshape(1, 1, 3).astype(np.float32), cv2.COLOR_RGB2Lab).reshape(3).astype(np.float64)


def colour_shift(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """CIE76 delta E between the mean colours of ``region`` in images ``a`` and ``b``."""
    return float(np.linalg.norm(mean_lab(a, region) - mean_lab(b, region)))


def fidelity(output: np.ndarray, reference: np.ndarray, landmarks: np.ndarray) -> dict:
    """Per-frame fidelity of ``output`` to its input ``reference`` (same size), over the mesh
    regions of ``landmarks`` (frame pixels): eye-region PSNR (dB), lower-face sharpness ratio
    (output / reference) and lower-face colour shift (delta E)."""
    eyes = eye_region(output.shape, landmarks)
    lower = lower_face_region(output.shape, landmarks)
    ref_sharp = sharpness(reference, lower)
    return {
        "psnr_eyes": psnr(output[eyes], reference[eyes]) if eyes.any() else math.nan,
        "sharpness_ratio": sharpness(output, lower) / ref_sharp if ref_sharp > 0 else math.nan,
        "colour_shift": colour_shift(output, reference, lower) if lower.any() else math.nan,
    }
