"""``lipsync eval``: lip-sync, mouth, temporal and reference metrics of one video (docs/eval.md).

One decoding pass over the video (and the reference, in step) tracks the face with the pipeline's
tracker, aligns crops with the pipeline's aligner (``lipsync.face.aligner.FaceAligner``: raw landmark
fits smoothed over time and registered on the upper face, so the SyncNet reads the crops inference
regenerates and training learns from), measures flicker outside the regenerated
region and compares with the reference; the SyncNet then scores every 5-frame window against the
speech shifted by -15..+15 frames.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import CorruptMediaError, MediaError, MediaNotFoundError, NoFaceError
from lipsync.eval import metrics as M
from lipsync.media.formats import FPS, SAMPLE_RATE

REPORT_VERSION = 1


@dataclass
class VideoAnalysis:
    """Per-frame measurements of one decoding pass (N = frames at 25 fps)."""

    video: str
    width: int
    height: int
    has_face: np.ndarray  # (N,) bool
    landmarks: np.ndarray  # (N, 478, 3) float32 raw mesh, NaN without a face
    boxes: np.ndarray  # (N, 4) mesh boxes, NaN without a face
    crops: np.ndarray  # (N, S, S, 3) uint8 aligned crops (zeros without a face)
    flicker: np.ndarray  # (N,) grey levels outside the regenerated region, NaN where undefined
    # per-frame arrays: ssim, psnr, ssim_lower, psnr_lower, psnr_outside and the fidelity measures
    # psnr_eyes, sharpness_ratio, colour_shift (NaN where undefined)
    reference: dict | None
    reference_frames: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.has_face)


def _regen_region(shape: tuple[int, int], matrix: np.ndarray | None, crop_mask: np.ndarray) -> np.ndarray:
    """Bool frame mask of the crop's regenerated region (grown by 2 px); all False without a face."""
    h, w = shape
    if matrix is None:
        return np.zeros((h, w), bool)
    m = cv2.warpAffine(crop_mask, matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(m, np.ones((5, 5), np.uint8)) > 0


def _reference_frames(reference: str):
    """The reference's frames at 25 fps; a still image stands for every frame (a dub of a photo)."""
    from lipsync.media.video import is_image_path, iter_frames

    if not is_image_path(os.fspath(reference)):
        yield from iter_frames(reference)
        return
    frame = next(iter_frames(reference))
    while True:
        yield frame


def analyze_video(video: str, reference: str | None = None, crop_size: int = 96, aspect: float = 1.0,
                  mask_top: float = 0.5, lower_size: int = 96) -> VideoAnalysis:
    """One pass over ``video`` (and ``reference`` in step): face track (largest face), aligned
    crops of ``crop_size`` px, flicker outside the regenerated region (the crop's rows below
    ``mask_top``), and SSIM / PSNR against the reference, whole frame and lower-face crop
    (``lower_size`` px crop, rows below ``mask_top``)."""
    from lipsync.face import FaceAligner, FaceDetector, lower_face_mask, track_video, warp_to_crop
    from lipsync.face.align import _resample_matrix
    from lipsync.media.video import is_image_path, iter_frames

    aligner = FaceAligner(crop_size, aspect)
    # The lower-face crop for the reference metrics: the same alignment at lower_size px.
    to_lower = _resample_matrix(lower_size / crop_size)

    crop_mask = lower_face_mask(crop_size, top=mask_top).astype(np.uint8)
    has_face, lms, boxes, crops, flicker = [], [], [], [], []
    ref_rows: dict[str, list] = {"ssim": [], "psnr": [], "ssim_lower": [], "psnr_lower": [], "psnr_outside": [],
                                 "psnr_eyes": [], "sharpness_ratio": [], "colour_shift": []}
    grays: list[np.ndarray] = []
    regions: list[np.ndarray] = []
    size = None
    ref_iter = _reference_frames(reference) if reference else None
    ref_done = False
    ref_count = 0
    frames = iter_frames(video)
    detector = FaceDetector(max_faces=8)
    try:
        tracked = track_video(frames, detector)
        for (fr, face), matrix in aligner.aligned(tracked, face_of=lambda t: t[1], index_of=lambda t: t[0].index,
                                                  image_of=lambda t: t[0].image):
            img = fr.image
            if size is None:
                size = (img.shape[1], img.shape[0])
            if face is not None:
                crops.append(aligner.crop(img, matrix))
                lm = np.asarray(face.landmarks, np.float32)
                if lm.shape[1] == 2:
                    lm = np.concatenate([lm, np.zeros((len(lm), 1), np.float32)], axis=1)
                lms.append(lm)
                boxes.append(np.asarray(face.bbox, np.float64))
            else:
                crops.append(np.zeros((crop_size, crop_size, 3), np.uint8))
                lms.append(np.full((478, 3), np.nan, np.float32))
                boxes.append(np.full(4, np.nan))
            has_face.append(face is not None)
            # Flicker of the previous frame, now that its successor is known.
            grays.append(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32))
            regions.append(_regen_region(img.shape[:2], matrix, crop_mask))
            if len(grays) == 3:
                outside = ~(regions[0] | regions[1] | regions[2])
                if outside.any():
                    d = np.abs(grays[1] - 0.5 * (grays[0] + grays[2]))
                    flicker.append(float(d[outside].mean()))
                else:
                    flicker.append(math.nan)
                grays.pop(0)
                regions.pop(0)
            # Reference, in step.
            if ref_iter is not None:
                ref = None if ref_done else next(ref_iter, None)
                if ref is None:
                    ref_done = True
                    for k in ref_rows:
                        ref_rows[k].append(math.nan)
                else:
                    ref_count += 1
                    rimg = ref.image
                    if rimg.shape != img.shape:
                        raise MediaError(str(reference), f"frames are {rimg.shape[1]}x{rimg.shape[0]} but the video's "
                                                         f"are {img.shape[1]}x{img.shape[0]}: a reference must have "
                                                         "the evaluated video's size")
                    ref_rows["ssim"].append(M.ssim(img, rimg))
                    ref_rows["psnr"].append(M.psnr(img, rimg))
                    # What a lip-sync model must leave alone: the frame minus its regenerated region.
                    outside = ~regions[-1]
                    ref_rows["psnr_outside"].append(M.psnr(img[outside], rimg[outside]) if outside.any() else math.nan)
                    if face is not None:
                        lm_matrix = (to_lower @ np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
                        r0 = int(round(mask_top * lower_size))
                        a = warp_to_crop(img, lm_matrix, lower_size)[r0:]
                        b = warp_to_crop(rimg, lm_matrix, lower_size)[r0:]
                        ref_rows["ssim_lower"].append(M.ssim(a, b))
                        ref_rows["psnr_lower"].append(M.psnr(a, b))
                        for k, v in M.fidelity(img, rimg, face.landmarks).items():
                            ref_rows[k].append(v)
                    else:
                        for k in ("ssim_lower", "psnr_lower", "psnr_eyes", "sharpness_ratio", "colour_shift"):
                            ref_rows[k].append(math.nan)
        if ref_iter is not None and not ref_done and not is_image_path(os.fspath(reference)):
            ref_count += sum(1 for _ in ref_iter)  # frames the reference has beyond the video
    finally:
        frames.close()
        if ref_iter is not None:
            ref_iter.close()
        detector.close()
    n = len(has_face)
    if n == 0:
        from lipsync.errors import EmptyMediaError

        raise EmptyMediaError(str(video), "holds no video frames")
    flick = np.full(n, np.nan)
    if flicker:
        flick[1:1 + len(flicker)] = flicker
    return VideoAnalysis(
        video=str(video), width=size[0], height=size[1], has_face=np.array(has_face, bool),
        landmarks=np.stack(lms), boxes=np.stack(boxes), crops=np.stack(crops), flicker=flick,
        reference=None if ref_iter is None else {k: np.array(v, np.float64) for k, v in ref_rows.items()},
        reference_frames=ref_count)


# ------------------------------------------------------------------------------------ ground truth


def load_ground_truth(path: str | os.PathLike) -> dict:
    """A synthetic clip's ground truth (``lipsync synth`` output): its ``meta.json`` (or the clip
    folder holding it) and the ``landmarks.npz`` beside it. Returns {"jaw": (N,), "landmarks":
    (N, 478, 2), "speech_active": (N,) or None, "meta": path}."""
    p = Path(os.fspath(path))
    meta_path = p / "meta.json" if p.is_dir() else p
    if not meta_path.is_file():
        raise MediaNotFoundError(str(meta_path), "ground truth not found (give a clip's meta.json or its folder)")
    try:
        meta = json.loads(meta_path.read_text())
        jaw = np.asarray(meta["mouth"]["jaw"], np.float64)
        lm_name = (meta.get("files") or {}).get("landmarks", "landmarks.npz")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CorruptMediaError(str(meta_path), f"not a ground-truth meta.json of `lipsync synth` "
                                                f"({type(err).__name__}: {err})") from err
    lm_path = meta_path.parent / lm_name
    if not lm_path.is_file():
        raise MediaNotFoundError(str(lm_path), "ground-truth landmarks not found (meta.json names this file)")
    try:
        with np.load(lm_path) as z:
            landmarks = np.asarray(z["landmarks"], np.float64)
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise CorruptMediaError(str(lm_path), f"unreadable ground-truth landmarks ({type(err).__name__})") from err
    if landmarks.ndim != 3 or landmarks.shape[1] < 468:
        raise CorruptMediaError(str(lm_path), f"landmarks must be shaped (frames, 478, 2), got {landmarks.shape}")
    active = meta.get("speech_active")
    return {"jaw": jaw, "landmarks": landmarks, "meta": str(meta_path),
            "speech_active": None if active is None else np.asarray(active, bool)}


# ------------------------------------------------------------------------------------ evaluate


def _speech_windows(active: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Windows at least half of whose frames are speech (voice activity)."""
    need = (window + 1) // 2
    return np.array([active[i:i + window].sum() >= need for i in starts], bool)


def sync_metrics(scorer, analysis: VideoAnalysis, samples: np.ndarray) -> tuple[dict | None, list[str]]:
    from lipsync.pipeline.inputs import voice_activity

    notes: list[str] = []
    w = scorer.window
    ok = analysis.has_face.astype(np.int64)
    if len(ok) < w:
        return None, [f"the video is shorter than one {w}-frame window: no sync metrics"]
    full = np.convolve(ok, np.ones(w, np.int64), mode="valid") == w
    a_emb = scorer.audio_embeddings(samples)
    starts = np.nonzero(full)[0]
    starts = starts[starts < len(a_emb) + max(M.SHIFTS)]
    if len(starts) == 0 or len(a_emb) == 0:
        return None, [f"no {w}-frame window with a face throughout and audio beside it: no sync metrics"]
    v_emb = scorer.video_embeddings(analysis, starts)
    dist = M.sync_distances(v_emb, starts, a_emb)
    res = M.lse(dist)
    offsets = M.window_offsets(dist)
    active = voice_activity(samples, analysis.num_frames)
    speech = _speech_windows(active, starts, w) & np.isfinite(offsets)
    n_speech = int(speech.sum())
    acc = float(100.0 * np.mean(np.abs(offsets[speech]) <= 1)) if n_speech else None
    if not n_speech:
        notes.append("no speech window (voice activity) was found: lip-sync accuracy is undefined")
    res.update({
        "model": scorer.name,
        "model_path": scorer.path,
        "window": w,
        "windows": int(len(starts)),
        "accuracy": acc,
        "speech_windows": n_speech,
    })
    return res, notes


def _series(x) -> list:
    return [None if v is None or not np.isfinite(v) else round(float(v), 5) for v in np.asarray(x, np.float64)]


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def evaluate(video: str, audio: str | None = None, reference: str | None = None, ground_truth: str | None = None,
             syncnet=None, out_dir: str | None = None, device: str = "cpu", profile: str = "tiny") -> dict:
    """Evaluate ``video`` against the speech ``audio`` (default: the video's own audio track).

    ``reference``: a video to compare with (SSIM / PSNR); ``ground_truth``: a synthetic clip's
    meta.json or folder (mouth-opening correlation, LMD); ``syncnet``: a SyncNet folder, the
    ``syncnet_v2.model`` file, a loaded model, or None for the bundled SyncNet; ``out_dir``:
    where to write ``report.json`` and the PNG plots. Returns the report (see docs/eval.md).
    Bad inputs raise the MediaError family ("<file>: <problem>"), bad weights CheckpointError.
    """
    import torch

    from lipsync.eval.sync import make_scorer
    from lipsync.face.landmarks import mouth_opening
    from lipsync.media.audio import load_audio
    from lipsync.pipeline.inputs import voice_activity
    from lipsync.profiles import load_profile

    video = os.fspath(video)
    audio = os.fspath(audio) if audio is not None else video
    prof = load_profile(profile)
    scorer = make_scorer(syncnet, torch.device(device) if device != "auto" else
                         torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    gt = load_ground_truth(ground_truth) if ground_truth is not None else None
    samples = load_audio(audio, SAMPLE_RATE)
    resolution = int(prof.resolution)
    analysis = analyze_video(video, reference, crop_size=scorer.crop_size or resolution,
                             aspect=float(prof.crop_aspect), mask_top=float((prof.mask or {}).get("top", 0.5)),
                             lower_size=resolution)
    n = analysis.num_frames
    if not analysis.has_face.any():
        raise NoFaceError(video, "no face found in any frame: nothing to evaluate")
    notes: list[str] = []
    missing = int((~analysis.has_face).sum())
    if missing:
        notes.append(f"{missing} of {n} frames have no face: they are left out of every face metric")
    audio_s, video_s = len(samples) / SAMPLE_RATE, n / FPS
    if abs(audio_s - video_s) > 1.0 / FPS:
        notes.append(f"the audio lasts {audio_s:.2f} s and the video {video_s:.2f} s: compared where both exist")

    sync, sync_notes = sync_metrics(scorer, analysis, samples)
    notes += sync_notes

    # Mouth.
    opening = np.array([mouth_opening(lm) if ok else np.nan for lm, ok in zip(analysis.landmarks, analysis.has_face)])
    energy = M.speech_energy_db(samples, n)
    active = voice_activity(samples, n)
    mouth = {
        "opening_mean": M.nanmean(opening),
        "r_speech_energy": M.pearson(opening, energy),
    }
    gt_open = gt_jaw = None
    if gt is not None:
        gt_jaw = gt["jaw"]
        gt_open = np.array([mouth_opening(lm) for lm in gt["landmarks"]])
        m = min(n, len(gt["landmarks"]))
        lmds = [M.lmd(analysis.landmarks[t], gt["landmarks"][t]) for t in range(m) if analysis.has_face[t]]
        mouth.update({
            "r_gt_jaw": M.pearson(opening, gt_jaw),
            "r_gt_landmarks": M.pearson(opening, gt_open),
            "lmd": M.nanmean(lmds) if lmds else None,
            "gt_frames": int(len(gt["landmarks"])),
        })
        if len(gt["landmarks"]) != n:
            notes.append(f"the ground truth has {len(gt['landmarks'])} frames and the video {n}: "
                         f"compared over the first {m}")

    # Temporal.
    jitter = M.landmark_jitter(analysis.landmarks)
    mjitter = M.mouth_jitter(analysis.landmarks)
    lower_change = M.lower_face_change(analysis.crops, analysis.has_face, float((prof.mask or {}).get("top", 0.5)))
    flicker = M.nanmean(analysis.flicker)
    jit = M.nanmean(jitter)
    temporal = {
        "score": M.temporal_score(flicker, jit),
        "flicker_outside": flicker,
        "landmark_jitter": jit,
        "mouth_jitter": M.nanmean(mjitter),
        "lower_face_change": M.nanmean(lower_change),
    }

    ref = None
    if analysis.reference is not None:
        r = analysis.reference
        ref = {
            "ssim": M.nanmean(r["ssim"]), "psnr": M.nanmean(r["psnr"]),
            "ssim_lower_face": M.nanmean(r["ssim_lower"]), "psnr_lower_face": M.nanmean(r["psnr_lower"]),
            "psnr_outside": M.nanmean(r["psnr_outside"]),
            # fidelity to the input: eyes untouched, lower face as sharp and of the same colour
            "psnr_eyes": M.nanmean(r["psnr_eyes"]),
            "sharpness_ratio_lower_face": M.nanmean(r["sharpness_ratio"]),
            "colour_shift_lower_face": M.nanmean(r["colour_shift"]),
            "frames_compared": int(np.isfinite(r["ssim"]).sum()),
            "reference_frames": int(analysis.reference_frames),
        }
        if analysis.reference_frames != n:
            notes.append(f"the reference has {analysis.reference_frames} frames and the video {n}: "
                         "compared over the common ones")

    report = {
        "version": REPORT_VERSION,
        "video": video, "audio": audio, "reference": reference,
        "ground_truth": gt["meta"] if gt else None,
        "fps": FPS, "frames": n, "frames_with_face": int(analysis.has_face.sum()),
        "width": analysis.width, "height": analysis.height,
        "audio_seconds": round(audio_s, 4),
        "sync": sync,
        "mouth": mouth,
        "temporal": temporal,
        "reference_metrics": ref,
        "notes": notes,
        "series": {
            "mouth_opening": _series(opening),
            "speech_energy_db": _series(energy),
            "speech_active": [bool(v) for v in active],
            "gt_jaw": None if gt_jaw is None else _series(gt_jaw),
            "gt_mouth_opening": None if gt_open is None else _series(gt_open),
            "flicker": _series(analysis.flicker),
            "landmark_jitter": _series(jitter),
            "lower_face_change": _series(lower_change),
        },
    }
    report = _clean(report)
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``report.json`` and the plots into ``out_dir``; records their paths in ``report["files"]``."""
    from lipsync.eval.plots import plot_mouth, plot_offset_curve
    from lipsync.media.uri import write_bytes

    out = os.fspath(out_dir)
    files = {"report": os.path.join(out, "report.json")}
    if report.get("sync"):
        files["offset_curve"] = os.path.join(out, "offset_curve.png")
        plot_offset_curve(report, files["offset_curve"])
    files["mouth_vs_energy"] = os.path.join(out, "mouth_vs_energy.png")
    plot_mouth(report, files["mouth_vs_energy"])
    report["files"] = files
    write_bytes(files["report"], (json.dumps(report, indent=1, allow_nan=False) + "\n").encode())
    return report


def summary_lines(report: dict) -> list[str]:
    """Human-readable lines for the command line."""
    def f(v, fmt="{:.3f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = []
    s = report.get("sync")
    if s:
        lines.append(f"LSE-D {f(s['lse_d'])}  LSE-C {f(s['lse_c'])}  offset {s['offset']:+d} frames "
                     f"({s['model']}, {s['windows']} windows)")
        lines.append(f"lip-sync accuracy {f(s['accuracy'], '{:.1f}')} % of {s['speech_windows']} speech windows "
                     "within +-1 frame")
    m = report["mouth"]
    line = f"mouth opening vs speech energy r {f(m.get('r_speech_energy'))}"
    if "r_gt_jaw" in m:
        line += (f"; vs ground-truth jaw r {f(m['r_gt_jaw'])}, vs ground-truth landmarks r "
                 f"{f(m['r_gt_landmarks'])}; LMD {f(m['lmd'], '{:.4f}')}")
    lines.append(line)
    t = report["temporal"]
    lines.append(f"temporal consistency {f(t['score'], '{:.1f}')} / 100 (flicker {f(t['flicker_outside'])} grey "
                 f"levels, landmark jitter {f(t['landmark_jitter'], '{:.4f}')})")
    r = report.get("reference_metrics")
    if r:
        lines.append(f"vs reference: SSIM {f(r['ssim'], '{:.4f}')}  PSNR {f(r['psnr'], '{:.2f}')} dB; lower face "
                     f"SSIM {f(r['ssim_lower_face'], '{:.4f}')}  PSNR {f(r['psnr_lower_face'], '{:.2f}')} dB")
        lines.append(f"fidelity: eye-region PSNR {f(r.get('psnr_eyes'), '{:.2f}')} dB; lower face sharpness "
                     f"{f(r.get('sharpness_ratio_lower_face'))}x the reference's, colour shift dE "
                     f"{f(r.get('colour_shift_lower_face'), '{:.2f}')}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return lines
