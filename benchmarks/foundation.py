"""Foundation figures on this machine: decode / encode / face-mesh frames per second, corpus
rendering seconds per clip, and the corpus quality bars (face-detection rate, mouth correlation).

    .venv/bin/python benchmarks/foundation.py [--clips 4] [--seconds 4] [--out out/bench]

Prints a table and writes out/bench/foundation.json. Figures, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bench_codec(out: Path) -> dict:
    from lipsync.media import VideoWriter, iter_frames

    rng = np.random.default_rng(0)
    h, w, n = 1080, 1920, 120
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        img = np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1), np.uint8))
        frames.append(img)
    res = {}
    for preset in ("ultrafast", "veryfast"):
        path = out / f"enc_{preset}.mp4"
        t0 = time.perf_counter()
        with VideoWriter(str(path), fps=25, preset=preset) as wr:
            for f in frames:
                wr.write(f)
        res[f"encode_1080p_{preset}_fps"] = rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    count = sum(1 for _ in iter_frames(str(out / "enc_veryfast.mp4")))
    res["decode_1080p_rgb_fps"] = rate(count, time.perf_counter() - t0)
    return res


def bench_face(frames_512: list[np.ndarray], wide: np.ndarray) -> dict:
    from lipsync.face import FaceDetector

    res = {}
    with FaceDetector() as det:
        det.detect(frames_512[0])
        t0 = time.perf_counter()
        faces = [det.detect(f) for f in frames_512]
        res["detect_mesh_512_fps"] = rate(len(frames_512), time.perf_counter() - t0)
        prev = faces[0][0]
        t0 = time.perf_counter()
        for f in frames_512:
            prev = det.refine(f, prev) or prev
        res["refine_mesh_512_fps"] = rate(len(frames_512), time.perf_counter() - t0)
        det.detect(wide)
        t0 = time.perf_counter()
        for _ in range(5):
            found = det.detect(wide)
        res["detect_mesh_1080p_multi_fps"] = rate(5, time.perf_counter() - t0)
        res["detect_1080p_multi_faces_found"] = len(found)
    return res


def bench_corpus(out: Path, clips: int, seconds: float) -> dict:
    from lipsync.face import FaceDetector, mouth_opening
    from lipsync.media import iter_frames
    from lipsync.synth.corpus import load_meta, make_clip

    per_clip, rates, rs = [], [], []
    for i in range(clips):
        d = out / f"clip_{i}"
        t0 = time.perf_counter()
        make_clip(d, seed=1000 + i, seconds=seconds, size=256)
        per_clip.append(time.perf_counter() - t0)
        meta = load_meta(d)
        jaw = np.array(meta["mouth"]["jaw"])
        opening = []
        with FaceDetector(max_faces=1) as det:
            for fr in iter_frames(str(d / "video.mp4")):
                faces = det.detect(fr.image)
                opening.append(mouth_opening(faces[0].landmarks) if faces else np.nan)
        opening = np.array(opening)
        ok = np.isfinite(opening)
        rates.append(float(ok.mean()))
        rs.append(float(np.corrcoef(jaw[ok], opening[ok])[0, 1]))
        print(f"  clip {i}: {meta['lang']} {meta['identity']} render {per_clip[-1]:.1f} s, "
              f"face found {rates[-1]:.1%}, mouth r = {rs[-1]:.3f}")
    return {"corpus_seconds_per_clip": float(np.mean(per_clip)), "corpus_clip_seconds": seconds,
            "corpus_face_detection_rate_min": float(min(rates)), "corpus_mouth_r_min": float(min(rs)),
            "corpus_mouth_r_mean": float(np.mean(rs))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", default="out/bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import cv2

    from lipsync.synth.identity import load_photo

    photo = load_photo("bundled:astronaut.jpg")
    frames_512 = [np.roll(photo, i, axis=1) for i in range(30)]
    wide = np.full((1080, 1920, 3), 90, np.uint8)
    wide[:] = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8), (0, 0), 5)
    for k, (x, y, s) in enumerate([(100, 300, 1.0), (700, 200, 0.5), (1200, 500, 0.25), (1600, 100, 0.7)]):
        face = cv2.resize(photo[40:240, 130:330], None, fx=s * 1.5, fy=s * 1.5)
        wide[y: y + face.shape[0], x: x + face.shape[1]] = face
    results = {}
    print("codec ...")
    results.update(bench_codec(out))
    print("face ...")
    results.update(bench_face(frames_512, wide))
    print("corpus ...")
    results.update(bench_corpus(out, args.clips, args.seconds))
    (out / "foundation.json").write_text(json.dumps(results, indent=2))
    for k, v in results.items():
        print(f"{k:40s} {v:10.3f}" if isinstance(v, float) else f"{k:40s} {v!s:>10}")


if __name__ == "__main__":
    main()
