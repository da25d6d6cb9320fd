"""The person-keeping composite (lipsync.face.composite) on the bundled portrait: what it must keep
bit-for-bit, the colour and texture it restores, the mouth it takes from the model, and the
LatentSync mode that pastes back as LatentSync's own code does (compared with a rewrite of it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_helpers import load_astronaut
from lipsync.eval import metrics as M
from lipsync.face import FaceDetector, estimate_alignment, paste_back, warp_to_crop
from lipsync.face import landmarks as lmk
from lipsync.face import composite as C
from lipsync.face.composite import composite_person, crop_points, region_masks
from lipsync.face.mask import lower_face_mask

SIZE = 96


@pytest.fixture(scope="module")
def face():
    """(frame, landmarks, M, crop): the portrait upscaled 2x so the face is ~200 px wide, finer than the
    96 px crop, as in real video."""
    img = load_astronaut()
    img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    with FaceDetector() as det:
        lm = det.detect(img)[0].landmarks
    m = estimate_alignment(lm, SIZE)
    return img, lm, m, warp_to_crop(img, m, SIZE)


def test_outside_the_region_is_bit_identical_and_eyes_are_never_touched(face):
    img, lm, m, crop = face
    garbage = np.random.default_rng(0).integers(0, 256, crop.shape, dtype=np.uint8)
    out = composite_person(img, garbage, m, crop_points(lm, m), lower_face_mask(SIZE))
    changed = np.any(out != img, axis=-1)
    assert changed.any()
    eyes = M.eye_region(img.shape, lm)
    assert not changed[eyes].any()
    # Nothing at or above the nostrils' line, nothing far below the chin.
    nose_y = lm[list(lmk.NOSE_BOTTOM_ARC), 1].min()
    ys = np.nonzero(changed)[0]
    assert ys.min() > nose_y
    assert ys.max() < lm[lmk.CHIN, 1] + 0.4 * (lm[lmk.CHIN, 1] - nose_y)


def test_colour_and_texture_of_the_source_come_back(face, monkeypatch):
    """A generated crop that is the source, blurred and recoloured (what a small VAE does), leaves
    the lower face as sharp and of the same colour as the input; LatentSync's paste does not."""
    img, lm, m, crop = face
    soft = cv2.GaussianBlur(crop, (0, 0), 1.5).astype(np.float32)
    soft[..., 0] += 25.0  # redder
    soft[..., 2] -= 15.0
    generated = np.clip(soft, 0, 255).astype(np.uint8)
    mine = composite_person(img, generated, m, crop_points(lm, m), lower_face_mask(SIZE))
    theirs = paste_back(img, generated, m, lower_face_mask(SIZE))
    f_mine, f_theirs = M.fidelity(mine, img, lm), M.fidelity(theirs, img, lm)
    assert f_theirs["colour_shift"] > 6.0 and f_theirs["sharpness_ratio"] < 0.7
    assert f_mine["colour_shift"] < 1.5
    assert f_mine["sharpness_ratio"] > 0.85
    assert f_mine["psnr_eyes"] == M.PSNR_CAP_DB
    # With the generated crop's mesh the region shows the person's own pixels, moved into the model's
    # shape (here nearly the source's own): sharper still when only a darker inside is the model's
    # (the teeth, darker once blurred, are). person_warp's default takes the whole inner lip contour
    # from the model (the source's teeth move with the source's speech): there the teeth are blurred.
    from lipsync.face.crop_mesh import CropMesh

    monkeypatch.setattr(C, "INSIDE", "dark")
    monkeypatch.setattr(C, "WARP_GAIN", 1.0)
    gen_pts = CropMesh().points(generated, crop_points(lm, m))
    moved = composite_person(img, generated, m, crop_points(lm, m), lower_face_mask(SIZE), gen_points=gen_pts)
    f_moved = M.fidelity(moved, img, lm)
    assert f_moved["colour_shift"] < 1.5 and f_moved["sharpness_ratio"] > 0.9, f_moved


@pytest.mark.parametrize("mesh", [False, True], ids=["blend", "person_pixels"])
def test_the_mouth_comes_from_the_model(face, mesh):
    """Where the generated mouth differs from the source (an open mouth on a closed one), the output
    shows the generated mouth, not a blend of both; also when the person's own pixels are moved into
    the generated shape (the generated crop's mesh given): the opening is the model's."""
    from lipsync.face.crop_mesh import CropMesh

    img, lm, m, crop = face
    generated = crop.copy()
    pts = crop_points(lm, m)
    lips = pts[C._L]
    cx, cy = lips.mean(axis=0)
    cv2.ellipse(generated, (int(cx), int(cy + 2)), (9, 6), 0, 0, 360, (20, 10, 10), -1)
    gen_pts = CropMesh().points(generated, pts) if mesh else None
    assert gen_pts is not None or not mesh
    out = composite_person(img, generated, m, pts, lower_face_mask(SIZE), gen_points=gen_pts)
    back = cv2.warpAffine(out, m, (SIZE, SIZE), flags=cv2.INTER_AREA)
    inner = back[int(cy):int(cy) + 4, int(cx) - 4:int(cx) + 4].astype(float).mean()
    before = crop[int(cy):int(cy) + 4, int(cx) - 4:int(cx) + 4].astype(float).mean()
    assert inner < 0.5 * before


def test_an_opening_the_mesh_reads_short_still_shows(face, monkeypatch):
    """person_warp: where the mesh under-reads the generated mouth (here it sees the source's lips,
    the jaw 2 px higher), the moved source alone hides the model's opening; the model's coarse shape
    (WARP_SHAPE) brings it back, and leaves the face away from the mouth alone."""
    img, lm, m, crop = face
    pts = crop_points(lm, m)
    cx, cy = pts[C._L].mean(axis=0)
    generated = crop.copy()
    opening = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(opening, (int(cx), int(cy + 4)), (13, 11), 0, 0, 360, 1, -1)
    generated[opening > 0] = (20, 10, 10)
    gen_pts = pts.copy()
    gen_pts[C._J, 1] -= 2.0  # a warp to run, but no opening read
    paste, _ = region_masks(pts, SIZE, lower_face_mask(SIZE), gen_pts)
    inner = C._dilate(C._hull_mask(gen_pts[C._I].astype(np.float64), SIZE), 0.03 * SIZE) > 0
    ring = (opening > 0) & (paste > 0.9) & ~inner  # the opening beyond the inner lips the mesh read
    assert ring.sum() > 60
    cheek = (slice(int(cy) - 4, int(cy) + 4), slice(int(cx) - 30, int(cx) - 22))
    means, cheeks = {}, {}
    for shape in (0.0, 1.0):
        monkeypatch.setattr(C, "WARP_SHAPE", shape)
        out = composite_person(img, generated, m, pts, lower_face_mask(SIZE), gen_points=gen_pts)
        back = cv2.warpAffine(out, m, (SIZE, SIZE), flags=cv2.INTER_AREA).astype(float)
        means[shape], cheeks[shape] = back[ring].mean(), back[cheek]
    before = crop[ring].astype(float).mean()
    assert means[0.0] > 0.8 * before, (before, means)  # the source's lips and skin, moved
    assert means[1.0] < 0.6 * means[0.0], (before, means)
    assert np.abs(cheeks[1.0] - cheeks[0.0]).max() <= 2.0  # rounding of the resampled output


def test_region_masks_stay_in_the_regenerated_region(face):
    img, lm, m, crop = face
    regen = lower_face_mask(SIZE)
    paste, mouth = region_masks(crop_points(lm, m), SIZE, regen)
    assert paste.max() == pytest.approx(1.0) and (paste[regen == 0] == 0).all()
    assert (mouth <= (paste > 0)).all() and mouth.max() > 0.9
    with pytest.raises(ValueError, match="crop points"):
        region_masks(np.full((3, 2), np.nan), SIZE)


def test_compositor_modes(face):
    from lipsync.pipeline.stages import CompositeSpec, Compositor
    from lipsync.pipeline.windows import Window

    img, lm, m, crop = face
    pts = crop_points(lm, m)
    regen = lower_face_mask(SIZE)
    outs = {}
    for mode in ("person", "person_warp", "latentsync"):
        comp = Compositor(CompositeSpec(mode, regen), overlap=0)
        comp.add(Window(0, 1), crop[None])
        outs[mode], pasted = comp.frame(0, img, m, pts)
        assert pasted
    from lipsync.pipeline.latentsync_exact import restore_frame

    pasted_crop = crop.astype(np.float32) * regen[..., None] + crop.astype(np.float32) * (1 - regen[..., None])
    assert np.array_equal(outs["latentsync"], restore_frame(img, pasted_crop, m))
    from lipsync.face.composite import Appearance

    # the Compositor keeps one appearance memory per job, fed frame by frame
    from lipsync.face.crop_mesh import CropMesh

    assert np.array_equal(outs["person"], composite_person(img, crop, m, pts, regen, appearance=Appearance(), index=0))
    assert np.array_equal(outs["person_warp"], composite_person(img, crop, m, pts, regen, appearance=Appearance(),
                                                                index=0, gen_points=CropMesh().points(crop, pts)))
    comp = Compositor(CompositeSpec("person", regen), overlap=0)
    comp.add(Window(0, 1), crop[None])
    with pytest.raises(ValueError, match="crop points"):
        comp.frame(0, img, m, None)


def test_colour_offset_ignores_differences_of_shape():
    """A uniform colour cast is removed everywhere, but a dark mouth the model drew where the source
    has skin is neither counted as a colour difference nor lightened (it would paint the source's
    mouth back in at low frequency)."""
    from lipsync.face.composite import match_colour

    rng = np.random.default_rng(1)
    source = np.clip(150 + rng.normal(0, 3, (SIZE, SIZE, 3)), 0, 255).astype(np.float32)
    generated = source - np.array([30.0, 10.0, -20.0], np.float32)
    generated[40:60, 30:66] = 20.0  # an open mouth
    weight = np.ones((SIZE, SIZE), np.float32)
    out = match_colour(generated, source, weight, 0.12 * SIZE)
    outside = np.ones((SIZE, SIZE), bool)
    outside[30:70, 20:76] = False
    assert np.abs(out - source)[outside].max() < 1.0
    assert out[45:55, 40:56].mean() < 20.0 + 25.0  # the mouth keeps its darkness (+ the cast's offset at most)


# ------------------------------------------------------------------ LatentSync's own paste-back


def their_restore(frame: np.ndarray, generated: np.ndarray, source_crop: np.ndarray, regen: np.ndarray,
                  m: np.ndarray) -> np.ndarray:
    """LatentSync's paste_surrounding_pixels_back + restore_video + AlignRestore.restore_img as read
    in their source, rewritten straightforwardly in torch float64 (kornia's warp_affine = grid_sample
    with align_corners and its fill trick, kornia's 2 x 2 erosion = a min over the pixel and its
    upper-left neighbours, their cv2.erode, kornia's Gaussian = a separable conv with reflected
    borders). ``generated``, ``source_crop``: (S, S, 3) uint8 crops; ``regen``: (S, S), 1 = generated."""
    import torch
    import torch.nn.functional as F

    size = generated.shape[0]
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    dec = t(generated).permute(2, 0, 1)[None] / 127.5 - 1
    pix = t(source_crop).permute(2, 0, 1)[None] / 127.5 - 1
    keep = 1 - t(regen)
    combined = dec * (1 - keep) + pix * keep  # their paste_surrounding_pixels_back(..., 1 - masks)
    ratio = size / 256 * 2.8
    w, h = int(75 * ratio), int(100 * ratio)
    face = F.interpolate(combined, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    face = ((face / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).double()  # restore_video
    kx, ky = size / w, size / h
    box = np.linalg.inv([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1]]) @ np.vstack([m, [0, 0, 1]])
    fh, fw = frame.shape[:2]
    ys, xs = np.mgrid[0:fh, 0:fw].astype(np.float64)
    sx, sy = box[0, 0] * xs + box[0, 1] * ys + box[0, 2], box[1, 0] * xs + box[1, 1] * ys + box[1, 2]
    grid = t(np.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1))[None]

    def warp(img, fill):
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        ones = F.grid_sample(torch.ones_like(img), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out + (1 - ones) * fill

    inv_restored = warp(face, 127.0)
    inv_mask = warp(torch.ones(1, 1, h, w, dtype=torch.float64), 0.0)
    padded = F.pad(inv_mask, (1, 0, 1, 0), value=1e4)  # kornia: origin (1, 1), geodesic border
    eroded = -F.max_pool2d(-padded, 2, stride=1)
    area = eroded.sum()
    w_edge = int(area ** 0.5) // 20
    centre = cv2.erode(eroded[0, 0].numpy().astype(np.float32), np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    k = 2 * w_edge + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    g = torch.exp(-((torch.arange(k, dtype=torch.float64) - k // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    c = F.pad(t(centre)[None, None], (k // 2,) * 4, mode="reflect")
    soft = F.conv2d(F.conv2d(c, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))
    src = t(frame).permute(2, 0, 1)[None]
    out = soft * (eroded * inv_restored) + (1 - soft) * src
    return out[0].permute(1, 2, 0).to(torch.uint8).numpy()


@pytest.mark.parametrize("size, turn, shift", [(64, 12.0, (0, 0)), (256, -7.0, (0, 0)), (256, 3.0, (-150, 40))])
def test_latentsync_composite_is_their_restore(size, turn, shift):
    """Compositor(latentsync) on a synthetic frame and generated crop vs the rewrite of their code
    above: the input crop is pasted outside their mask, the box goes back with their soft edge.
    Measured: 0 grey levels apart at 64 and 256 px, a box turned and a box half outside the frame
    included (float32 vs float64 can flip a truncation by 1: allowed on 0.1 % of the values); every
    pixel outside the soft mask is the input's, bit for bit."""
    from lipsync.pipeline import latentsync_exact as lx
    from lipsync.pipeline.stages import CompositeSpec, Compositor
    from lipsync.pipeline.windows import Window

    rng = np.random.default_rng(size)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 2.0)
    generated = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 1.0)
    a, k = np.deg2rad(turn), size / 150.0  # a face ~150 px tall in the frame
    m = np.array([[k * np.cos(a), k * np.sin(a), 0.0], [-k * np.sin(a), k * np.cos(a), 0.0]])
    m[:, 2] = size / 2 - m[:, :2] @ (np.array([200.0, 150.0]) + shift)
    regen = (1 - lx.fixed_keep_mask(size)).astype(np.float32)
    comp = Compositor(CompositeSpec("latentsync", regen, align="latentsync"), overlap=0)
    comp.add(Window(0, 2), np.stack([generated, generated]))
    out, pasted = comp.frame(0, frame, m)
    assert pasted
    want = their_restore(frame, generated, lx.cut_crop(frame, m, size), regen, m)
    diff = np.abs(out.astype(int) - want.astype(int))
    print(f"latentsync composite at {size} px vs their restore: max {diff.max()} grey level(s), "
          f"{np.mean(diff > 0):.3%} of values differ")
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3
    assert np.any(out != frame)
    # Outside the box's soft mask the frame is untouched. The warped box of ones is non-zero up to 1
    # box px outside the box's pixels, and their soft mask reaches 1 frame px past that at the bottom
    # and right (an even erosion kernel): here, 2 frame px beyond.
    w, h = lx.box_size(size)
    bm = lx.box_matrix(m, size)
    dx, dy = 2 * np.linalg.norm(bm[0, :2]), 2 * np.linalg.norm(bm[1, :2])  # 2 frame px in box px
    ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    bx, by = bm[0, 0] * xs + bm[0, 1] * ys + bm[0, 2], bm[1, 0] * xs + bm[1, 1] * ys + bm[1, 2]
    outside = (bx <= -1 - dx) | (by <= -1 - dy) | (bx >= w + dx) | (by >= h + dy)
    assert outside.mean() > 0.5
    assert np.array_equal(out[outside], frame[outside])
    # A frame without a face passes through untouched.
    same, pasted = comp.frame(1, frame, None)
    assert same is frame and not pasted


def test_a_steady_difference_is_taken_out_over_a_clip_and_the_mouth_stays(face):
    """The model draws part of the lower face differently in every frame (bare skin for a beard):
    over a clip that steady difference is learnt and taken out (the source comes back there),
    while the mouth it opens and closes frame by frame still shows."""
    from lipsync.face.composite import Appearance

    img, lm, m, crop = face
    pts = crop_points(lm, m)
    regen = lower_face_mask(SIZE)
    paste, mouth = region_masks(pts, SIZE, regen)
    lips = pts[C._L]
    cx, cy = lips.mean(axis=0)
    patch = (paste > 0.95) & (mouth == 0) & (np.arange(SIZE)[:, None] > cy - 4)
    patch = cv2.erode(patch.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert patch.sum() > 100
    flat = np.array([210, 170, 140], np.uint8)  # far (> 20 grey levels) from the skin it replaces

    def generated(t: int) -> np.ndarray:
        g = crop.copy()
        g[patch] = flat
        if t % 4 < 2:
            cv2.ellipse(g, (int(cx), int(cy + 2)), (9, 6), 0, 0, 360, (20, 10, 10), -1)
        return g

    def inner(a):
        return a[int(cy):int(cy) + 4, int(cx) - 4:int(cx) + 4].astype(float).mean()

    memory, outs = Appearance(), []
    for t in range(40):
        outs.append(composite_person(img, generated(t), m, pts, regen, appearance=memory, index=t))
    without = composite_person(img, generated(39), m, pts, regen)
    back = [cv2.warpAffine(o, m, (SIZE, SIZE), flags=cv2.INTER_AREA).astype(float) for o in (outs[39], without)]
    err_with = np.abs(back[0][patch] - crop[patch]).mean()
    err_without = np.abs(back[1][patch] - crop[patch]).mean()
    assert err_without > 15.0 and err_with < 0.3 * err_without
    # frame 37 has the open mouth, 39 the closed one
    open_, closed = (cv2.warpAffine(outs[t], m, (SIZE, SIZE), flags=cv2.INTER_AREA) for t in (37, 39))
    assert inner(open_) < 0.5 * inner(crop)
    assert abs(inner(closed) - inner(crop)) < 0.25 * inner(crop)
    # a skipped frame (no face) starts the memory anew, as a new one would
    again = composite_person(img, generated(39), m, pts, regen, appearance=memory, index=41)
    fresh = composite_person(img, generated(39), m, pts, regen, appearance=Appearance(), index=41)
    assert np.array_equal(again, fresh)


def _close_jaw(crop: np.ndarray, pts: np.ndarray, lift: float) -> np.ndarray:
    """The crop with everything below the mouth drawn ``lift`` px higher at the chin (a jaw the model
    closes where the source's is lower): the chin and the collar below it move up."""
    from lipsync.face import composite as C

    mouth, chin = pts[C._L][:, 1].mean(), pts[C._J][:, 1].max()
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    dv = lift * np.clip((v - mouth) / (chin - mouth), 0.0, 1.0)
    return cv2.remap(crop, u, v + dv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _skin_below_collar(frame: np.ndarray, m: np.ndarray, pts: np.ndarray, start: float) -> bool:
    """Down the chin's columns (crop coordinates, from row ``start`` to well below the crop): does
    skin come back after the first dark (collar) rows? That is a second chin under the first."""
    from lipsync.face import composite as C

    tall = cv2.warpAffine(frame, np.asarray(m, np.float64), (SIZE, 2 * SIZE), flags=cv2.INTER_AREA)
    u = int(round(pts[C._J][len(C._JAW) // 2, 0]))
    col = tall[int(start):int(1.3 * SIZE), u - 3:u + 4].astype(np.float32).mean(axis=(1, 2))
    dark = np.nonzero(col < 60)[0]
    return bool(dark.size) and bool((col[dark[0]:] > 100).any())


def test_the_source_chin_follows_the_generated_jaw(face):
    """A generated jaw ~7 crop px above the source's: without the generated jaw's points the source's
    chin shows below the generated one (down the chin's column skin comes back under the first dark
    rows: a double chin); with them (found by the mesh on the generated crop) the source below moves up to meet
    it: skin, then the collar. Outside the region and the band that follows the jaw the frame stays the input's."""
    from lipsync.face import composite as C
    from lipsync.face.crop_mesh import CropMesh

    img, lm, m, crop = face
    pts = crop_points(lm, m)
    generated = _close_jaw(crop, pts, 10.0)
    mesh = CropMesh()
    gen_pts = mesh.points(generated, pts)
    assert gen_pts is not None
    lift = pts[C._J][:, 1].max() - gen_pts[C._J][:, 1].max()
    assert 3.0 < lift < 10.0, lift  # the mesh sees the closed jaw (the chin rose ~7 px; it sees ~5)
    assert mesh.points(np.zeros_like(crop), pts) is None  # no face: the source's jaw stays
    regen = lower_face_mask(SIZE)
    before = composite_person(img, generated, m, pts, regen)
    after = composite_person(img, generated, m, pts, regen, gen_points=gen_pts)
    start = gen_pts[C._J][:, 1].max() - 2
    assert not _skin_below_collar(img, m, pts, start - lift)  # the input: one chin, then the collar
    assert _skin_below_collar(before, m, pts, start)  # the source's chin under the generated one
    assert not _skin_below_collar(after, m, pts, start)
    changed = np.any(after != img, axis=-1)
    eyes = M.eye_region(img.shape, lm)
    assert not changed[eyes].any()
    chin, nose_y = lm[lmk.CHIN, 1], lm[list(lmk.NOSE_BOTTOM_ARC), 1].min()
    assert np.nonzero(changed)[0].max() < chin + 0.8 * (chin - nose_y)  # the band: a quarter crop below the jaw
    # The same points as the source's: nothing to follow, the result is the plain composite's.
    same = composite_person(img, generated, m, pts, regen, gen_points=pts)
    assert np.array_equal(same, composite_person(img, generated, m, pts, regen))
