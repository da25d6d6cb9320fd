"""Face geometry layer: detection + mesh, tracking, alignment / paste-back, masks.

Frames are built from the bundled astronaut portrait (see face_helpers). CPU only, no network.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from face_helpers import (
    PHOTO_FACE_BOX,
    Frame,
    iou,
    load_astronaut,
    paste_face,
    psnr,
    textured_background,
)
from lipsync.face import (
    LATENTSYNC_ASPECT,
    MESH_TO_68,
    TEMPLATE,
    TEMPLATE_INDICES,
    FaceDetector,
    FaceTracker,
    OneEuroFilter,
    estimate_alignment,
    feather,
    landmark_mask,
    lower_face_mask,
    mouth_opening,
    mouth_width,
    paste_back,
    plan_tiles,
    select_target,
    to_68,
    track_video,
    warp_landmarks,
    warp_to_crop,
)
from lipsync.face import landmarks as L
from lipsync.face.detect import DETECTABLE_FRACTION, Face


@pytest.fixture(scope="module")
def photo():
    return load_astronaut()


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as det:
        yield det


@pytest.fixture(scope="module")
def astro_face(detector, photo):
    faces = detector.detect(photo)
    assert len(faces) == 1
    return faces[0]


# --- detection ----------------------------------------------------------------------------------

def test_astronaut_one_face_with_mesh(astro_face):
    f = astro_face
    assert f.landmarks.shape == (478, 3) and f.landmarks.dtype == np.float32
    assert f.score > 0.8
    # The mesh box is the face: compare with the hand-measured box, and every point inside it.
    assert iou(f.bbox, PHOTO_FACE_BOX) > 0.85
    x0, y0, x1, y1 = f.bbox
    assert np.all((f.landmarks[:, 0] >= x0) & (f.landmarks[:, 0] <= x1))
    assert np.all((f.landmarks[:, 1] >= y0) & (f.landmarks[:, 1] <= y1))
    assert f.landmarks68.shape == (68, 2)
    assert 80 < f.width < 105 and abs(f.center[0] - 225) < 10
    # Eyes where the box detector's own keypoints put them (an independent model), subject's
    # right eye on the image's left.
    right_eye = f.landmarks[list(L.RIGHT_EYE), :2].mean(0)
    left_eye = f.landmarks[list(L.LEFT_EYE), :2].mean(0)
    assert np.linalg.norm(right_eye - (202.7, 103.3)) < 6
    assert np.linalg.norm(left_eye - (247.9, 105.6)) < 6
    iris = f.landmarks[L.RIGHT_IRIS_CENTER, :2]
    assert np.linalg.norm(iris - right_eye) < 5
    # Closed-lip smile (teeth barely parted): small opening, a normal mouth width.
    assert 0.0 <= f.mouth_opening < 0.2
    assert 0.55 < f.mouth_width < 0.9
    # 68-point layout sanity: jaw left to right, chin lowest, mouth below nose below eyes.
    p68 = f.landmarks68
    assert p68[0, 0] < p68[8, 0] < p68[16, 0]
    assert p68[8, 1] == pytest.approx(p68[:17, 1].max(), abs=3)
    assert p68[36:48, 1].mean() < p68[30, 1] < p68[48:68, 1].mean()


def test_no_face_gives_empty_list(detector):
    assert detector.detect(textured_background(720, 1280, seed=11)) == []
    assert detector.detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_several_people_wide_shot(detector, photo):
    frame = textured_background(1080, 1920, seed=3)
    specs = [(300, (400, 500)), (150, (1650, 400)), (90, (1300, 700)), (70, (800, 900)), (60, (1000, 250))]
    pasted = [paste_face(frame, photo, w, c) for w, c in specs]
    faces = detector.detect(frame)
    assert len(faces) == len(pasted)
    widths = [f.width for f in faces]
    assert widths == sorted(widths, reverse=True)
    # One-to-one with what was pasted, boxes in place.
    matched = set()
    for f in faces:
        scores = [iou(f.bbox, p.box) for p in pasted]
        k = int(np.argmax(scores))
        assert scores[k] > 0.8, (f.bbox, pasted[k].box)
        matched.add(k)
    assert len(matched) == len(pasted)


def test_small_faces_respect_min_face_px(photo):
    frame = textured_background(720, 1280, seed=4)
    paste_face(frame, photo, 60, (300, 300))
    paste_face(frame, photo, 160, (900, 400))
    with FaceDetector(min_face_px=100) as det:
        faces = det.detect(frame)
    assert len(faces) == 1 and faces[0].width > 140


def test_tile_plan_covers_every_face_size():
    h, w, min_face = 1080, 1920, 40
    tiles = plan_tiles(h, w, min_face)
    assert tiles[0] == (0, 0, 1920)
    rng = np.random.default_rng(0)
    for _ in range(300):
        f = rng.uniform(min_face, 400)
        cx, cy = rng.uniform(f, w - f), rng.uniform(f, h - f)
        # Some tile must see the face at >= DETECTABLE_FRACTION of its side, with 1.5 faces of room.
        ok = any(
            f >= DETECTABLE_FRACTION * side - 1e-6
            and (side >= max(h, w) or (x0 <= cx - 0.75 * f and cx + 0.75 * f <= x0 + side
                                       and y0 <= cy - 0.75 * f and cy + 0.75 * f <= y0 + side))
            for x0, y0, side in tiles
        )
        assert ok, (f, cx, cy)


def test_refine_follows_and_drops(detector, photo, astro_face):
    shifted = np.roll(photo, (6, -9), axis=(0, 1))
    f = detector.refine(shifted, astro_face)
    assert f is not None and f.landmarks.shape == (478, 3)
    dx, dy = f.center[0] - astro_face.center[0], f.center[1] - astro_face.center[1]
    assert abs(dx + 9) < 2.5 and abs(dy - 6) < 2.5
    assert detector.refine(textured_background(512, 512, seed=2), astro_face) is None


# --- landmarks ----------------------------------------------------------------------------------

def test_mesh_to_68_mapping():
    assert MESH_TO_68.shape == (68,) and len(set(MESH_TO_68.tolist())) == 68
    assert MESH_TO_68.max() < 468
    lm = np.random.default_rng(0).random((478, 3))
    assert to_68(lm).shape == (68, 2)
    assert np.array_equal(to_68(lm)[30], lm[4, :2].astype(np.float32))


def _similar(lm: np.ndarray, angle_deg: float, scale: float, shift) -> np.ndarray:
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out = lm.astype(np.float64).copy()
    out[:, :2] = lm[:, :2] @ r.T + np.asarray(shift)
    out[:, 2] = lm[:, 2] * scale
    return out


def test_mouth_opening_is_invariant_and_monotonic(astro_face):
    lm = astro_face.landmarks.astype(np.float64)
    base = mouth_opening(lm)
    for angle, scale in ((20, 1.0), (-35, 2.5), (90, 0.4), (180, 1.0)):
        moved = _similar(lm, angle, scale, (300, -40))
        assert mouth_opening(moved) == pytest.approx(base, rel=1e-5, abs=1e-7)
        assert mouth_width(moved) == pytest.approx(mouth_width(lm), rel=1e-5)
    # Open the jaw: move the lower inner lip down by 0.2 inter-ocular distances.
    iod = L.inter_ocular_distance(lm)
    opened = lm.copy()
    opened[list(L.LOWER_LIP_INNER[1:-1]), 1] += 0.2 * iod
    assert mouth_opening(opened) == pytest.approx(base + 0.2, abs=0.02)
    # Lips the mesh puts crossed count as closed, not negative.
    crossed = lm.copy()
    for up, lo in L.MOUTH_OPENING_PAIRS:
        crossed[lo, 1] = crossed[up, 1] - 3
    assert mouth_opening(crossed) == 0.0
    assert mouth_opening(np.zeros((478, 3))) == 0.0


# --- smoothing / tracking ------------------------------------------------------------------------

def test_one_euro_filter():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    rng = np.random.default_rng(0)
    noisy = 5.0 + rng.normal(0, 1.0, size=(200, 3))
    out = np.array([f(x, i / 25) for i, x in enumerate(noisy)])
    assert out[50:].std() < 0.5 * noisy[50:].std()
    assert abs(out[50:].mean() - 5.0) < 0.2
    # A step is followed (faster with beta), and a repeated timestamp changes nothing.
    f = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    ys = [f(np.array([0.0 if i < 5 else 10.0]), i / 25)[0] for i in range(40)]
    assert ys[-1] == pytest.approx(10.0, abs=0.1)
    assert f(np.array([0.0]), 39 / 25)[0] == pytest.approx(ys[-1])


def _fake_face(x, w, tid=None):
    lm = np.zeros((478, 3), np.float32)
    lm[:, 0] = np.linspace(x, x + w, 478)
    lm[:, 1] = np.linspace(0, w, 478)
    face = Face(bbox=(x, 0.0, x + w, w), score=0.9, landmarks=lm)
    if tid is not None:
        face.track_id = tid
    return face


def test_select_target():
    faces = [_fake_face(0, 50, 3), _fake_face(100, 120, 7), _fake_face(300, 80, 9)]
    assert select_target(faces, "largest").width == 120
    assert select_target(faces, 0).width == 120
    assert select_target(faces, 1).width == 80
    assert select_target(faces, 5) is None
    assert select_target(faces, "track:9").track_id == 9
    assert select_target(faces, "track:1") is None
    assert select_target([], "largest") is None
    with pytest.raises(ValueError):
        select_target(faces, "biggest")


def _moving_sequence(photo, n=30, second_from=12):
    bg = textured_background(480, 640, seed=5)
    frames, centres = [], []
    for i in range(n):
        img = bg.copy()
        c = (150 + 3.37 * i, 220 + 0.8 * i)  # sub-pixel steps: the mesh jitters a little
        paste_face(img, photo, 110, c)
        centres.append(c)
        if i >= second_from:
            paste_face(img, photo, 80, (520, 330))
        frames.append(Frame(index=i, time=i / 25.0, image=img))
    return frames, centres


def test_tracker_ids_smoothing_and_new_face(detector, photo):
    frames, centres = _moving_sequence(photo)
    tracker = FaceTracker(detect_every=5)
    ids_a, ids_b, raw, smooth = [], [], [], []
    first_b = None
    for fr in frames:
        faces = tracker.update(fr.index, fr.image, detector, time=fr.time)
        a = [f for f in faces if f.width > 100]
        b = [f for f in faces if f.width <= 100]
        assert len(a) == 1
        assert np.hypot(a[0].center[0] - centres[fr.index][0], a[0].center[1] - centres[fr.index][1]) < 6
        ids_a.append(a[0].track_id)
        raw.append(a[0].landmarks[:, :2])
        smooth.append(a[0].smoothed_landmarks[:, :2])
        if b:
            first_b = fr.index if first_b is None else first_b
            ids_b.append(b[0].track_id)
    assert len(set(ids_a)) == 1
    # The second face appears at frame 12 and is picked up at the next keyframe (15).
    assert first_b is not None and 12 <= first_b <= 15
    assert len(set(ids_b)) == 1 and ids_b[0] != ids_a[0]
    assert len(ids_b) == len(frames) - first_b
    # Keyframes only, plus none wasted: 30 frames, detect_every 5.
    assert tracker.detections_run <= 7
    raw, smooth = np.array(raw[3:]), np.array(smooth[3:])
    jitter = lambda x: float(np.diff(x, n=2, axis=0).std())
    assert jitter(smooth) < 0.8 * jitter(raw)
    # ... without lagging far behind (under a frame's motion, 3.4 px).
    assert np.abs((smooth - raw).mean(axis=(0, 1))).max() < 3.4


def _gap_frames(photo, n=24, gap=range(8, 16), other=False):
    bg = textured_background(360, 640, seed=8)
    out = []
    for i in range(n):
        img = bg.copy()
        if i not in gap:
            paste_face(img, photo, 110, (200 + i, 170))
        if other:
            paste_face(img, photo, 70, (500, 200))
        out.append(Frame(index=i, time=i / 25.0, image=img))
    return out


def test_track_video_gap_keeps_id(detector, photo):
    gap = range(8, 16)
    frames = iter(_gap_frames(photo, gap=gap))  # an iterator: track_video must stream
    results = list(track_video(frames, detector, target="largest", detect_every=10))
    assert [fr.index for fr, _ in results] == list(range(24))
    for fr, face in results:
        assert (face is None) == (fr.index in gap), fr.index
    ids = {face.track_id for _, face in results if face is not None}
    assert len(ids) == 1


def test_track_video_reidentifies_after_tracker_forgot(detector, photo):
    # The tracker forgets after 2 frames; a second person stays on screen all along and must not be
    # taken for the target while it is away.
    # The target's return is then only seen at the next regular keyframe (frame 16).
    gap = range(6, 14)
    results = list(track_video(_gap_frames(photo, n=20, gap=gap, other=True), detector,
                               target="largest", max_missed=2, detect_every=4))
    for fr, face in results:
        if fr.index in gap:
            assert face is None, fr.index
        elif fr.index < gap.start or fr.index >= 16:
            assert face is not None, fr.index
        if face is not None:
            assert face.width > 100 and abs(face.center[0] - (200 + fr.index)) < 6


# --- alignment / paste-back -----------------------------------------------------------------------

def test_similarity_fit_recovers_a_known_transform():
    size = 256
    dst = TEMPLATE * size - 0.5
    # Landmarks = template pushed through a known similarity; the fit must undo it exactly.
    a, s, t = math.radians(25), 0.7, np.array([400.0, 120.0])
    r = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lm = np.zeros((478, 3))
    lm[TEMPLATE_INDICES, :2] = dst @ r.T + t
    M = estimate_alignment(lm, size)
    assert np.allclose(warp_landmarks(lm, M)[TEMPLATE_INDICES, :2], dst, atol=1e-3)
    assert np.linalg.det(M[:, :2]) > 0  # no reflection
    # LatentSync geometry: 4/3 horizontal stretch about the centre, verticals untouched.
    M2 = estimate_alignment(lm, size, aspect=LATENTSYNC_ASPECT)
    p2 = warp_landmarks(lm, M2)[TEMPLATE_INDICES, :2]
    c = size / 2 - 0.5
    assert np.allclose(p2[:, 1], dst[:, 1], atol=1e-3)
    assert np.allclose(p2[:, 0] - c, (dst[:, 0] - c) * LATENTSYNC_ASPECT, atol=1e-3)


def test_opening_jaw_does_not_move_the_crop():
    """The crop follows the rigid upper face only: a jaw that drops (chin, lower lip, mouth corners)
    must not shift or zoom it, or the unmasked upper half tells the UNet how wide the original
    mouth was open."""
    from lipsync.face import landmarks as lmk

    size = 96
    lm = np.zeros((478, 3))
    lm[TEMPLATE_INDICES, :2] = TEMPLATE * 300 + np.array([120.0, 80.0])
    M = estimate_alignment(lm, size)
    opened = lm.copy()
    moving = sorted(set(lmk.JAW) | set(lmk.LIPS_OUTER) | {61, 291, 152})
    opened[moving, 1] += 25.0  # a wide jaw drop in frame pixels
    opened[[61, 291], 0] += np.array([-6.0, 6.0])  # and spread mouth corners
    assert np.abs(estimate_alignment(opened, size) - M).max() < 1e-9


def test_template_framing():
    u, v = TEMPLATE[:, 0], TEMPLATE[:, 1]
    idx = {int(i): k for k, i in enumerate(TEMPLATE_INDICES)}
    assert np.allclose(u[[idx[33], idx[263]]].mean(), 0.5) and v[idx[33]] == v[idx[263]]
    assert 0.25 < v[idx[33]] < 0.4  # eyes in the upper part
    assert 0.8 < v[idx[152]] < 0.95  # chin near the bottom
    assert np.all((TEMPLATE > 0.05) & (TEMPLATE < 0.95))


def _roundtrip(frame, face, size):
    M = estimate_alignment(face.landmarks, size)
    crop = warp_to_crop(frame, M, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    mask = lower_face_mask(size)
    out = paste_back(frame, crop, M, mask)
    h, w = frame.shape[:2]
    # Where the (unfeathered) mask lands in the frame: nothing may change anywhere else.
    warped_mask = cv2.warpAffine(mask, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    changed = np.any(out != frame, axis=2)
    assert not np.any(changed & (warped_mask == 0))
    # Face region: the lower-face hull, in the frame.
    hull = landmark_mask(warp_landmarks(face.landmarks, M), size, dilate=0)
    region = cv2.warpAffine(hull, M, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    assert region.sum() > 500
    return M, crop, out, psnr(out[region], frame[region])


@pytest.mark.parametrize("size,face_width", [(256, 150), (96, 60)])
def test_align_paste_back_roundtrip(detector, photo, size, face_width):
    frame = textured_background(720, 1280, seed=7)
    paste_face(frame, photo, face_width, (700, 380))
    faces = detector.detect(frame)
    assert len(faces) == 1
    _, _, _, quality = _roundtrip(frame, faces[0], size)
    assert quality >= 35.0


def test_alignment_undoes_roll(detector, photo):
    def roll_of(angle):
        frame = textured_background(720, 1280, seed=9)
        paste_face(frame, photo, 150, (640, 360), angle=angle)
        face = detector.detect(frame)[0]
        M, crop, _, quality = _roundtrip(frame, face, 256)
        assert quality >= 35.0
        cl = warp_landmarks(face.landmarks, M)
        eye = cl[L.LEFT_EYE_OUTER, :2] - cl[L.RIGHT_EYE_OUTER, :2]
        assert abs(math.degrees(math.atan2(eye[1], eye[0]))) < 2.0  # eyes level in the crop
        return math.degrees(math.atan2(M[1, 0], M[0, 0]))

    # cv2's positive angle turns the face counter-clockwise on screen; the crop turns it back.
    assert roll_of(15.0) - roll_of(0.0) == pytest.approx(15.0, abs=2.0)


def test_paste_back_replaces_only_the_mask(detector, photo, astro_face):
    size = 128
    M = estimate_alignment(astro_face.landmarks, size)
    crop = warp_to_crop(photo, M, size)
    edited = crop.copy()
    edited[size // 2:] = (255, 0, 255)
    mask = lower_face_mask(size)
    out = paste_back(photo, edited, M, mask, feather_px=6)
    mouth = astro_face.landmarks[13, :2].astype(int)
    eye = astro_face.landmarks[L.RIGHT_EYE_OUTER, :2].astype(int)
    assert tuple(out[mouth[1], mouth[0]]) == (255, 0, 255)
    assert np.array_equal(out[eye[1], eye[0]], photo[eye[1], eye[0]])
    # A crop much finer than the face (512 for a ~90 px face) goes back through area filtering.
    M5 = estimate_alignment(astro_face.landmarks, 512)
    out5 = paste_back(photo, warp_to_crop(photo, M5, 512), M5, lower_face_mask(512))
    assert psnr(out5, photo) > 35
    warped5 = cv2.warpAffine(lower_face_mask(512), M5, photo.shape[1::-1],
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert not np.any(np.any(out5 != photo, axis=2) & (warped5 == 0))
    # An empty mask is a no-op copy.
    same = paste_back(photo, crop, M, np.zeros((size, size), np.float32))
    assert np.array_equal(same, photo) and same is not photo


# --- masks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 96, 256])
def test_masks_cover_mouth_not_eyes(astro_face, size):
    M = estimate_alignment(astro_face.landmarks, size)
    cl = warp_landmarks(astro_face.landmarks, M)

    def values(mask, idx):
        p = np.clip(np.round(cl[list(idx), :2]).astype(int), 0, size - 1)
        return mask[p[:, 1], p[:, 0]]

    lower_parts = L.LIPS_OUTER + L.LIPS_INNER + (L.CHIN, 148, 377, 176, 400)
    eyes = L.LEFT_EYE + L.RIGHT_EYE + L.LEFT_EYEBROW + L.RIGHT_EYEBROW
    for mask in (lower_face_mask(size), landmark_mask(cl, size)):
        assert mask.shape == (size, size) and mask.dtype == np.float32
        assert np.all(values(mask, lower_parts) == 1.0)
        assert np.all(values(mask, eyes) == 0.0)
    # The convention is 1 = regenerated; the lower half, never the top.
    m = lower_face_mask(size)
    assert m[: size // 3].max() == 0 and m[-1, size // 2] == 1


def test_feather_stays_inside_mask():
    m = np.zeros((96, 96), np.float32)
    m[40:, 10:86] = 1.0  # touches the crop's bottom border
    soft = feather(m, 8)
    assert soft.min() >= 0 and soft.max() <= 1
    assert np.all(soft[m == 0] == 0)
    assert soft[70, 48] == pytest.approx(1.0)
    assert soft[-1, 48] < 0.05  # fades out at the crop border too
    ramp = soft[38:62, 48]
    assert np.all(np.diff(ramp) >= -1e-6)
    assert np.array_equal(feather(m, 0), m)
