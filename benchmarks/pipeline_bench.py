"""Model pipeline figures: UNet step time per profile, pipeline frames/s, and peak memory for a
10 s vs a 60 s input (streaming: the ratio should stay near 1).

    .venv/bin/python benchmarks/pipeline_bench.py [--device cpu] [--steps 20] [--skip-latentsync]

UNet weights are random (the architecture, not the weights, sets the cost). Each memory run is a
fresh subprocess so its peak RSS is its own. Writes out/bench/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def unet_step(profile: str, device: str, frames: int = 16, cfg: bool = True, repeats: int = 2) -> dict:
    import torch

    from lipsync.pipeline.components import build_unet
    from lipsync.profiles import load_profile

    p = load_profile(profile)
    unet = build_unet(p).to(device).eval()
    if device.startswith("cuda"):
        unet.half()
    dtype = next(unet.parameters()).dtype
    k = 4 if profile == "tiny" else 8
    s = p.resolution // k
    b = 2 if cfg else 1
    x = torch.randn(b, 13, frames, s, s, device=device, dtype=dtype)
    tokens = (10, unet.config.cross_attention_dim) if profile == "tiny" else (50, 384)
    e = torch.randn(b, frames, *tokens, device=device, dtype=dtype)
    with torch.no_grad():
        unet(x, 500, e)
        t0 = time.perf_counter()
        for _ in range(repeats):
            unet(x, 500, e)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return {"profile": profile, "device": device, "frames": frames, "cfg_batch": b,
            "latent": s, "params_M": sum(q.numel() for q in unet.parameters()) / 1e6,
            "seconds_per_step": (time.perf_counter() - t0) / repeats}


def child(seconds: float, steps: int, device: str, work: str) -> None:
    """Runs in a subprocess: one generate job; prints JSON with its peak RSS."""
    import warnings

    warnings.simplefilter("ignore")
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline
    from lipsync.synth.corpus import make_clip

    w = Path(work)
    clip = w / f"clip_{int(seconds)}"
    if not (clip / "meta.json").exists():
        make_clip(clip, seed=7, seconds=seconds, size=256, langs=["en"])
    pipe = LipSyncPipeline.from_profile("tiny", device=device)
    res = pipe(str(w / f"out_{int(seconds)}.mp4"), video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"),
               options=GenerateOptions(num_steps=steps))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "frames": res.frames, "elapsed": res.elapsed_seconds,
                      "frames_per_second": res.frames_per_second, "peak_rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps for the frames/s figure")
    ap.add_argument("--memory-steps", type=int, default=1, help="steps in the 10 s / 60 s memory runs")
    ap.add_argument("--skip-latentsync", action="store_true")
    ap.add_argument("--with-16", action="store_true", help="also time latentsync-1.6 on a CPU")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--child", nargs=3, metavar=("SECONDS", "STEPS", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(float(args.child[0]), int(args.child[1]), args.device, args.child[2])
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"unet": []}
    # On a CPU one step of the 1.27 B-parameter UNet at 512 px (64x64 latents) takes many minutes:
    # 1.6 is timed on GPUs only unless asked for.
    big = ["latentsync-1.5"] + (["latentsync-1.6"] if args.device.startswith("cuda") or args.with_16 else [])
    profiles = ["tiny"] + ([] if args.skip_latentsync else big)
    for p in profiles:
        r = unet_step(p, args.device, repeats=1 if p != "tiny" else 3)
        print(f"UNet {p:15s} {args.device}: {r['params_M']:.1f} M params, latent {r['latent']}x{r['latent']}, "
              f"16 frames x CFG: {r['seconds_per_step']:.2f} s/step")
        results["unet"].append(r)
    runs = {}
    for seconds, steps in ((10.0, args.steps), (10.0, args.memory_steps), (60.0, args.memory_steps)):
        cmd = [sys.executable, __file__, "--device", args.device, "--child", str(seconds), str(steps), str(out)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        runs[f"{int(seconds)}s_{steps}steps"] = r
        print(f"tiny pipeline {int(seconds)} s input, {steps} steps: {r['frames_per_second']:.2f} frames/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
    results["pipeline"] = runs
    a, b = runs[f"10s_{args.memory_steps}steps"], runs[f"60s_{args.memory_steps}steps"]
    results["rss_ratio_60_over_10"] = b["peak_rss_mb"] / a["peak_rss_mb"]
    print(f"peak RSS 60 s / 10 s = {results['rss_ratio_60_over_10']:.2f}")
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
