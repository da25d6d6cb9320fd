"""Pieces that reproduce LatentSync's own inference arithmetic where our default differs on purpose
or by history; each is proven against outputs of their code (tests/test_latentsync_parity.py).

* :func:`fixed_keep_mask`: their fixed mask (``latentsync/utils/mask.png``, white = keep) at any crop
  size, read from a copy of that file when the user has one, else rebuilt from our tracing of its
  outline (:data:`MASK_OUTLINE`, 124 of 65,536 pixels differ at 256 px).
* :func:`paste_surrounding_pixels`: their crop-space composite: the decoded crop is used only where
  the mask regenerates, the input crop everywhere else, blended by the (soft) mask.
* :func:`restore_matrix`: their AlignRestore framing as one 2 x 3 frame -> crop matrix.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

MASK_SIZE = 256  # the grid mask.png is drawn on
# Outline of mask.png's black (regenerated) region in its 256 px pixel coordinates, traced by us
# (a 1 px Douglas-Peucker fit of the region's boundary): cheeks from row 95, the nose kept down to
# row 128, a rounded chin ending at row 242.
MASK_OUTLINE = np.array([
    (9, 95), (9, 135), (12, 170), (22, 188), (34, 202), (49, 215), (60, 222), (95, 238), (108, 241),
    (152, 242), (164, 239), (183, 231), (202, 220), (223, 201), (240, 177), (244, 169), (247, 134),
    (246, 95), (178, 95), (177, 128), (78, 128), (77, 95)], dtype=np.int32)


def outline_mask_image() -> np.ndarray:
    """Our rebuilt mask.png: (256, 256, 3) uint8, white = keep."""
    img = np.full((MASK_SIZE, MASK_SIZE, 3), 255, np.uint8)
    cv2.fillPoly(img, [MASK_OUTLINE], (0, 0, 0))
    return img


def fixed_keep_mask(size: int, image: str | os.PathLike | np.ndarray | None = None) -> np.ndarray:
    """(size, size) float64 keep mask (1 = keep, 0 = regenerate) as LatentSync's load_fixed_mask
    makes it: the RGB mask image resized with Lanczos (soft, slightly ringing edges at other sizes
    than 256), divided by 255, first channel. ``image``: their mask.png (path or RGB array); None
    uses :func:`outline_mask_image`."""
    if image is None:
        rgb = outline_mask_image()
    elif isinstance(image, np.ndarray):
        rgb = image
    else:
        bgr = cv2.imread(os.fspath(image))
        if bgr is None:
            raise FileNotFoundError(f"{image}: not a readable mask image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LANCZOS4)[..., 0] / 255.0


def paste_surrounding_pixels(decoded: torch.Tensor, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """LatentSync's crop after decoding: ``decoded`` (n, 3, S, S, raw VAE output) where the mask
    regenerates, the input ``pixels`` (same layout, [-1, 1]) where it keeps; ``keep`` (S, S) or
    broadcastable, 1 = keep. Unclamped, like theirs (they clamp after resizing to the face box)."""
    keep = keep.to(decoded.device, torch.promote_types(decoded.dtype, keep.dtype))
    return decoded * (1 - keep) + pixels.to(decoded.device) * keep


# AlignRestore's template at 256 px: brow centres and nose centre in a 75 x 100 box scaled by 2.8
# (210 x 280 px), which is then resized to the square crop.
_TEMPLATE_UNITS = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
_BOX_UNITS = (75, 100)


def restore_matrix(points3: np.ndarray, size: int = 256) -> np.ndarray:
    """The 2 x 3 matrix taking frame pixels to the ``size`` px crop that LatentSync's AlignRestore
    (1.6 release) makes from one frame's three points (left brow centre, right brow centre, nose
    centre; rounded to whole pixels as they round them): a least-squares similarity onto the
    template, their "smooth" translation bias for a first frame (the nose's offset in the two point
    sets' normalised coordinates, added in pixels), then the resize of the box to the square."""
    ratio = size / 256 * 2.8
    dst = _TEMPLATE_UNITS * ratio
    src = np.round(np.asarray(points3, dtype=np.float64)[:, :2])
    cs, cd = src.mean(0), dst.mean(0)
    ps, pd = src - cs, dst - cd
    ss, sd = ps.std(ddof=1), pd.std(ddof=1)  # torch.std: the unbiased estimate over all 6 numbers
    ns, nd = ps / ss, pd / sd
    u, _, vt = np.linalg.svd(ns.T @ nd)
    r = vt.T @ u.T
    if np.linalg.det(r) < 0:
        vt[-1] *= -1
        r = vt.T @ u.T
    m = np.hstack([(sd / ss) * r, (cd - (sd / ss) * r @ cs)[:, None]])
    m[:, 2] += nd[2] - ns[2]
    w, h = int(_BOX_UNITS[0] * ratio), int(_BOX_UNITS[1] * ratio)
    kx, ky = size / w, size / h  # cv2.resize of the w x h box to size x size (pixel centres)
    resize = np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5], [0.0, 0.0, 1.0]])
    return (resize @ np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
