"""Quality of a lip-sync model on held-out synthetic clips, against the bars of the bundled model
(lipsync/assets/models/tiny/MODEL_CARD.md):

* dubbing (clip A's video driven by clip B's speech): mouth opening vs B's ground-truth jaw
  (Pearson r >= 0.6; A's untouched video with B's speech is the baseline, ~0), LSE-C >= 0.8 x the
  LSE-C of B's own clip with offset within +-1 frame, PSNR outside the regenerated region vs A's
  frames (only the codec should lower it), no seam where denoising windows join;
* self-reconstruction (A's video driven by A's speech): SSIM of the lower-face crop >= 0.75.

    .venv/bin/python benchmarks/tiny_model_quality.py --heldout out/train/heldout [--pairs 6]
        [--checkpoint_dir out/train/ckpt/tiny-unet-stage1/model] [--syncnet DIR] [--out out/quality]

Held-out clips come from `lipsync synth --split test` (sentences the training corpus never has);
pairs are (clip 0, clip 1), (clip 2, clip 3), ... Without --checkpoint_dir the bundled model runs,
without --syncnet the bundled SyncNet scores. Writes quality.json, one eval report per video and
frames_*.png (A | output | B's ground truth at a few frames) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BARS = {"r_gt_jaw": 0.6, "lse_c_ratio": 0.8, "offset_abs": 1, "ssim_lower_face": 0.75, "seam_ratio": 1.25}


def join_frames(n: int, size: int, overlap: int) -> np.ndarray:
    """Frames whose change from the previous frame crosses or lies in a join of two windows."""
    from lipsync.pipeline.windows import WindowPlanner

    planner = WindowPlanner(size, overlap)
    windows = [w for t in range(n) for w in planner.push(t, True)] + planner.finish()
    cover = np.zeros(n, int)
    for w in windows:
        cover[w.start:w.stop] += 1
    joins = np.zeros(n, bool)
    for t in range(1, n):
        joins[t] = cover[t] > 1 or cover[t - 1] > 1
    return joins


def seam_ratio(change: list, joins: np.ndarray) -> float | None:
    """Mean lower-face change at window joins / elsewhere (1 = no seam)."""
    c = np.array([np.nan if v is None else v for v in change], float)
    m = min(len(c), len(joins))
    c, j = c[:m], joins[:m]
    a, b = c[j & np.isfinite(c)], c[~j & np.isfinite(c)]
    if len(a) == 0 or len(b) == 0 or np.mean(b) <= 0:
        return None
    return float(np.mean(a) / np.mean(b))


def save_frames(path: Path, videos: list[str], frames: tuple[int, ...]) -> None:
    """One row per frame index: the same 25 fps frame of each video side by side."""
    import cv2

    from lipsync.media.video import sample_frames

    grabbed = [sample_frames(v, [t / 25.0 for t in frames]) for v in videos]
    rows = [np.concatenate([g[i].image for g in grabbed], axis=1) for i in range(len(frames))
            if all(i < len(g) for g in grabbed)]
    if rows:
        cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def get(rep: dict, *keys):
    for k in keys:
        rep = None if rep is None else rep.get(k)
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", default="out/train/heldout", help="folder of `lipsync synth --split test` clips")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--checkpoint_dir", default=None, help="a model folder (model_index.json); default: bundled")
    ap.add_argument("--syncnet", default=None, help="SyncNet folder for the scores; default: bundled")
    ap.add_argument("--num_steps", type=int, default=None, help="denoising steps (default: the profile's)")
    ap.add_argument("--guidance_scale", type=float, default=None, help="audio guidance (default: the profile's)")
    ap.add_argument("--reference_shift", type=int, default=None,
                    help="reference frame = the window's frame i + this (default: the profile's)")
    ap.add_argument("--out", default="out/quality")
    args = ap.parse_args()

    from lipsync.eval import evaluate
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline

    clips = sorted(p for p in Path(args.heldout).iterdir() if (p / "meta.json").exists())
    if len(clips) < 2 * args.pairs:
        sys.exit(f"error: {args.heldout}: {len(clips)} clips, {2 * args.pairs} needed for {args.pairs} pairs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint_dir
    if ckpt and (Path(ckpt) / "model_index.json").exists():
        pipe = LipSyncPipeline.from_pretrained(ckpt, device="cpu")
    else:
        pipe = LipSyncPipeline.from_profile("tiny", checkpoint_dir=ckpt, device="cpu")
    if pipe.components.random_init:
        print("warning: the model runs on random weights", file=sys.stderr)
    if args.reference_shift is not None:
        import dataclasses

        pipe.profile = dataclasses.replace(pipe.profile, reference_shift=args.reference_shift)
    prof = pipe.profile
    opts = GenerateOptions(num_steps=args.num_steps, guidance_scale=args.guidance_scale)

    def ev(name: str, video, **kw) -> dict:
        rep = evaluate(str(video), syncnet=args.syncnet, out_dir=str(out / "reports" / name), **kw)
        return rep

    rows = []
    t_gen = 0.0
    for i in range(args.pairs):
        a, b = clips[2 * i], clips[2 * i + 1]
        tag = f"{a.name}_{b.name}"
        dub, self_ = out / f"dub_{tag}.mp4", out / f"self_{a.name}.mp4"
        t0 = time.perf_counter()
        pipe(str(dub), video=str(a / "video.mp4"), audio=str(b / "audio.wav"), options=opts)
        pipe(str(self_), video=str(a / "video.mp4"), audio=str(a / "audio.wav"), options=opts)
        t_gen += time.perf_counter() - t0
        r_dub = ev(f"dub_{tag}", dub, audio=str(b / "audio.wav"), ground_truth=str(b), reference=str(a / "video.mp4"))
        r_base = ev(f"untouched_{tag}", a / "video.mp4", audio=str(b / "audio.wav"), ground_truth=str(b))
        r_gt = ev(f"gt_{b.name}", b / "video.mp4", ground_truth=str(b))
        r_self = ev(f"self_{a.name}", self_, audio=str(a / "audio.wav"), ground_truth=str(a),
                    reference=str(a / "video.mp4"))
        joins = join_frames(r_dub["frames"], int(prof.window), int(prof.overlap))
        row = {
            "a": a.name, "b": b.name,
            "dub_r_gt_jaw": get(r_dub, "mouth", "r_gt_jaw"),
            "untouched_r_gt_jaw": get(r_base, "mouth", "r_gt_jaw"),
            "dub_lse_c": get(r_dub, "sync", "lse_c"), "dub_lse_d": get(r_dub, "sync", "lse_d"),
            "dub_offset": get(r_dub, "sync", "offset"), "dub_accuracy": get(r_dub, "sync", "accuracy"),
            "untouched_lse_c": get(r_base, "sync", "lse_c"),
            "gt_lse_c": get(r_gt, "sync", "lse_c"), "gt_offset": get(r_gt, "sync", "offset"),
            "gt_r_gt_jaw": get(r_gt, "mouth", "r_gt_jaw"),
            "dub_lmd": get(r_dub, "mouth", "lmd"),
            "dub_psnr_outside": get(r_dub, "reference_metrics", "psnr_outside"),
            "dub_ssim_lower_face_vs_a": get(r_dub, "reference_metrics", "ssim_lower_face"),
            "dub_temporal_score": get(r_dub, "temporal", "score"),
            "dub_flicker_outside": get(r_dub, "temporal", "flicker_outside"),
            "dub_seam_ratio": seam_ratio(r_dub["series"]["lower_face_change"], joins),
            "gt_seam_ratio": seam_ratio(r_gt["series"]["lower_face_change"], joins),
            "self_ssim_lower_face": get(r_self, "reference_metrics", "ssim_lower_face"),
            "self_psnr_lower_face": get(r_self, "reference_metrics", "psnr_lower_face"),
            "self_psnr_outside": get(r_self, "reference_metrics", "psnr_outside"),
            "self_r_gt_jaw": get(r_self, "mouth", "r_gt_jaw"),
            "self_lse_c": get(r_self, "sync", "lse_c"), "self_offset": get(r_self, "sync", "offset"),
        }
        if row["dub_lse_c"] is not None and row["gt_lse_c"]:
            row["lse_c_ratio"] = row["dub_lse_c"] / row["gt_lse_c"]
        rows.append(row)
        save_frames(out / f"frames_{tag}.png", [str(a / "video.mp4"), str(dub), str(b / "video.mp4")], (20, 50, 80))
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    def mean(key):
        v = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(v)) if v else None

    summary = {k: mean(k) for k in rows[0] if k not in ("a", "b")}
    summary["lse_c_ratio_of_means"] = (summary["dub_lse_c"] / summary["gt_lse_c"]
                                       if summary["dub_lse_c"] is not None and summary["gt_lse_c"] else None)
    offsets = [r["dub_offset"] for r in rows if r["dub_offset"] is not None]
    checks = {
        "mouth r vs B's jaw >= 0.6": (summary["dub_r_gt_jaw"] or -1) >= BARS["r_gt_jaw"],
        "LSE-C >= 0.8 x B's own": (summary["lse_c_ratio_of_means"] or 0) >= BARS["lse_c_ratio"],
        "offset within +-1 (every pair)": bool(offsets) and all(abs(o) <= BARS["offset_abs"] for o in offsets),
        "self-reconstruction lower-face SSIM >= 0.75": (summary["self_ssim_lower_face"] or 0) >= BARS["ssim_lower_face"],
        "no seam at window joins (ratio <= 1.25)": (summary["dub_seam_ratio"] or 9) <= BARS["seam_ratio"],
    }
    result = {"checkpoint_dir": ckpt or "bundled", "syncnet": args.syncnet or "bundled",
              "num_steps": args.num_steps or int(prof.num_steps),
              "guidance_scale": args.guidance_scale or float(prof.guidance_scale),
              "reference_shift": int(prof.reference_shift), "pairs": rows, "mean": summary,
              "bars": checks, "generate_seconds": t_gen}
    (out / "quality.json").write_text(json.dumps(result, indent=1))
    print("\nmeans over", len(rows), "pairs:")
    for k, v in summary.items():
        print(f"  {k:28s} {v:.3f}" if v is not None else f"  {k:28s} -")
    for k, ok in checks.items():
        print(f"  [{'ok' if ok else 'MISS'}] {k}")
    print(f"generation: {t_gen:.0f} s for {2 * len(rows)} videos; written {out / 'quality.json'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
