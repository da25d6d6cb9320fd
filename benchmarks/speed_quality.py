"""Speed against quality of the samplers (issue 22): for each setting, frames/s of `lipsync generate`
on the demo clip and the model card's held-out quality measures, with DDIM-20 (LatentSync's path)
measured in the same run as the baseline, and ratios to it.

    .venv/bin/python benchmarks/speed_quality.py --heldout out/train/heldout [--pairs 2] [--rounds 2]
        [--settings ddim-20,dpmsolver++-5-g0.6,...] [--quality_settings ...] [--out out/speed_quality]
        [--model NAME=FOLDER ...]

A setting is ``SCHEDULER-STEPS`` plus optional ``-gX`` (audio guidance on the first X of the steps)
and ``-dcN`` (DeepCache every N steps), e.g. ``unipc-5-g0.6-dc2``, or ``default``: no option given,
the model's own sampler (what `make demo` runs). ``NAME:SETTING`` runs it on the model folder that
``--model NAME=FOLDER`` names (else the bundled model, or --checkpoint_dir), e.g. the bundled 4-step
student against its DDIM-20 teacher:

    --model teacher=out/train/ckpt/tiny-unet-reg2/model --settings teacher:ddim-20,default

The first setting is the baseline. Speed: every setting runs ``--rounds`` times on lipsync/assets/samples/face.mp4 +
speech.wav (the `make demo` input), the settings interleaved round by round so that a machine
shared with other work slows them alike; frames/s is the median over rounds (wall clock), and the
ratio is taken round by round against the baseline of the same round (median). Quality
(benchmarks/tiny_model_quality.py's measures; ``--quality_settings``, default: all): per held-out
pair (A's video, B's speech) mouth opening r vs B's true jaw, LSE-C / B's own LSE-C, sync offset,
the seam ratio at window joins, and the self-reconstruction (A with A's speech) lower-face SSIM.
Writes table.md, results.json and grid_<pair>.png (rows: frames; columns: A, each setting, B's truth)
under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_SETTINGS = ("ddim-20,ddim-10,dpmsolver++-8,dpmsolver++-6,dpmsolver++-5,dpmsolver++-4,unipc-6,unipc-5,"
                    "unipc-4,dpmsolver++-5-g0.6,unipc-5-g0.6,dpmsolver++-6-dc2,unipc-5-g0.6-dc2,dpmsolver++-8-dc3")
DEMO = ("lipsync/assets/samples/face.mp4", "lipsync/assets/samples/speech.wav")


def split_model(name: str) -> tuple[str | None, str]:
    """``teacher:ddim-20`` -> ("teacher", "ddim-20"); ``ddim-20`` -> (None, "ddim-20")."""
    model, _, setting = name.rpartition(":")
    return (model or None), setting


def parse_setting(name: str) -> dict:
    """``unipc-5-g0.6-dc2`` -> scheduler, num_steps, guidance_interval, deepcache_interval; ``default``
    -> {} (the model's own sampler)."""
    from lipsync.options import SCHEDULERS

    name = split_model(name)[1]
    if name == "default":
        return {}
    parts = name.split("-")
    # dpmsolver++ has no dash, so the scheduler is the first part
    sched, steps, rest = parts[0], int(parts[1]), parts[2:]
    if sched not in SCHEDULERS:
        raise ValueError(f"{name}: scheduler must be one of {SCHEDULERS}")
    out = {"scheduler": sched, "num_steps": steps, "guidance_interval": 1.0, "deepcache_interval": 0}
    for p in rest:
        if p.startswith("g"):
            out["guidance_interval"] = float(p[1:])
        elif p.startswith("dc"):
            out["deepcache_interval"] = int(p[2:])
        else:
            raise ValueError(f"{name}: unknown part {p!r} (gX or dcN)")
    return out


def options_of(name: str, seed: int | None = None):
    from lipsync.options import GenerateOptions

    kw = parse_setting(name)
    return GenerateOptions(**kw) if seed is None else GenerateOptions(seed=seed, **kw)


def passes_of(name: str, profile) -> tuple[int, int, int]:
    """(steps, UNet passes, DeepCache interval) of a setting on a model with ``profile``: a guided
    step is two passes (batched), and guidance 1 makes none."""
    kw = {"num_steps": profile.num_steps, "guidance_interval": profile.guidance_interval[1],
          "deepcache_interval": profile.deepcache_interval, **parse_setting(name)}
    n = kw["num_steps"]
    guided = 0 if float(profile.guidance_scale) == 1.0 else sum(1 for i in range(n) if i / n < kw["guidance_interval"])
    return n, n + guided, kw["deepcache_interval"]


def speed(pipes: dict, settings: list[str], rounds: int, out: Path) -> dict:
    """Frames/s per setting on the demo clip, interleaved; stage seconds of the last round."""
    import resource

    fps = {s: [] for s in settings}
    ratio = {s: [] for s in settings}
    cpu = {s: [] for s in settings}  # process CPU seconds: less moved by other work on the machine
    stages = {}
    for pipe in pipes.values():
        pipe(str(out / "warmup.mp4"), video=DEMO[0], audio=DEMO[1], options=options_of("ddim-2"))  # caches, JIT
    for r in range(rounds):
        base = None
        for s in settings:
            pipe = pipes[split_model(s)[0]]
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            res = pipe(str(out / f"demo_{s.replace(':', '_')}.mp4"), video=DEMO[0], audio=DEMO[1], options=options_of(s))
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu[s].append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
            fps[s].append(res.frames_per_second)
            base = res.elapsed_seconds if base is None else base
            ratio[s].append(base / res.elapsed_seconds)
            stages[s] = res.stages
            print(f"round {r}: {s:24s} {res.frames_per_second:6.2f} frames/s  x{ratio[s][-1]:.2f}  "
                  f"unet {res.stages.get('unet', 0):.1f} s of {res.elapsed_seconds:.1f} s, CPU {cpu[s][-1]:.1f} s",
                  flush=True)
    return {s: {"fps": statistics.median(fps[s]), "fps_rounds": fps[s], "ratio": statistics.median(ratio[s]),
                "ratio_rounds": ratio[s], "cpu_seconds": cpu[s], "stages": stages[s]} for s in settings}


def quality(pipes: dict, settings: list[str], clips: list[Path], pairs: int, out: Path) -> dict:
    from lipsync.eval import evaluate
    from tiny_model_quality import get, join_frames, save_frames, seam_ratio

    res = {s: [] for s in settings}
    for i in range(pairs):
        a, b = clips[2 * i], clips[2 * i + 1]
        tag = f"{a.name}_{b.name}"
        gt = evaluate(str(b / "video.mp4"), ground_truth=str(b), out_dir=str(out / "reports" / f"gt_{b.name}"))
        gt_lse = get(gt, "sync", "lse_c")
        videos = [str(a / "video.mp4")]
        for s in settings:
            pipe = pipes[split_model(s)[0]]
            prof = pipe.profile
            fs = s.replace(":", "_")
            dub, self_ = out / f"dub_{tag}_{fs}.mp4", out / f"self_{a.name}_{fs}.mp4"
            pipe(str(dub), video=str(a / "video.mp4"), audio=str(b / "audio.wav"), options=options_of(s))
            pipe(str(self_), video=str(a / "video.mp4"), audio=str(a / "audio.wav"), options=options_of(s))
            r_dub = evaluate(str(dub), audio=str(b / "audio.wav"), ground_truth=str(b), reference=str(a / "video.mp4"),
                             out_dir=str(out / "reports" / f"dub_{tag}_{fs}"))
            r_self = evaluate(str(self_), audio=str(a / "audio.wav"), ground_truth=str(a),
                              reference=str(a / "video.mp4"), out_dir=str(out / "reports" / f"self_{a.name}_{fs}"))
            joins = join_frames(r_dub["frames"], int(prof.window), int(prof.overlap))
            lse = get(r_dub, "sync", "lse_c")
            row = {"pair": tag, "r_gt_jaw": get(r_dub, "mouth", "r_gt_jaw"), "lse_c": lse, "gt_lse_c": gt_lse,
                   "lse_c_ratio": lse / gt_lse if lse is not None and gt_lse else None,
                   "offset": get(r_dub, "sync", "offset"),
                   "seam_ratio": seam_ratio(r_dub["series"]["lower_face_change"], joins),
                   "psnr_outside": get(r_dub, "reference_metrics", "psnr_outside"),
                   "self_ssim_lower_face": get(r_self, "reference_metrics", "ssim_lower_face")}
            res[s].append(row)
            videos.append(str(dub))
            print(json.dumps({"setting": s, **{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}}),
                  flush=True)
        save_frames(out / f"grid_{tag}.png", videos + [str(b / "video.mp4")], (20, 50, 80, 110))
    return res


def mean(rows: list[dict], key: str):
    v = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(v)) if v else None


def table(settings: list[str], sp: dict, q: dict, pipes: dict) -> str:
    base = settings[0]
    lines = ["| setting | UNet passes | frames/s (demo) | speed vs " + base + " | mouth r | LSE-C ratio | offsets "
             "| self SSIM | seam ratio | PSNR outside |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    for s in settings:
        n, passes, dc = passes_of(s, pipes[split_model(s)[0]].profile)
        passes = f"{passes}" + (f" (1 in {dc} full)" if dc > 1 else "")
        rows = q.get(s) or []
        d = lambda k: mean(rows, k)  # noqa: E731
        offs = " / ".join(str(r["offset"]) for r in rows) if rows else "-"
        lse = d("lse_c_ratio")
        r = d("r_gt_jaw")
        delta = ""
        if s != base and q.get(base) and rows:
            delta_r, delta_l = (r or 0) - (mean(q[base], "r_gt_jaw") or 0), (lse or 0) - (mean(q[base], "lse_c_ratio") or 0)
            delta = (f" ({delta_r:+.3f})", f" ({delta_l:+.3f})")
        sp_s = sp.get(s, {})
        lines.append(f"| `{s}` | {passes} | {f(sp_s.get('fps'), '{:.2f}')} | {f(sp_s.get('ratio'), '{:.2f}x')} "
                     f"| {f(r)}{delta[0] if delta else ''} | {f(lse)}{delta[1] if delta else ''} | {offs} "
                     f"| {f(d('self_ssim_lower_face'))} | {f(d('seam_ratio'), '{:.2f}')} | {f(d('psnr_outside'), '{:.1f}')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", default="out/train/heldout", help="folder of `lipsync synth --split test` clips")
    ap.add_argument("--pairs", type=int, default=2, help="held-out pairs for quality (0: speed only)")
    ap.add_argument("--rounds", type=int, default=2, help="speed rounds (settings interleaved)")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated; the first is the baseline")
    ap.add_argument("--quality_settings", default=None, help="the settings to score (default: all of --settings)")
    ap.add_argument("--checkpoint_dir", default=None, help="the model of settings without NAME: (default: bundled)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                    help="a model folder for NAME:SETTING settings (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default="out/speed_quality")
    args = ap.parse_args()

    import torch

    from lipsync.pipeline import LipSyncPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    folders = dict(m.split("=", 1) for m in args.model)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        parse_setting(s)
        if split_model(s)[0] not in (None, *folders):
            sys.exit(f"error: setting {s}: no --model {split_model(s)[0]}=FOLDER")
    qset = settings if args.quality_settings is None else [s.strip() for s in args.quality_settings.split(",")]
    if qset and qset[0] != settings[0]:
        qset = [settings[0]] + [s for s in qset if s != settings[0]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipes = {None: LipSyncPipeline.from_profile("tiny", checkpoint_dir=args.checkpoint_dir, device="cpu")}
    pipes.update({k: LipSyncPipeline.from_pretrained(v, device="cpu") for k, v in folders.items()
                  if any(split_model(s)[0] == k for s in settings)})
    t0 = time.perf_counter()
    sp = speed(pipes, settings, args.rounds, out) if args.rounds > 0 else {}
    q = {}
    if args.pairs > 0:
        clips = sorted(p for p in Path(args.heldout).iterdir() if (p / "meta.json").exists())
        if len(clips) < 2 * args.pairs:
            sys.exit(f"error: {args.heldout}: {len(clips)} clips, {2 * args.pairs} needed for {args.pairs} pairs")
        q = quality(pipes, qset, clips, args.pairs, out)
    md = table(settings, sp, q, pipes)
    (out / "table.md").write_text(md + "\n")
    (out / "results.json").write_text(json.dumps({"settings": settings, "speed": sp, "quality": q,
                                                  "threads": torch.get_num_threads(),
                                                  "seconds": time.perf_counter() - t0}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
