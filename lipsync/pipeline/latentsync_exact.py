"""Pieces that reproduce LatentSync's own inference arithmetic where our default differs on purpose
or by history; each is proven against outputs of their code (tests/test_latentsync_parity.py).

* :func:`fixed_keep_mask`: their fixed mask (``latentsync/utils/mask.png``, white = keep) at any crop
  size, read from a copy of that file when the user has one, else rebuilt from our tracing of its
  outline (:data:`MASK_OUTLINE`, 124 of 65,536 pixels differ at 256 px).
* :func:`paste_surrounding_pixels`: their crop-space composite: the decoded crop is used only where
  the mask regenerates, the input crop everywhere else, blended by the (soft) mask.
* :func:`restore_matrix` / :func:`fit_three_points`: their AlignRestore framing (three mesh points,
  :func:`three_points`) as one 2 x 3 frame -> crop matrix; :func:`cut_crop`: their crop's pixels
  (bilinear into the 75 x 100 box, Lanczos to the square). ``align: latentsync`` in a profile.
* :func:`restore_frame`: their paste-back (restore_video + AlignRestore.restore_img): the crop to the
  box, the inverse warp and the soft-edged blend. ``composite: latentsync`` in a profile.
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


# ------------------------------------------------------------------------------ framing (AlignRestore)

# Their three points on our face mesh. Their 1.6 code takes InsightFace's 106-point landmarks:
# left brow centre = mean of points 43, 48, 49, 51, 50, right brow centre = mean of 101-105, nose
# centre = mean of 74, 77, 83, 86 (then rounded to whole pixels). The common 106 -> iBUG-68 table
# makes those brow points iBUG 17-21 and 22-26 exactly (each brow's five points) and 74 / 86 iBUG 29 /
# 30 (lower nose bridge, nose tip), which our iBUG-68 table (lipsync.face.landmarks.MESH_TO_68) puts
# on mesh 70, 63, 105, 66, 107 / 336, 296, 334, 293, 300 and 5 / 4. 77 / 83 are no iBUG-68 points,
# and the 106 numbering goes by point name, not position, so their place cannot be read from their
# code: we take the nose's side walls beside the inner eye corners (mesh 122 / 351), which makes their
# "nose centre" the middle of the nose. That pair is the one for which the astronaut portrait's
# brow / nose triangle has the shape of their template (largest fit residual 0.08 of the box's 75 x
# 100 units), and it frames the face as their mask.png expects (chin at 0.88 of the crop, the mask
# regenerating down to 0.945); the nose wings (alae, mesh 64 / 294) instead would move the 256 px
# crop's corners by ~27 px and put the chin at 0.80, the lips on the mask's upper edge.
BROW_IMAGE_LEFT = (70, 63, 105, 66, 107)  # their 106-pt 43, 48, 49, 51, 50 = iBUG 17-21 (subject's right)
BROW_IMAGE_RIGHT = (336, 296, 334, 293, 300)  # their 101-105 = iBUG 22-26 (subject's left)
NOSE_CENTRE = (5, 4, 122, 351)  # their 74 (iBUG 29), 86 (iBUG 30, tip), 77 / 83 (see above)


def three_points(landmarks: np.ndarray) -> np.ndarray:
    """(3, 2) float64: their left brow centre, right brow centre and nose centre (image left/right)
    from our mesh landmarks in frame pixels, unrounded (:func:`fit_three_points` rounds)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[list(ix), :2].mean(0) for ix in (BROW_IMAGE_LEFT, BROW_IMAGE_RIGHT, NOSE_CENTRE)])


def box_size(size: int) -> tuple[int, int]:
    """(width, height) of their AlignRestore box for a ``size`` px crop: 210 x 280 at 256, 420 x 560 at 512."""
    ratio = size / 256 * 2.8
    return int(_BOX_UNITS[0] * ratio), int(_BOX_UNITS[1] * ratio)


def box_to_crop(size: int) -> np.ndarray:
    """3 x 3: box pixels -> crop pixels, the cv2 / torch resize of the box to the square (pixel centres)."""
    w, h = box_size(size)
    kx, ky = size / w, size / h
    return np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5], [0.0, 0.0, 1.0]])


def box_matrix(matrix: np.ndarray, size: int) -> np.ndarray:
    """2 x 3 frame -> box matrix (their ``affine_matrix``) of a frame -> crop matrix."""
    return (np.linalg.inv(box_to_crop(size)) @ np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]]))[:2]


def fit_three_points(points3: np.ndarray, size: int = 256, prev_bias: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(frame -> crop 2 x 3 matrix, bias) of their AlignRestore (1.6 release) on one frame's three
    points (left brow centre, right brow centre, nose centre; rounded to whole pixels as they round
    them): a least-squares similarity onto the template (centred, each point set divided by the
    unbiased standard deviation of its 6 numbers, rotation from the SVD, never a reflection), plus
    their "smooth" translation bias (the nose's offset in the two point sets' normalised
    coordinates, added in pixels), then the resize of the box to the square. ``prev_bias``: the
    bias their restorer carried from the previous frame with a face (None for a video's first):
    the bias used is then 0.2 * prev_bias + 0.8 * this frame's, and is returned for the next."""
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
    bias = nd[2] - ns[2]
    if prev_bias is not None:
        bias = 0.2 * np.asarray(prev_bias, np.float64) + 0.8 * bias
    m[:, 2] += bias
    return (box_to_crop(size) @ np.vstack([m, [0.0, 0.0, 1.0]]))[:2], bias


def restore_matrix(points3: np.ndarray, size: int = 256, prev_bias: np.ndarray | None = None) -> np.ndarray:
    """The 2 x 3 matrix taking frame pixels to the ``size`` px crop that LatentSync's AlignRestore
    makes from one frame's three points (:func:`fit_three_points` without the bias)."""
    return fit_three_points(points3, size, prev_bias)[0]


# ------------------------------------------------------------------------- pixels: crop and restore

FILL = 127.0  # their warps' fill value outside the image


def bilinear_warp(image: np.ndarray, dst_to_src: np.ndarray, width: int, height: int, fill: float = FILL,
                  x0: int = 0, y0: int = 0) -> np.ndarray:
    """(height, width, C) or (height, width) float32: ``image`` sampled bilinearly at
    ``dst_to_src`` @ (x0 + x, y0 + y, 1) for each output pixel (x, y), neighbours outside the image
    taking ``fill``: kornia's warp_affine (bilinear, align_corners, padding "fill" or, with fill 0,
    "zeros") in exact float arithmetic, where cv2.warpAffine rounds the weights to 1/32 px."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    a = np.asarray(dst_to_src, dtype=np.float64)
    ys, xs = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float64)
    sx = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    sy = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    fx0, fy0 = np.floor(sx), np.floor(sy)
    wx, wy = (sx - fx0).astype(np.float32), (sy - fy0).astype(np.float32)
    ix0, iy0 = fx0.astype(np.int64), fy0.astype(np.int64)
    extra = img.shape[2:]
    out = np.zeros((height, width) + extra, np.float32)
    for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
        for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
            yy, xx = iy0 + dy, ix0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = np.full((height, width) + extra, fill, np.float32)
            v[inside] = img[yy[inside], xx[inside]]
            wgt = wgt_y * wgt_x
            out += (wgt[..., None] if extra else wgt) * v
    return out


def cut_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: their aligned crop: the frame warped bilinearly into the box (fill 127,
    truncated to uint8 as their ``astype`` does), then resized to the square with Lanczos (cv2)."""
    w, h = box_size(size)
    inv = np.linalg.inv(np.vstack([box_matrix(matrix, size), [0.0, 0.0, 1.0]]))[:2]
    box = np.clip(bilinear_warp(image, inv, w, h), 0, 255).astype(np.uint8)
    return cv2.resize(box, (size, size), interpolation=cv2.INTER_LANCZOS4)


def _aa_linear(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bilinear resize (torch's interpolate(antialias=True),
    torchvision's resize, PIL's BILINEAR): a triangle filter widened by the scale when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        k = np.maximum(0.0, 1.0 - np.abs((j - centre + 0.5) / support))
        w[i, lo:hi] = k / k.sum() if k.sum() > 0 else k
    return w


def resize_antialiased(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, C) float32: ``image`` (H, W, C) resized as their restore_video resizes the
    decoded crop to the box (torchvision resize, bilinear, antialias)."""
    img = np.asarray(image, np.float64)
    rows = np.tensordot(_aa_linear(img.shape[0], height), img, axes=(1, 0))  # (height, W, C)
    out = np.tensordot(_aa_linear(img.shape[1], width), rows, axes=(1, 1))  # (width, height, C)
    return out.transpose(1, 0, 2).astype(np.float32)


def _gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    x = np.arange(ksize, dtype=np.float64) - ksize // 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def restore_frame(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The frame with ``crop`` put back as LatentSync's restore_video + AlignRestore.restore_img do.

    ``crop``: (S, S, 3) in grey levels (float or uint8), after their paste_surrounding_pixels (see
    :func:`paste_surrounding_pixels`); ``matrix``: frame -> crop (S px). The crop is resized to the
    box (bilinear, antialiased) and truncated to uint8; the box is warped back into the frame
    (bilinear, fill 127) and blended by a soft mask: the warped box of ones (bilinear), eroded by 2 x
    2 px; ``w_edge`` = floor(sqrt(its area)) // 20; that mask eroded again by a 2 w_edge square and
    blurred by a Gaussian of 2 w_edge + 1 taps (sigma 0.3 (w_edge - 1) + 0.8, reflected borders);
    out = soft * (eroded * warped face) + (1 - soft) * frame, truncated to uint8. Pixels outside the
    soft mask are the input's, bit for bit; only the box's bounding box is processed."""
    size = int(crop.shape[0])
    w, h = box_size(size)
    bm = box_matrix(matrix, size)
    face = np.floor(np.clip(resize_antialiased(np.asarray(crop, np.float32), w, h), 0, 255))
    out = image.copy()
    ih, iw = image.shape[:2]
    inv = np.linalg.inv(np.vstack([bm, [0.0, 0.0, 1.0]]))[:2]
    corners = np.array([[-1.0, -1.0], [w, -1.0], [-1.0, h], [w, h]]) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = (max(0, int(np.floor(v)) - 2) for v in corners.min(0))
    x1, y1 = min(iw, int(np.ceil(corners[:, 0].max())) + 3), min(ih, int(np.ceil(corners[:, 1].max())) + 3)
    if x1 <= x0 or y1 <= y0:
        return out
    rw, rh = x1 - x0, y1 - y0
    restored = bilinear_warp(face, bm, rw, rh, FILL, x0, y0)
    mask = bilinear_warp(np.ones((h, w), np.float32), bm, rw, rh, 0.0, x0, y0)
    eroded = cv2.erode(mask, np.ones((2, 2), np.uint8))
    w_edge = int(float(eroded.sum(dtype=np.float64)) ** 0.5) // 20
    centre = cv2.erode(eroded, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    k = _gaussian_kernel(2 * w_edge + 1, 0.3 * ((2 * w_edge) * 0.5 - 1) + 0.8)
    soft = cv2.sepFilter2D(centre, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT_101)[..., None]
    roi = out[y0:y1, x0:x1]
    blended = soft * (eroded[..., None] * restored) + (1.0 - soft) * roi.astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(blended, 0, 255).astype(image.dtype)
    return out
