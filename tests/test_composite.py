"""The person-keeping composite (lipsync.face.composite) on the bundled portrait: what it must keep
bit-for-bit, the colour and texture it restores, the mouth it takes from the model, and the
LatentSync mode that pastes as LatentSync does."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_helpers import load_astronaut
from lipsync.eval import metrics as M
from lipsync.face import FaceDetector, estimate_alignment, paste_back, warp_to_crop
from lipsync.face import landmarks as lmk
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


def test_colour_and_texture_of_the_source_come_back(face):
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


def test_the_mouth_comes_from_the_model(face):
    """Where the generated mouth differs from the source (an open mouth on a closed one), the output
    shows the generated mouth, not a blend of both."""
    img, lm, m, crop = face
    generated = crop.copy()
    pts = crop_points(lm, m)
    lips = pts[-len(lmk.LIPS_OUTER):]
    cx, cy = lips.mean(axis=0)
    cv2.ellipse(generated, (int(cx), int(cy + 2)), (9, 6), 0, 0, 360, (20, 10, 10), -1)
    out = composite_person(img, generated, m, pts, lower_face_mask(SIZE))
    back = cv2.warpAffine(out, m, (SIZE, SIZE), flags=cv2.INTER_AREA)
    inner = back[int(cy):int(cy) + 4, int(cx) - 4:int(cx) + 4].astype(float).mean()
    before = crop[int(cy):int(cy) + 4, int(cx) - 4:int(cx) + 4].astype(float).mean()
    assert inner < 0.5 * before


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
    for mode in ("person", "latentsync"):
        comp = Compositor(CompositeSpec(mode, regen, regen), overlap=0)
        comp.add(Window(0, 1), crop[None])
        outs[mode], pasted = comp.frame(0, img, m, pts)
        assert pasted
    assert np.array_equal(outs["latentsync"], paste_back(img, crop, m, regen))
    assert np.array_equal(outs["person"], composite_person(img, crop, m, pts, regen))
    comp = Compositor(CompositeSpec("person", regen, regen), overlap=0)
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
