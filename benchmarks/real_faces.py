"""Fidelity and lip sync on held-out real people (the faces-kit's ``heldout`` split), each dubbed with
held-out speech of another person:

* portraits: the photo driven by the speech;
* talking clips: the clip driven by the speech (no longer than the clip, so nothing loops), its
  own speech giving the LSE-C it is compared with.

Measured against the input (lipsync eval's fidelity measures, docs/eval.md): eye-region PSNR,
lower-face sharpness ratio and colour shift; mouth opening against the new speech's energy; LSE-C
and offset. Bars (issue "real people"): eyes >= 38 dB, sharpness >= 0.8, dE <= 3, mouth r >= 0.25,
LSE-C >= 0.8 x the clips' own, offset within +-1.

    .venv/bin/python benchmarks/real_faces.py --mirror ../shared/data/faces-kit \\
        [--portraits 8] [--talking 6] [--seconds 3] [--checkpoint_dir DIR] [--composite person|person_warp|latentsync] \\
        [--syncnet DIR] [--out out/real_faces]

Writes real_faces.json, one eval report per video and grid.png (input | output, full frame and a
face zoom, for the first three people) under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from lipsync.options import COMPOSITE_MODES

BARS = {"psnr_eyes": 38.0, "sharpness_ratio": 0.8, "colour_shift": 3.0, "mouth_r": 0.25, "lse_c_ratio": 0.8,
        "offset_abs": 1}
MAX_SIDE = 720  # big photos are scaled down first: a 3.5k portrait costs minutes of face tracking


def prepare_portrait(src: Path, dest: Path) -> Path:
    """The photo at most MAX_SIDE px on its long side, with even sides (the encoder's yuv420 needs
    them), so the output and the reference have the same size."""
    import cv2

    from lipsync.media.video import read_image

    img = read_image(str(src))
    h, w = img.shape[:2]
    k = min(1.0, MAX_SIDE / max(h, w))
    nw, nh = int(w * k) // 2 * 2, int(h * k) // 2 * 2
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA) if (nw, nh) != (w, h) else img
    cv2.imwrite(str(dest), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return dest


def cut_speech(src: Path, dest: Path, seconds: float) -> Path:
    import soundfile as sf

    from lipsync.media.audio import load_audio

    samples = load_audio(str(src), 16000)
    sf.write(str(dest), samples[: int(seconds * 16000)], 16000)
    return dest


def face_zoom(frame: np.ndarray, size: int = 256) -> np.ndarray:
    import cv2

    from lipsync.face import FaceDetector

    with FaceDetector() as det:
        faces = det.detect(frame)
    if not faces:
        return cv2.resize(frame, (size, size))
    lm = max(faces, key=lambda f: f.bbox[2] - f.bbox[0]).landmarks
    x0, y0 = lm[:, 0].min(), lm[:, 1].min()
    x1, y1 = lm[:, 0].max(), lm[:, 1].max()
    c, r = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), 0.6 * max(x1 - x0, y1 - y0)
    h, w = frame.shape[:2]
    a0, b0 = int(max(0, c[0] - r)), int(max(0, c[1] - r))
    a1, b1 = int(min(w, c[0] + r)), int(min(h, c[1] + r))
    return cv2.resize(frame[b0:b1, a0:a1], (size, size), interpolation=cv2.INTER_CUBIC)


def save_grid(path: Path, pairs: list[tuple[str, str]], t: float = 1.6) -> None:
    """One row per (input, output): input | output scaled to 256 px high, then both face zooms."""
    import cv2

    from lipsync.media.video import is_image_path, read_image, sample_frames

    rows = []
    for inp, outp in pairs:
        a = read_image(inp) if is_image_path(inp) else sample_frames(inp, [t])[0].image
        b = sample_frames(outp, [t])[0].image
        full = [cv2.resize(x, (int(x.shape[1] * 256 / x.shape[0]), 256), interpolation=cv2.INTER_AREA) for x in (a, b)]
        rows.append(np.concatenate(full + [face_zoom(a), face_zoom(b)], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


@contextlib.contextmanager
def recording(path: Path | None):
    """While open, every call of the person composite is recorded (in frame order) and saved to
    ``path`` as arrays: ``images`` (source frames), ``crops``, ``matrices``, ``points``, ``regen``."""
    if path is None:
        yield
        return
    from lipsync.pipeline import stages

    real, calls, regens = stages.composite_person, [], []

    def record(image, crop, M, points, regen=None, **kw):
        calls.append((image, crop, np.asarray(M, np.float64), np.asarray(points, np.float32)))
        regens[:] = [regen]
        return real(image, crop, M, points, regen, **kw)

    stages.composite_person = record
    try:
        yield
    finally:
        stages.composite_person = real
    if calls:
        path.parent.mkdir(parents=True, exist_ok=True)
        regen = regens[0] if regens else None
        np.savez_compressed(path, images=np.stack([c[0] for c in calls]), crops=np.stack([c[1] for c in calls]),
                            matrices=np.stack([c[2] for c in calls]), points=np.stack([c[3] for c in calls]),
                            regen=np.asarray(regen if regen is not None else [], np.float32))


def get(rep: dict | None, *keys):
    for k in keys:
        rep = None if rep is None else rep.get(k)
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", default=None, help="faces-kit mirror folder (else the cache / the sources)")
    ap.add_argument("--portraits", type=int, default=8)
    ap.add_argument("--talking", type=int, default=6, help="talking clips (one per held-out person)")
    ap.add_argument("--seconds", type=float, default=3.0, help="speech per dub, seconds")
    ap.add_argument("--checkpoint_dir", default=None, help="a model folder (model_index.json); default: bundled")
    ap.add_argument("--composite", default=None, choices=COMPOSITE_MODES, help="default: the profile's")
    ap.add_argument("--syncnet", default=None, help="SyncNet folder for the scores; default: bundled")
    ap.add_argument("--out", default="out/real_faces")
    ap.add_argument("--keep_crops", action="store_true",
                    help="also save each dub's composite inputs (frame, generated crop, matrix, crop points) as "
                         "<out>/crops/<stem>.npz, for benchmarks/composite_variants.py")
    ap.add_argument("--reuse", action="store_true",
                    help="keep dubs already in --out (e.g. to score them again with another --syncnet)")
    args = ap.parse_args()

    from lipsync.data import kit
    from lipsync.eval import evaluate
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline

    out = Path(args.out)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    entries = kit.load_manifest()
    held = kit.select(entries, split="heldout")
    local = dict(zip((e.file for e in held), kit.fetch(held, mirror=args.mirror).paths))
    speech = [e for e in held if e.kind == "speech" and e.language == "en"] or \
        [e for e in held if e.kind == "speech"]
    talking, seen = [], set()
    for e in sorted((e for e in held if e.kind == "talking"), key=lambda e: -float(e.avsync_proxy or 0)):
        if e.identity not in seen:  # one clip per person
            seen.add(e.identity)
            talking.append(e)
    faces = [e for e in held if e.kind == "portrait"][: args.portraits] + talking[: args.talking]

    ckpt = args.checkpoint_dir
    if ckpt and (Path(ckpt) / "model_index.json").exists():
        pipe = LipSyncPipeline.from_pretrained(ckpt, device="cpu")
    else:
        pipe = LipSyncPipeline.from_profile("tiny", checkpoint_dir=ckpt, device="cpu")
    opts = GenerateOptions(composite=args.composite or None)

    rows, grid, t_gen = [], [], 0.0
    for k, face in enumerate(faces):
        voice = next(s for j, s in enumerate(speech * 2) if j >= k % len(speech) and s.identity != face.identity)
        stem = Path(face.file).stem
        seconds = args.seconds
        if face.kind == "talking":
            seconds = min(seconds, float(face.duration_s or seconds) - 0.2)
        wav = cut_speech(local[voice.file], out / "inputs" / f"{stem}_speech.wav", seconds)
        dub = out / f"dub_{stem}.mp4"
        t0 = time.perf_counter()
        if face.kind == "portrait":
            src = str(prepare_portrait(local[face.file], out / "inputs" / f"{stem}.png"))
        else:
            src = str(local[face.file])
        if not (args.reuse and dub.exists()):
            with recording(out / "crops" / f"{stem}.npz" if args.keep_crops else None):
                if face.kind == "portrait":
                    pipe(str(dub), image=src, audio=str(wav), options=opts)
                else:
                    pipe(str(dub), video=src, audio=str(wav), options=opts)
        t_gen += time.perf_counter() - t0
        rep = evaluate(str(dub), audio=str(wav), reference=src, syncnet=args.syncnet,
                       out_dir=str(out / "reports" / stem), profile=pipe.profile.name)
        row = {"face": face.file, "kind": face.kind, "identity": face.identity, "speech": voice.file,
               "seconds": round(seconds, 2),
               "psnr_eyes": get(rep, "reference_metrics", "psnr_eyes"),
               "sharpness_ratio": get(rep, "reference_metrics", "sharpness_ratio_lower_face"),
               "colour_shift": get(rep, "reference_metrics", "colour_shift_lower_face"),
               "psnr_outside": get(rep, "reference_metrics", "psnr_outside"),
               "mouth_r": get(rep, "mouth", "r_speech_energy"),
               "lse_c": get(rep, "sync", "lse_c"), "offset": get(rep, "sync", "offset")}
        if face.kind == "talking":
            own = evaluate(src, syncnet=args.syncnet, out_dir=str(out / "reports" / f"own_{stem}"),
                           profile=pipe.profile.name)
            row["own_lse_c"], row["own_offset"] = get(own, "sync", "lse_c"), get(own, "sync", "offset")
            row["own_mouth_r"] = get(own, "mouth", "r_speech_energy")
        rows.append(row)
        if len(grid) < 3:
            grid.append((src, str(dub)))
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    def mean(key, kind=None):
        v = [r[key] for r in rows if r.get(key) is not None and (kind is None or r["kind"] == kind)]
        return float(np.mean(v)) if v else None

    summary = {k: mean(k) for k in ("psnr_eyes", "sharpness_ratio", "colour_shift", "psnr_outside", "mouth_r")}
    summary["talking_lse_c"], summary["talking_own_lse_c"] = mean("lse_c", "talking"), mean("own_lse_c", "talking")
    summary["portrait_lse_c"] = mean("lse_c", "portrait")
    summary["lse_c_ratio"] = (summary["talking_lse_c"] / summary["talking_own_lse_c"]
                              if summary["talking_lse_c"] is not None and summary["talking_own_lse_c"] else None)
    offsets = [r["offset"] for r in rows if r["kind"] == "talking" and r["offset"] is not None]
    checks = {
        "eye-region PSNR >= 38 dB": (summary["psnr_eyes"] or 0) >= BARS["psnr_eyes"],
        "lower-face sharpness ratio >= 0.8": (summary["sharpness_ratio"] or 0) >= BARS["sharpness_ratio"],
        "colour shift dE <= 3": (summary["colour_shift"] if summary["colour_shift"] is not None else 99) <= BARS["colour_shift"],
        "mouth opening r vs the new speech >= 0.25": (summary["mouth_r"] or -1) >= BARS["mouth_r"],
        "LSE-C >= 0.8 x the clips' own": (summary["lse_c_ratio"] or 0) >= BARS["lse_c_ratio"],
        "offset within +-1 (every clip)": bool(offsets) and all(abs(o) <= BARS["offset_abs"] for o in offsets),
    }
    if grid:
        save_grid(out / "grid.png", grid)
    result = {"checkpoint_dir": ckpt or "bundled", "composite": pipe.profile.composite,
              "syncnet": args.syncnet or "bundled", "rows": rows, "mean": summary, "bars": checks,
              "generate_seconds": t_gen}
    (out / "real_faces.json").write_text(json.dumps(result, indent=1))
    print(f"\nmeans over {len(rows)} dubs ({pipe.profile.composite} composite):")
    for k, v in summary.items():
        print(f"  {k:20s} {v:.3f}" if v is not None else f"  {k:20s} -")
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISS'}] {k}")
    print(f"generation: {t_gen:.0f} s; written {out / 'real_faces.json'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
