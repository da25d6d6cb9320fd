"""`lipsync eval`: the metrics on constructed inputs, the report on a synthetic clip with known
ground truth, the command line, and clear errors for bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval_helpers import TEST_SYNCNET, one_thread, render
from lipsync.cli import main
from lipsync.errors import CheckpointError, CorruptMediaError, MediaError, MediaNotFoundError
from lipsync.eval import metrics as M


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """A 4-s synthetic clip at 192 px (mediapipe measures the mouth well from ~190 px up) and a
    SyncNet folder with random weights (the LSE numbers are then meaningless; test_syncnet.py
    checks them with a trained one)."""
    from lipsync.models.syncnet import SyncNet, SyncNetConfig

    root = tmp_path_factory.mktemp("eval_clip")
    d = render(root, "clip", seed=504, seconds=4.0, size=192)
    torch.manual_seed(0)
    SyncNet(SyncNetConfig(**TEST_SYNCNET)).save_pretrained(root / "syncnet")
    return {"dir": d, "video": str(d / "video.mp4"), "audio": str(d / "audio.wav"), "syncnet": str(root / "syncnet")}


@pytest.fixture(scope="session")
def report(clip, tmp_path_factory):
    from lipsync.eval import evaluate

    out = tmp_path_factory.mktemp("eval_out")
    with one_thread():
        rep = evaluate(clip["video"], clip["audio"], reference=clip["video"], ground_truth=str(clip["dir"]),
                       syncnet=clip["syncnet"], out_dir=str(out))
    return rep


# ---------------------------------------------------------------------------- metrics alone


def test_lse_sign_convention_and_window_offsets():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 8))
    # Audio late by 3 frames: video window i matches audio window i + 3.
    v = a[3:53] + 0.01 * rng.standard_normal((50, 8))
    starts = np.arange(50)
    dist = M.sync_distances(v, starts, a)
    assert dist.shape == (50, 31) and np.isnan(dist[0, 0]) and np.isfinite(dist[20]).all()
    res = M.lse(dist)
    assert res["offset"] == -3  # negative: the audio comes late
    assert res["lse_d"] < 0.1 and res["lse_c"] > 1.0
    assert res["confidence_at_0"] < 0.2 * res["lse_c"]
    assert res["curve"][res["offsets"].index(-3)] == pytest.approx(res["lse_d"])
    per_window = M.window_offsets(dist)
    assert np.nanmax(np.abs(per_window + 3)) == 0 and np.isnan(per_window[0])  # no shift -1 at frame 0


def test_image_metrics():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    assert M.ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    assert M.psnr(img, img) == M.PSNR_CAP_DB
    brighter = np.clip(img.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    mse = np.mean((brighter.astype(float) - img) ** 2)
    assert M.psnr(img, brighter) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    noisy = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    smooth = np.full_like(img, 128)
    assert 0.0 < M.ssim(img, noisy) < 0.95 and M.ssim(img, smooth) < M.ssim(img, noisy)
    with pytest.raises(ValueError, match="shape"):
        M.ssim(img, img[:10])


def test_landmark_metrics():
    assert M.pearson([1, 2, 3, np.nan, 5], [2, 4, 6, 100, 10]) == pytest.approx(1.0)
    assert M.pearson([1, 1, 1], [1, 2, 3]) is None
    line = np.arange(10.0)[:, None, None] * np.ones((1, 4, 2))  # 4 points moving steadily
    assert np.nanmax(M.second_difference(line)) == 0.0  # steady motion is not jitter
    lm = np.random.default_rng(2).normal(0, 1, (5, 478, 2)) + np.array([100.0, 100.0])
    lm[:, [33, 263]] = [[60.0, 80.0], [140.0, 80.0]]
    assert M.lmd(lm[0], lm[0]) == 0.0
    # LMD does not care where the face is or how large: a moved, scaled copy is at distance 0.
    assert M.lmd(lm[0] * 1.7 + 30, lm[0]) == pytest.approx(0.0, abs=1e-9)
    assert M.temporal_score(0.0, 0.0) == 100.0
    assert M.temporal_score(8.0, 0.1) == pytest.approx(100 * math.exp(-2))


def test_windows_leave_out_frames_without_a_face():
    from lipsync.eval.evaluator import VideoAnalysis, sync_metrics

    class Fake:
        name, window, path = "fake", 5, ""

        def audio_embeddings(self, samples):
            return np.eye(40)[:36]  # audio window j -> one-hot j

        def video_embeddings(self, analysis, starts):
            self.starts = starts
            return np.eye(40)[starts]  # in sync

    has_face = np.ones(40, bool)
    has_face[[10, 11]] = False
    an = VideoAnalysis("v", 64, 64, has_face, None, None, None, None, None)
    fake = Fake()
    rng = np.random.default_rng(0)
    res, _ = sync_metrics(fake, an, (rng.standard_normal(16000 * 40 // 25) * 0.1).astype(np.float32))
    assert not any(s <= 11 and s + 5 > 10 for s in fake.starts)
    assert res["windows"] == len(fake.starts) == 36 - 6
    assert res["offset"] == 0 and res["lse_d"] == 0.0


# ---------------------------------------------------------------------------- a synthetic clip


def test_report_on_a_clip_with_known_ground_truth(report):
    m = report["mouth"]
    print("\nmouth:", {k: round(v, 3) for k, v in m.items() if isinstance(v, float)},
          "\ntemporal:", report["temporal"], "\nreference:", report["reference_metrics"])
    assert report["frames"] == 100 and report["frames_with_face"] == 100
    assert m["r_gt_jaw"] > 0.6 and m["r_gt_landmarks"] > 0.6
    assert m["lmd"] < 0.06
    ref = report["reference_metrics"]
    assert ref["ssim"] == pytest.approx(1.0) and ref["ssim_lower_face"] == pytest.approx(1.0)
    assert ref["psnr"] == ref["psnr_lower_face"] == M.PSNR_CAP_DB
    assert ref["psnr_eyes"] == M.PSNR_CAP_DB and ref["colour_shift_lower_face"] == pytest.approx(0.0)
    assert ref["sharpness_ratio_lower_face"] == pytest.approx(1.0)
    assert ref["frames_compared"] == 100
    t = report["temporal"]
    assert 70 < t["score"] <= 100 and t["flicker_outside"] < 2 and t["landmark_jitter"] < 0.02
    s = report["sync"]
    assert s["model"] == "syncnet" and s["windows"] == 96 and -15 <= s["offset"] <= 15
    assert len(s["curve"]) == 31 and s["lse_c"] >= 0 and 0 <= s["accuracy"] <= 100
    assert s["speech_windows"] > 30
    # Files: strict JSON (no NaN / Infinity) equal to the returned report, and real PNGs.
    files = report["files"]
    saved = json.loads(open(files["report"]).read(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert saved == json.loads(json.dumps(report))
    for key in ("offset_curve", "mouth_vs_energy"):
        data = open(files[key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli_eval(clip, tmp_path, capsys):
    with one_thread():
        rc = main(["eval", "--video", clip["video"], "--syncnet", clip["syncnet"], "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "LSE-D" in out and "LSE-C" in out and "temporal consistency" in out and "report.json" in out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["audio"] == clip["video"] and rep["reference_metrics"] is None and "r_gt_jaw" not in rep["mouth"]
    assert (tmp_path / "o" / "offset_curve.png").is_file() and (tmp_path / "o" / "mouth_vs_energy.png").is_file()


def test_bad_inputs_give_one_clear_line(clip, tmp_path, capsys):
    from lipsync.eval import evaluate

    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(MediaError) as err:
        evaluate(str(corrupt), clip["audio"], syncnet=clip["syncnet"])
    assert str(err.value).startswith(f"{corrupt}: ")
    rc = main(["eval", "--video", str(corrupt), "--audio", clip["audio"], "--syncnet", clip["syncnet"]])
    captured = capsys.readouterr()
    assert rc == 1 and captured.err.startswith(f"error: {corrupt}: ") and captured.err.count("\n") == 1
    with pytest.raises(MediaNotFoundError, match="missing.wav"):
        evaluate(clip["video"], str(tmp_path / "missing.wav"), syncnet=clip["syncnet"])
    bad_meta = tmp_path / "meta.json"
    bad_meta.write_text("{not json")
    with pytest.raises(CorruptMediaError, match="meta.json: not a ground-truth"):
        evaluate(clip["video"], clip["audio"], ground_truth=str(bad_meta), syncnet=clip["syncnet"])
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(clip["video"], clip["audio"], syncnet=str(tmp_path / "no_syncnet"))


def test_default_syncnet_is_the_bundled_one_or_a_clear_error():
    from lipsync.eval.sync import BUNDLED_SYNCNET, default_syncnet_path

    if (BUNDLED_SYNCNET / "config.json").is_file():
        assert default_syncnet_path() == BUNDLED_SYNCNET
    else:
        with pytest.raises(CheckpointError, match="--syncnet DIR"):
            default_syncnet_path()


def test_syncnet_v2_scorer_inputs(clip):
    """SyncNet v2's side of the evaluator: syncnet_python's face crop geometry, and window
    embeddings from the clip (two video windows only: its 3-D convs are slow on a CPU)."""
    from lipsync.eval.evaluator import VideoAnalysis
    from lipsync.eval.sync import V2Scorer, v2_crop, v2_crop_boxes
    from lipsync.media.audio import load_audio
    from lipsync.models.syncnet import SyncNetV2
    from lipsync.synth.corpus import load_landmarks

    image = np.zeros((200, 300, 3), np.uint8)
    image[99:102, 149:152] = (255, 0, 0)  # a red dot at the box centre (150, 100)
    crop = v2_crop(image, 150.0, 100.0, 80.0)  # half-size 80: the crop is 224 px of the frame, scale 1
    red = crop[..., 2].astype(float) * (crop[..., 1] < 100)  # BGR: red is channel 2; grey padding excluded
    ys, xs = np.mgrid[:224, :224]
    assert crop.shape == (224, 224, 3) and (crop[-1] == 110).all()  # below the frame: grey 110
    cx, cy = (xs * red).sum() / red.sum(), (ys * red).sum() / red.sum()
    assert cx == pytest.approx(112, abs=0.1) and cy == pytest.approx(80, abs=0.1)  # row 0 is cy - s
    boxes = np.array([[10, 10, 50, 60]] * 6 + [[np.nan] * 4] + [[20, 10, 60, 60]] * 3, np.float64)
    has = np.isfinite(boxes[:, 0])
    smooth = v2_crop_boxes(boxes, has)
    assert np.isnan(smooth[6]).all() and smooth[0].tolist() == [30.0, 35.0, 25.0] and smooth[8, 0] == 40.0

    lm = load_landmarks(clip["dir"])
    gt_boxes = np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1)
    an = VideoAnalysis(clip["video"], 192, 192, np.ones(len(lm), bool), None, gt_boxes, None, None, None)
    torch.manual_seed(0)
    scorer = V2Scorer(SyncNetV2())
    with one_thread():
        v = scorer.video_embeddings(an, np.array([0, 1]))
        a = scorer.audio_embeddings(load_audio(clip["audio"]))
    assert v.shape == (2, 1024) and np.isfinite(v).all()
    assert a.shape == ((1 + int(np.ceil((64000 - 400) / 160)) - 20) // 4 + 1, 1024)


def test_psnr_outside_and_lower_face_change_see_only_the_mouth_edit(clip, tmp_path, media_kit):
    """A copy of the clip whose mouth and chin are painted grey: the lower-face crop differs from
    the original, the rest of the frame does not (only the codec lowers PSNR outside), and the
    per-frame lower-face change is finite wherever two consecutive frames have a face."""
    from lipsync.eval import evaluate
    from lipsync.eval.evaluator import analyze_video
    from lipsync.media.video import iter_frames

    n = 30
    frames = [f.image for _, f in zip(range(n), iter_frames(clip["video"]))]
    with one_thread():
        boxes = analyze_video(clip["video"]).boxes[:n]

    def painted(i):
        img = frames[i].copy()
        x0, y0, x1, y1 = boxes[i]
        w, h = x1 - x0, y1 - y0
        img[int(y0 + 0.78 * h):int(y1), int(x0 + 0.3 * w):int(x1 - 0.3 * w)] = 128
        return img

    edited = media_kit.write_video(tmp_path / "edited.mp4", n, 25, size=frames[0].shape[:2], frame_fn=painted)
    with one_thread():
        rep = evaluate(edited, clip["audio"], reference=clip["video"], syncnet=clip["syncnet"])
    ref = rep["reference_metrics"]
    print("\nreference:", ref)
    assert ref["frames_compared"] == n
    assert ref["psnr_lower_face"] < 30 and ref["ssim_lower_face"] < 0.95
    assert ref["psnr_outside"] > 38 and ref["psnr_outside"] > ref["psnr"] + 5 > ref["psnr_lower_face"] + 10
    # The fidelity measures see the grey patch's colour on the lower face and nothing at the eyes (its
    # hard edges add Laplacian energy, so the sharpness ratio says little here: 1.07).
    assert ref["psnr_eyes"] > 38 and ref["colour_shift_lower_face"] > 2
    change = rep["series"]["lower_face_change"]
    assert change[0] is None and all(c is not None and c >= 0 for c in change[1:])
    assert rep["temporal"]["lower_face_change"] > 0


def test_a_still_image_is_the_reference_of_every_frame(tmp_path, media_kit):
    """A dubbed photo is compared with the photo: each frame against the image."""
    import cv2

    from face_helpers import load_astronaut
    from lipsync.eval import evaluate

    img = load_astronaut()
    img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    video = media_kit.write_video(tmp_path / "still.mp4", 8, 25, size=img.shape[:2], frame_fn=lambda i: img,
                                  audio=media_kit.sine(8 / 25, 16000))
    with one_thread():
        rep = evaluate(video, reference=str(photo), out_dir=None)
    ref = rep["reference_metrics"]
    assert ref["frames_compared"] == 8 and ref["reference_frames"] == 8
    assert ref["psnr_eyes"] > 38 and ref["colour_shift_lower_face"] < 1.5
    assert 0.8 < ref["sharpness_ratio_lower_face"] < 1.2
