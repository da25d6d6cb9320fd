"""Mouth and eyelid articulation of a photographed face, driven by mesh landmarks.

Geometry lives in a face frame: origin at the mouth centre, x along the eye line, y pointing down
the face, unit = inter-ocular distance (IOD). The lower jaw is everything below the lip slit; it
drops with ``jaw``, while ``spread``/``round`` scale the lips horizontally and ``closure`` presses
them together. The mouth interior (cavity, teeth, tongue) is painted into the inner-lip polygon.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# MediaPipe face-mesh indices, corner to corner, upper and lower inner lips paired point by point.
UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
MOUTH_CORNERS = (61, 291)
EYE_OUTER = (33, 263)
# Upper lid points paired with the lower lid point below them, for blinks.
EYELIDS = [
    ([246, 161, 160, 159, 158, 157, 173], [7, 163, 144, 145, 153, 154, 155]),
    ([466, 388, 387, 386, 385, 384, 398], [249, 390, 373, 374, 380, 381, 382]),
]
IRIS = list(range(468, 478))


@dataclass(frozen=True)
class FaceFrame:
    origin: np.ndarray  # mouth centre, pixels
    u: np.ndarray  # unit vector along the eye line
    v: np.ndarray  # unit vector down the face
    iod: float

    @classmethod
    def from_landmarks(cls, lm: np.ndarray) -> "FaceFrame":
        lm = lm[:, :2]
        eye_vec = lm[EYE_OUTER[1]] - lm[EYE_OUTER[0]]
        iod = float(np.linalg.norm(eye_vec))
        u = eye_vec / iod
        v = np.array([-u[1], u[0]])
        origin = (lm[MOUTH_CORNERS[0]] + lm[MOUTH_CORNERS[1]] + lm[13] + lm[14]) / 4
        return cls(origin, u, v, iod)

    def to_local(self, p: np.ndarray) -> np.ndarray:
        d = p[..., :2] - self.origin
        return np.stack([d @ self.u, d @ self.v], -1) / self.iod

    def to_pixels(self, q: np.ndarray) -> np.ndarray:
        return self.origin + (q[..., :1] * self.u + q[..., 1:2] * self.v) * self.iod


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class MouthRig:
    """Precomputed per-landmark weights of one identity at rest (mouth closed)."""

    # Largest lip gap, in IOD, at jaw = 1 (a wide "aa" is about 0.35-0.4 IOD).
    MAX_DROP = 0.38

    def __init__(self, rest: np.ndarray):
        self.rest = rest[:, :2].astype(np.float64)
        self.frame = FaceFrame.from_landmarks(self.rest)
        q = self.frame.to_local(self.rest)
        self.q = q
        corners = q[list(MOUTH_CORNERS)]
        self.half_width = float(np.abs(corners[:, 0]).mean())
        slit_a = q[UPPER_INNER, 0]
        slit_b = (q[UPPER_INNER, 1] + q[LOWER_INNER, 1]) / 2
        order = np.argsort(slit_a)
        a, b = q[:, 0], q[:, 1]
        # Lip slit height at each lateral position; beyond the corners it rises gently toward the
        # jaw angle, so the cheek folds like a real mandible hinge instead of tearing.
        slit = np.interp(a, slit_a[order], slit_b[order])
        outside = np.maximum(np.abs(a) - self.half_width, 0.0)
        slit = slit - 0.35 * outside
        inside_mouth = np.abs(a) < self.half_width
        softness = np.where(inside_mouth, 0.015, 0.12 + 0.3 * outside)
        below = 1.0 / (1.0 + np.exp(-(b - slit) / softness))
        below[UPPER_INNER[1:-1]] = 0.0
        below[UPPER_OUTER[1:-1]] = 0.0
        below[LOWER_INNER[1:-1]] = 1.0
        below[LOWER_OUTER[1:-1]] = 1.0
        # Far from the mouth the jaw drop fades: the skull and neck do not move.
        lateral = 1.0 / (1.0 + (a / 1.05) ** 6)
        lip_profile = np.clip(1.0 - (np.abs(a) / (self.half_width * 1.05)) ** 2, 0.0, 1.0)
        near_lips = _smoothstep(1.0 - (b - slit) / 0.35)  # 1 at the lips, 0 on the chin
        shape = near_lips * lip_profile ** 0.7 + (1 - near_lips) * 1.0
        self.w_jaw = below * lateral * shape
        below_chin = np.clip((b - q[152, 1]) / 0.3, 0.0, 1.0)
        self.w_jaw *= 1.0 - below_chin
        self.w_upper = (1 - below) * lip_profile * _smoothstep(1.0 - np.abs(b - slit) / 0.25)
        dist = np.hypot(a / 1.0, (b - slit) / 0.6)
        self.w_lips = np.exp(-(dist / 0.55) ** 2)
        self.lid_pairs = EYELIDS

    def articulate(self, jaw=0.0, spread=0.0, round_=0.0, closure=0.0, blink=0.0) -> np.ndarray:
        """Landmarks (N x 2, pixels) for the given mouth parameters and eyelid closure."""
        q = self.q.copy()
        a, b = q[:, 0], q[:, 1]
        open_ = self.MAX_DROP * float(np.clip(jaw, 0, 1.2)) * (1.0 - float(np.clip(closure, 0, 1)))
        # A small jaw motion remains when the lips press: the chin still follows the jaw.
        jaw_drop = open_ + 0.15 * self.MAX_DROP * float(jaw) * float(closure)
        db = np.where(self.w_upper > 0, -0.12 * open_ * self.w_upper, 0.0)
        db = db + jaw_drop * self.w_jaw
        # Lip-only opening beyond the jaw for the lower lip, so the chin moves less than the lip.
        sx = 1.0 + 0.14 * float(spread) - 0.30 * float(round_)
        da = (sx - 1.0) * a * self.w_lips
        # Rounded lips protrude and thicken; pressed lips thin out.
        thick = 1.0 + 0.18 * float(round_) - 0.15 * float(closure)
        lip_centre = 0.0
        db = db + (thick - 1.0) * (b - lip_centre) * self.w_lips * 0.5
        out = np.stack([a + da, b + db], 1)
        if blink > 0:
            for upper, lower in self.lid_pairs:
                out[upper] += 0.92 * float(blink) * (out[lower] - out[upper])
            # The iris points hide under the lid; keep them between the lids.
            for iris, (upper, lower) in zip((IRIS[:5], IRIS[5:]), self.lid_pairs):
                if max(iris) < len(out):
                    top = out[upper, 1].mean()
                    out[iris, 1] = np.maximum(out[iris, 1], top)
        return self.frame.to_pixels(out)


def inner_lip_polygon(lm: np.ndarray) -> np.ndarray:
    return np.concatenate([lm[UPPER_INNER, :2], lm[LOWER_INNER[::-1], :2]], 0)


def paint_mouth_interior(image: np.ndarray, lm: np.ndarray, rng_phase: float = 0.0,
                         teeth_tone=(232, 226, 214), supersample: int = 4) -> np.ndarray:
    """Fill the inner-lip polygon with a shaded cavity, upper and lower teeth and a tongue."""
    poly = inner_lip_polygon(lm)
    x0, y0 = np.floor(poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image
    s = supersample
    local = (poly - [x0, y0]) * s
    H, W = (y1 - y0) * s, (x1 - x0) * s
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.round(local).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    gap = np.linalg.norm(lm[14, :2] - lm[13, :2]) * s
    width = np.linalg.norm(lm[308, :2] - lm[78, :2]) * s
    if gap < 0.6 * s:
        return image
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    top = np.interp(xx, local[: len(UPPER_INNER), 0], local[: len(UPPER_INNER), 1])
    cx = (local[0, 0] + local[len(UPPER_INNER) - 1, 0]) / 2
    rel_y = (yy - top) / max(gap, 1.0)  # 0 at the upper lip, ~1 at the lower lip
    rel_x = (xx - cx) / max(width / 2, 1.0)
    # Cavity: dark red fading to near black in the throat and at the sides.
    depth = np.clip(1.0 - 0.8 * np.abs(rel_x) ** 2, 0, 1) * np.clip(rel_y * 1.6, 0, 1)
    cavity = np.stack([52 - 38 * depth, 16 - 11 * depth, 20 - 14 * depth], -1)
    # Tongue: a soft reddish mound at the bottom, visible when the mouth is wide open.
    tongue = np.clip((rel_y - 0.62) / 0.25, 0, 1) * np.clip(1 - np.abs(rel_x) / 0.75, 0, 1)
    tongue *= np.clip((gap / s - 6.0) / 6.0, 0, 1)
    col = cavity * (1 - tongue[..., None]) + np.array([150, 62, 66]) * tongue[..., None]
    # The cavity darkens toward the corners and just under the lips; the teeth catch the light.
    shadow = np.exp(-np.clip(yy - top, 0, None) / (0.05 * width + 1)) * 0.3
    col = col * (1 - shadow[..., None])
    # Upper teeth: a band under the upper lip with faint gaps between incisors.
    tooth_h = 0.13 * width
    upper = np.clip((tooth_h - (yy - top)) / (0.15 * tooth_h + 1), 0, 1)
    upper *= np.clip(1 - np.abs(rel_x) / 0.8, 0, 1) ** 0.3
    incisor = 0.88 + 0.12 * np.abs(np.cos((rel_x * 3.2 + rng_phase) * np.pi))
    # Teeth are shaded toward the corners and slightly at their top edge (under the lip).
    shade = (1.0 - 0.35 * np.abs(rel_x) ** 2) * incisor * (0.88 + 0.12 * np.clip((yy - top) / (0.5 * tooth_h + 1), 0, 1))
    teeth = np.array(teeth_tone, np.float32) * shade[..., None]
    col = col * (1 - upper[..., None]) + teeth * upper[..., None]
    # Lower teeth peek out only in a wide-open mouth.
    bottom = top + gap
    lower = np.clip(((yy - (bottom - 0.06 * width))) / (0.15 * 0.06 * width + 1), 0, 1)
    lower *= np.clip((gap / width - 0.35) / 0.2, 0, 1) * np.clip(1 - np.abs(rel_x) / 0.5, 0, 1)
    col = col * (1 - 0.8 * lower[..., None]) + 0.8 * teeth * lower[..., None] * 0.9
    col = cv2.resize(col.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(mask.astype(np.float32) / 255.0, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    out = image.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    roi = roi * (1 - alpha[..., None]) + col * alpha[..., None]
    out[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
    return out


def close_mouth(lm: np.ndarray) -> np.ndarray:
    """Landmarks of the same face with the lips just touching (the rest pose of the corpus)."""
    rig = MouthRig(lm)
    q = rig.q.copy()
    gap = float(q[14, 1] - q[13, 1])
    q[:, 1] -= max(gap, 0.0) * rig.w_jaw
    # Snap the inner lower lip onto the upper one, a hair below so triangles stay valid.
    q[LOWER_INNER[1:-1]] = q[UPPER_INNER[1:-1]] + np.array([0.0, 0.004])
    out = lm[:, :2].astype(np.float64).copy()
    out[:] = rig.frame.to_pixels(q)
    return out
