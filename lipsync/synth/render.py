"""Frame rendering for synthetic talking-head clips: articulate, paint, move, light, composite."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .identity import MESH_POINTS, Identity, mesh_warp
from .mouth import MouthRig, paint_mouth_interior


def smooth_noise(rng: np.random.Generator, n: int, fps: float, period_s=(1.5, 6.0), k: int = 3) -> np.ndarray:
    """A sum of a few slow sinusoids with random phases, in [-1, 1]: head sway, light drift."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(k):
        p = rng.uniform(*period_s)
        out += np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.5, 1.0)
    return out / k


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A soft studio or room backdrop: a coloured gradient, blurred blobs and fine grain."""
    base = rng.uniform(40, 220, size=3)
    other = np.clip(base + rng.normal(0, 50, size=3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang)) + 0.5
    img = base * (1 - g[..., None]) + other * g[..., None]
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.08, 0.35) * max(h, w)
        col = rng.uniform(0, 255, size=3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.2, 0.6)
        img = img * (1 - blob[..., None]) + col * blob[..., None]
    # Shelves / door frames: a few soft vertical and horizontal edges.
    for _ in range(rng.integers(0, 4)):
        if rng.random() < 0.5:
            x = int(rng.uniform(0, w))
            img[:, x: x + int(rng.uniform(2, w / 8))] *= rng.uniform(0.7, 1.2)
        else:
            y = int(rng.uniform(0, h))
            img[y: y + int(rng.uniform(2, h / 8))] *= rng.uniform(0.7, 1.2)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), max(h, w) / 150)
    img += rng.normal(0, 3.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass
class MotionTrack:
    """Per-frame head pose (degrees, fraction of frame, scale) and lighting of a clip."""

    roll: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    scale: np.ndarray
    gain: np.ndarray
    light_dir: np.ndarray
    light_amp: float

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, fps: float, amount: float = 1.0) -> "MotionTrack":
        return cls(
            roll=3.0 * amount * smooth_noise(rng, n, fps),
            dx=0.025 * amount * smooth_noise(rng, n, fps),
            dy=0.02 * amount * smooth_noise(rng, n, fps),
            scale=1.0 + 0.02 * amount * smooth_noise(rng, n, fps),
            gain=1.0 + 0.06 * smooth_noise(rng, n, fps, (4.0, 12.0)),
            light_dir=rng.uniform(0, 2 * np.pi) + 0.6 * smooth_noise(rng, n, fps, (5.0, 15.0)),
            light_amp=float(rng.uniform(0.05, 0.2)),
        )


def blink_track(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Eyelid closure per frame: a blink every 2-6 s, about 0.2 s long."""
    out = np.zeros(n)
    shape = np.array([0.35, 0.85, 1.0, 0.7, 0.3])
    t = rng.uniform(0.3, 2.5)
    while t * fps < n:
        i = int(t * fps)
        seg = shape[: max(0, min(len(shape), n - i))]
        out[i: i + len(seg)] = np.maximum(out[i: i + len(seg)], seg)
        t += rng.uniform(2.0, 6.0)
    return out


class ClipRenderer:
    """Renders frames of one identity in one framing; all per-clip randomness is fixed up front."""

    def __init__(self, identity: Identity, size: tuple[int, int], rng: np.random.Generator,
                 face_fraction: float = 0.36):
        self.identity = identity
        self.rig = MouthRig(identity.landmarks)
        self.h, self.w = size[1], size[0]
        x0, y0, x1, y1 = identity.face_box
        face_w = x1 - x0
        # Place the face: its width is face_fraction of the frame width, a little above centre.
        self.zoom = face_fraction * self.w / face_w * rng.uniform(0.92, 1.08)
        self.face_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        self.target = np.array([self.w / 2 + rng.uniform(-0.06, 0.06) * self.w,
                                self.h * rng.uniform(0.4, 0.5)])
        self.bg = background(rng, self.h, self.w)
        self.teeth_phase = float(rng.uniform(0, 1))
        self.teeth_tone = tuple(np.clip(np.array([232, 226, 214]) + rng.normal(0, 8, 3), 180, 250))

    def camera(self, roll_deg: float, dx: float, dy: float, scale: float) -> np.ndarray:
        """2x3 matrix from identity-image pixels to output pixels."""
        pivot = self.face_centre
        m = cv2.getRotationMatrix2D((float(pivot[0]), float(pivot[1])), float(roll_deg), float(self.zoom * scale))
        m[:, 2] += self.target + np.array([dx * self.w, dy * self.h]) - pivot
        return m

    def render(self, jaw: float, spread: float, round_: float, closure: float, blink: float,
               roll: float, dx: float, dy: float, scale: float, gain: float, light_dir: float,
               light_amp: float) -> tuple[np.ndarray, np.ndarray]:
        """One frame (H x W x 3 uint8 RGB) and its ground-truth landmarks (478 x 2, output pixels)."""
        ident = self.identity
        lm = self.rig.articulate(jaw, spread, round_, closure, blink)
        lm[MESH_POINTS:] = ident.landmarks[MESH_POINTS:]
        rgb = mesh_warp(ident.rgb, ident.landmarks, lm, margin=1.0)
        rgb = paint_mouth_interior(rgb, lm, self.teeth_phase, self.teeth_tone)
        m = self.camera(roll, dx, dy, scale)
        person = cv2.warpAffine(rgb, m, (self.w, self.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(ident.alpha, m, (self.w, self.h), flags=cv2.INTER_LINEAR, borderValue=0)
        frame = self.bg.astype(np.float32) * (1 - alpha[..., None]) + person.astype(np.float32) * alpha[..., None]
        yy, xx = np.mgrid[0:self.h, 0:self.w].astype(np.float32)
        ramp = ((xx / self.w - 0.5) * np.cos(light_dir) + (yy / self.h - 0.5) * np.sin(light_dir))
        frame *= (gain * (1 + light_amp * ramp))[..., None]
        frame = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        out_lm = lm @ m[:, :2].T + m[:, 2]
        return frame, out_lm
