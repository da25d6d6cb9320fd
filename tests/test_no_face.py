"""Frames without a face pass through untouched: decode -> track -> (align, paste back) -> encode,
the path every later stage follows."""

from __future__ import annotations

import numpy as np

from face_helpers import load_astronaut, paste_face, psnr, textured_background
from lipsync.face import FaceDetector, estimate_alignment, lower_face_mask, paste_back, track_video, warp_to_crop
from lipsync.media import VideoWriter, iter_frames


def _process(frames, size=128):
    """Align each tracked face, 'regenerate' it unchanged, paste it back; keep no-face frames as is."""
    with FaceDetector() as det:
        for frame, face in track_video(frames, det):
            if face is None:
                yield frame.image, False
                continue
            M = estimate_alignment(face.smoothed_landmarks, size)
            crop = warp_to_crop(frame.image, M, size)
            yield paste_back(frame.image, crop, M, lower_face_mask(size)), True


def _write(path, images):
    with VideoWriter(str(path), fps=25, preset="ultrafast") as w:
        for img in images:
            w.write(img)


def test_video_without_any_face_passes_through_unchanged(tmp_path):
    src = tmp_path / "noface.mp4"
    _write(src, [np.roll(textured_background(180, 320, seed=3), 4 * i, axis=1) for i in range(20)])
    decoded = [f.image.copy() for f in iter_frames(src)]
    out = list(_process(iter_frames(src)))
    assert len(out) == 20 and not any(has for _, has in out)
    assert all(np.array_equal(a, b) for a, (b, _) in zip(decoded, out))
    _write(tmp_path / "out.mp4", (img for img, _ in out))
    assert sum(1 for _ in iter_frames(tmp_path / "out.mp4")) == 20


def test_face_missing_mid_clip_only_those_frames_untouched(tmp_path):
    photo = load_astronaut()
    images = []
    for i in range(24):
        img = textured_background(360, 640, seed=5)
        if not 8 <= i < 14:  # the face leaves the shot for six frames
            paste_face(img, photo, face_width=120, center=(300 + 2 * i, 180))
        images.append(img)
    src = tmp_path / "gap.mp4"
    _write(src, images)
    decoded = [f.image.copy() for f in iter_frames(src)]
    out = list(_process(iter_frames(src)))
    flags = [has for _, has in out]
    assert flags == [not 8 <= i < 14 for i in range(24)]
    for i, (img, has) in enumerate(out):
        if has:
            assert psnr(img, decoded[i]) >= 35
        else:
            assert np.array_equal(img, decoded[i])
