"""Identities for the synthetic corpus: a photographed face, reshaped and recoloured.

An identity is an RGBA person layer (photo + segmentation alpha) with its face-mesh landmarks in the
rest pose (lips just closed). New identities come from landmark-driven shape warps (face width,
jaw, eye spacing, nose, mouth width, lip thickness) and colour changes of skin, hair and light.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import NoFaceError
from lipsync.media.formats import IMAGE_SUFFIXES, files_in

from .mouth import FaceFrame, close_mouth
from .warp import anchor_ring, warp_region

# Public-domain portraits shipped with the package (see lipsync/assets/faces/README.md).
BUNDLED_PREFIX = "bundled:"
# Photos are scaled so the face is at most this wide: larger faces only slow the warps down.
MAX_FACE_PX = 180
MESH_POINTS = 468  # the iris points (468-477) are not used as warp controls


@dataclass
class Identity:
    name: str
    rgb: np.ndarray  # H x W x 3 uint8, the person in the rest pose
    alpha: np.ndarray  # H x W float32 in [0, 1], 1 = person
    landmarks: np.ndarray  # 478 x 2 float64, rest pose (mouth closed)

    @property
    def face_box(self) -> tuple[float, float, float, float]:
        lm = self.landmarks[:MESH_POINTS]
        return float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max())


def bundled_photos() -> tuple[str, ...]:
    folder = resources.files("lipsync.assets").joinpath("faces")
    names = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    return tuple(BUNDLED_PREFIX + n for n in names)


def photos_in(folder: str | os.PathLike) -> tuple[str, ...]:
    """The portraits in a user's folder (for ``lipsync synth --faces DIR``)."""
    return files_in(folder, IMAGE_SUFFIXES, "portrait photos")


def load_photo(source: str) -> np.ndarray:
    """RGB pixels of a bundled portrait (``bundled:NAME``) or of an image file / URI."""
    if source.startswith(BUNDLED_PREFIX):
        name = source[len(BUNDLED_PREFIX):]
        data = resources.files("lipsync.assets").joinpath("faces", name).read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    from lipsync.media.video import read_image

    return read_image(source)


def detect_landmarks(rgb: np.ndarray, source: str = "photo") -> np.ndarray:
    from lipsync.face import FaceDetector

    with FaceDetector(max_faces=1) as det:
        faces = det.detect(rgb)
    if not faces:
        raise NoFaceError(source, "no face found; the corpus needs a frontal portrait with one clear face")
    return faces[0].landmarks[:, :2].astype(np.float64)


def person_alpha(rgb: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    from lipsync.face.quiet import quiet_native_logs

    with quiet_native_logs(), mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(rgb).segmentation_mask
    # A tight threshold and a slight erosion keep the photo's own backdrop from showing as a halo.
    mask = cv2.erode(mask.astype(np.float32), np.ones((3, 3), np.uint8), iterations=2)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.2)
    return np.clip((mask - 0.45) / 0.35, 0.0, 1.0)


def mesh_warp(image: np.ndarray, src: np.ndarray, dst: np.ndarray, margin: float = 1.6) -> np.ndarray:
    """Warp the face region so mesh landmarks ``src`` land on ``dst``; far pixels stay put."""
    src, dst = src[:MESH_POINTS], dst[:MESH_POINTS]
    face_h = float(np.ptp(src[:, 1]))
    centre = src.mean(0)
    radius = margin * face_h
    ring = anchor_ring(centre, radius)
    moved = np.linalg.norm(dst - src, axis=1) > 0.01
    if not moved.any():
        return image.copy()
    # Triangles whose corners all stay put are the identity, so only the neighbourhood of the
    # moved points needs resampling; that keeps per-frame articulation cheap.
    pts = np.concatenate([src[moved], dst[moved]])
    pad = 0.3 * face_h
    lo, hi = pts.min(0) - pad, pts.max(0) + pad
    box = (int(max(lo[0], centre[0] - radius)), int(max(lo[1], centre[1] - radius)),
           int(min(hi[0], centre[0] + radius)) + 1, int(min(hi[1], centre[1] + radius)) + 1)
    return warp_region(image, np.concatenate([src, ring]), np.concatenate([dst, ring]), box)


def _reshape_landmarks(lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random but plausible changes of face proportions, applied in the face frame."""
    frame = FaceFrame.from_landmarks(lm)
    q = frame.to_local(lm)
    a, b = q[:, 0].copy(), q[:, 1].copy()
    eye_level = float(q[[33, 263], 1].mean())
    nose_b = float(q[1, 1])
    width = rng.uniform(0.9, 1.1)  # overall face width
    jaw = rng.uniform(0.9, 1.12)  # lower-face width
    length = rng.uniform(0.93, 1.08)  # lower-face length
    mouth = rng.uniform(0.9, 1.12)
    lips = rng.uniform(0.85, 1.25)
    nose = rng.uniform(0.88, 1.15)
    eyes = rng.uniform(0.95, 1.05)
    lower = np.clip((b - eye_level) / (0.0 - eye_level), 0, 1.5)  # 0 at the eyes, 1 at the mouth
    a = a * (width + (jaw - 1.0) * np.clip(lower, 0, 1))
    b = np.where(b > nose_b, nose_b + (b - nose_b) * length, b)
    near_mouth = np.exp(-((q[:, 0] / 0.7) ** 2 + (q[:, 1] / 0.3) ** 2))
    a = a * (1 + (mouth - 1) * near_mouth)
    b = b * (1 + (lips - 1) * np.exp(-((q[:, 0] / 0.45) ** 2 + (q[:, 1] / 0.15) ** 2)))
    near_nose = np.exp(-(((q[:, 0]) / 0.35) ** 2 + ((q[:, 1] - (nose_b - 0.05)) / 0.25) ** 2))
    a = a * (1 + (nose - 1) * near_nose)
    near_eyes = np.exp(-(((q[:, 1] - eye_level) / 0.25) ** 2)) * (np.abs(q[:, 0]) < 0.9)
    a = a * (1 + (eyes - 1) * near_eyes)
    return frame.to_pixels(np.stack([a, b], 1))


def _recolour(rgb: np.ndarray, alpha: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift skin tone and hair colour in Lab space inside the person layer."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    h = rgb.shape[0]
    yy = np.arange(h, dtype=np.float32)[:, None]
    brow = float(lm[[70, 300, 105, 334], 1].mean())
    face_h = float(np.ptp(lm[:MESH_POINTS, 1]))
    hair = np.clip((brow - yy) / (0.15 * face_h), 0, 1) * alpha
    skin = alpha * (1 - hair)
    dl, da, db = rng.uniform(-40, 8), rng.uniform(-2, 7), rng.uniform(-4, 14)
    lab[..., 0] += dl * skin
    lab[..., 1] += da * skin
    lab[..., 2] += db * skin
    # Hair: from dark brown/black to blond-ish, applied as a tint of its lightness and hue.
    hl, ha, hb = rng.uniform(-60, 20), rng.uniform(0, 8), rng.uniform(-4, 14)
    lab[..., 0] += hl * hair * (lab[..., 0] / 255.0 + 0.3)
    lab[..., 1] += ha * hair
    lab[..., 2] += hb * hair
    lab = np.clip(lab, 0, 255).astype(np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


@functools.lru_cache(maxsize=16)
def make_identity(seed: int, photos: tuple[str, ...] | None = None) -> Identity:
    """A deterministic identity for ``seed`` from one of ``photos`` (default: the bundled ones).

    Seed 0 is the first photo itself, only re-posed; other seeds reshape and recolour.
    """
    photos = photos or bundled_photos()
    source = photos[seed % len(photos)]
    rgb = load_photo(source)
    lm = detect_landmarks(rgb, source)
    face_w = float(np.ptp(lm[:MESH_POINTS, 0]))
    if face_w > MAX_FACE_PX:
        k = MAX_FACE_PX / face_w
        rgb = cv2.resize(rgb, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        lm = (lm + 0.5) * k - 0.5
    alpha = person_alpha(rgb)
    rng = np.random.default_rng([seed, 7919])
    if seed and rng.random() < 0.5:
        # A mirrored face needs its mesh measured again: the mesh's point order is not symmetric.
        rgb, alpha = rgb[:, ::-1].copy(), alpha[:, ::-1].copy()
        lm = detect_landmarks(rgb, source)
    if seed:
        shaped = lm.copy()
        shaped[:MESH_POINTS] = _reshape_landmarks(lm[:MESH_POINTS], rng)
        rgb = mesh_warp(rgb, lm, shaped)
        alpha = mesh_warp(np.repeat(alpha[..., None], 3, 2), lm, shaped)[..., 0]
        rgb = _recolour(rgb, alpha, shaped, rng)
        # Measure the new face instead of trusting the warp: the rest pose starts from real landmarks.
        lm = detect_landmarks(rgb, source)
    rest = close_mouth(lm)
    # The iris points are not warp controls; they keep their detected positions.
    rest[468:] = lm[468:, :2]
    rgb = mesh_warp(rgb, lm, rest)
    stem = Path(source.removeprefix(BUNDLED_PREFIX)).stem
    return Identity(f"{stem}-{seed}", rgb, alpha.astype(np.float32), rest)
