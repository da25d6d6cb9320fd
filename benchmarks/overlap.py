"""Overlapped vs sequential stages of `lipsync generate` on CPU, and two UNet variants (channels_last,
bf16 autocast).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlap.py jobs --seconds 2 --threads 1 --modes off,read,write,full
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlap.py cv2 --seconds 2 --threads 1 --modes full
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlap.py unet --threads 1,2 --reps 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlap.py gil --threads 1 --reps 3

``jobs``: the bundled sample (lipsync.assets.SAMPLE_VIDEO, SAMPLE_AUDIO cut to ``--seconds``), tiny
profile, ``--scheduler``/``--steps``/``--guidance_interval`` (default: dpmsolver++, 5 steps, guidance on
60 %), one job per (round, torch threads, stage overlap mode: off = the sequential loop, read =
decode + face in a thread, write = composite + encode in a thread, full = both). The modes of a round
run back to back, in an order that turns each round, so a machine shared with other work loads
them alike; each ratio is a mode's frames/s over the sequential run's of the same round. Checks
that every mode gives the sequential run's frames.
``cv2``: the overlapped job with OpenCV's default threads vs ``cv2.setNumThreads(1)`` (the face and
composite work), in alternation. PyAV's decode and x264's encode keep FFmpeg's own thread choice.
``unet``: one 16-frame window's UNet pass (guided: batch 2) in fp32, channels_last, bf16 autocast and
both, per torch thread count; seconds per pass (best of ``--reps``) and the largest difference from
fp32 relative to the output's scale.
``gil``: one UNet pass alone, beside the decode + face work running in a thread, and in another
process (why threads do not pay on CPU with the tiny model).

torch.set_num_threads overrides OMP_NUM_THREADS for torch's pool (the variable keeps other libraries
from starting a thread per core). Prints one JSON line per measurement and a summary; ``--out``
writes them all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path


DEVICE = "cpu"


def _pipe():
    from lipsync.pipeline import LipSyncPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LipSyncPipeline.from_profile("tiny", device=DEVICE)


def _inputs(work: Path, seconds: float) -> tuple[str, str]:
    from lipsync.assets import SAMPLE_AUDIO, SAMPLE_VIDEO
    from lipsync.media import load_audio, save_wav

    speech = load_audio(str(SAMPLE_AUDIO))
    wav = work / "speech.wav"
    save_wav(str(wav), speech[: int(seconds * 16000)], 16000)
    return str(SAMPLE_VIDEO), str(wav)


def _options(args):
    from lipsync.pipeline import GenerateOptions

    return GenerateOptions(scheduler=args.scheduler, num_steps=args.steps, guidance_interval=args.guidance_interval,
                           batch_size=args.batch_size)


def _job(pipe, video, audio, opts, out: Path, mode: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    pipe.overlap_stages = mode
    r = pipe(str(out), video=video, audio=audio, options=opts)
    return {"mode": mode, "torch_threads": threads,
            "frames": r.frames, "seconds": round(r.elapsed_seconds, 3), "fps": round(r.frames_per_second, 3),
            "stages": {k: round(v, 2) for k, v in r.stages.items()},
            "waits": {k: round(v, 2) for k, v in r.waits.items()}}


def _frames(path: Path):
    from lipsync.media import iter_frames

    return [f.image for f in iter_frames(str(path))]


def jobs(args, work: Path) -> list[dict]:
    import numpy as np

    pipe = _pipe()
    video, audio = _inputs(work, args.seconds)
    opts = _options(args)
    threads = [int(t) for t in args.threads.split(",")]
    modes = [m for m in args.modes.split(",") if m != "off"]
    _job(pipe, video, audio, opts, work / "warm.mp4", "full", threads[0])  # models, mediapipe, caches warm
    records = []
    for rnd in range(args.first_round, args.first_round + args.rounds):
        for t in threads:
            # The sequential run, then each overlap mode; the order turns every round, so a load
            # change during a round favours no mode.
            order = ["off"] + modes
            k = (rnd + t) % len(order)
            order = order[k:] + order[:k]
            runs = {}
            for mode in order:
                out = work / f"r{rnd}_t{t}_{mode}.mp4"
                rec = _job(pipe, video, audio, opts, out, mode, t)
                rec["round"] = rnd
                runs[mode] = (rec, out)
                print(json.dumps(rec), flush=True)
                records.append(rec)
            base = _frames(runs["off"][1])
            for mode in modes:
                same = all(np.array_equal(a, b) for a, b in zip(_frames(runs[mode][1]), base))
                ratio = runs[mode][0]["fps"] / runs["off"][0]["fps"]
                rec = {"round": rnd, "torch_threads": t, "mode": mode, "ratio_vs_sequential": round(ratio, 3),
                       "same_frames": same}
                print(json.dumps(rec), flush=True)
                records.append(rec)
    print("\nsummary: frames/s; each mode / the sequential run (off) of the same round")
    for t in threads:
        fps = [r["fps"] for r in records if r.get("mode") == "off" and "fps" in r and r["torch_threads"] == t]
        print(f"  torch threads {t}: sequential frames/s {fps}")
        for mode in modes:
            ratios = [r["ratio_vs_sequential"] for r in records
                      if r.get("mode") == mode and "ratio_vs_sequential" in r and r["torch_threads"] == t]
            print(f"    {mode}: ratios {ratios} (median {statistics.median(ratios):.2f})")
    return records


def cv2_threads(args, work: Path) -> list[dict]:
    import cv2

    pipe = _pipe()
    video, audio = _inputs(work, args.seconds)
    opts = _options(args)
    t = int(args.threads.split(",")[0])
    default = cv2.getNumThreads()
    mode = args.modes.split(",")[-1]
    _job(pipe, video, audio, opts, work / "warm.mp4", mode, t)
    records = []
    for rnd in range(args.rounds):
        for n in ((default, 1) if rnd % 2 == 0 else (1, default)):
            cv2.setNumThreads(n)
            rec = _job(pipe, video, audio, opts, work / f"cv{rnd}_{n}.mp4", mode, t)
            rec.update(round=rnd, cv2_threads=n)
            print(json.dumps(rec), flush=True)
            records.append(rec)
    cv2.setNumThreads(default)
    print("\nsummary: overlapped frames/s by OpenCV threads")
    for n in sorted({default, 1}):
        print(f"  cv2 threads {n}: {[r['fps'] for r in records if r['cv2_threads'] == n]}")
    return records


def unet(args, work: Path) -> list[dict]:
    import torch

    pipe = _pipe()
    model = pipe.components.unet.eval()
    size = int(pipe.profile.resolution) // 4  # the tiny VAE downsamples 4x
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, int(pipe.profile.window), size, size, generator=gen)
    # Audio tokens as the tiny mel encoder makes them: (batch, frames, tokens, dim).
    tokens = pipe.setup.speech.silence_tokens()
    e = torch.randn(2, x.shape[2], *tokens.shape, generator=gen)
    if DEVICE != "cpu":
        raise SystemExit("unet: CPU only (channels_last / bf16 autocast on CPU)")
    t_step = torch.tensor(500)

    def variant(name: str):
        cl = "channels_last" in name
        bf16 = "bf16" in name
        model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)

        def call():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x, t_step, e).float()
        return call

    names = ["fp32", "channels_last", "bf16_autocast", "bf16_autocast+channels_last"]
    records = []
    threads = [int(t) for t in args.threads.split(",")]
    with torch.no_grad():
        reference = variant("fp32")()
    scale = float(reference.abs().max())
    for t in threads:
        torch.set_num_threads(t)
        best = {n: float("inf") for n in names}
        diff = {}
        for rep in range(args.reps):  # interleaved: each variant sees the same load
            for n in names:
                call = variant(n)
                call()  # warm (oneDNN primitives for this layout / dtype)
                t0 = time.perf_counter()
                out = call()
                best[n] = min(best[n], time.perf_counter() - t0)
                diff[n] = float((out - reference).abs().max()) / scale
        for n in names:
            rec = {"torch_threads": t, "variant": n, "seconds_per_pass": round(best[n], 4),
                   "vs_fp32": round(best["fp32"] / best[n], 3), "max_rel_diff": float(f"{diff[n]:.3g}")}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    model.to(memory_format=torch.contiguous_format)
    return records


def gil(args, work: Path) -> list[dict]:
    """One UNet pass (fp32, best of ``--reps``) alone, while the decode + face work (``job.steps()``
    over the sample, in a loop) runs in a thread of this process, and while it runs in another
    process: what the GIL costs the denoiser when the stages overlap in threads."""
    import multiprocessing
    import threading

    import torch

    from lipsync.face import FaceDetector
    from lipsync.pipeline import GenerateOptions

    t = int(args.threads.split(",")[0])
    torch.set_num_threads(t)
    pipe = _pipe()
    video, audio = _inputs(work, args.seconds)
    model = pipe.components.unet.eval()
    size = int(pipe.profile.resolution) // 4
    x = torch.randn(2, 13, int(pipe.profile.window), size, size)
    e = torch.randn(2, x.shape[2], *pipe.setup.speech.silence_tokens().shape)

    def unet_pass() -> float:
        best = float("inf")
        with torch.no_grad():
            model(x, torch.tensor(500), e)
            for _ in range(args.reps):
                t0 = time.perf_counter()
                model(x, torch.tensor(500), e)
                best = min(best, time.perf_counter() - t0)
        return best

    def prepare(stop) -> None:
        torch.set_num_threads(1)
        with FaceDetector(max_faces=8) as detector:
            while not stop.is_set():
                with pipe.setup.open(video=video, audio=audio, options=GenerateOptions(), detector=detector) as job:
                    for _ in job.steps():
                        if stop.is_set():
                            break

    records = [{"torch_threads": t, "unet_pass_s": round(unet_pass(), 4), "beside": "nothing"}]
    for kind in ("thread", "process"):
        if kind == "thread":
            stop = threading.Event()
            worker = threading.Thread(target=prepare, args=(stop,))
        else:
            ctx = multiprocessing.get_context("fork")
            stop = ctx.Event()
            worker = ctx.Process(target=prepare, args=(stop,))
        worker.start()
        time.sleep(2.0)  # the detector up and running
        records.append({"torch_threads": t, "unet_pass_s": round(unet_pass(), 4),
                        "beside": f"decode + face in a {kind}"})
        stop.set()
        worker.join()
    records.append({"torch_threads": t, "unet_pass_s": round(unet_pass(), 4), "beside": "nothing (again)"})
    for r in records:
        print(json.dumps(r), flush=True)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("jobs", "cv2", "unet", "gil"))
    ap.add_argument("--seconds", type=float, default=2.0, help="speech length (the output's frames / 25)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op threads, a comma list")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first_round", type=int, default=0, help="jobs: number of the first round (turns the order; "
                                                                 "to split rounds across runs)")
    ap.add_argument("--modes", default="off,full", help="jobs: stage overlap modes (OVERLAP_MODES: off, read, "
                                                          "write, full), each compared with off; cv2: the last one")
    ap.add_argument("--reps", type=int, default=3, help="unet: timed passes per variant")
    ap.add_argument("--scheduler", default="dpmsolver++")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--guidance_interval", type=float, default=0.6)
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="jobs, cv2: cpu or cuda")
    ap.add_argument("--out", help="write the records as JSON here")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    with tempfile.TemporaryDirectory(prefix="overlap-bench-") as tmp:
        records = {"jobs": jobs, "cv2": cv2_threads, "unet": unet, "gil": gil}[args.what](args, Path(tmp))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "records": records}, indent=1))


if __name__ == "__main__":
    main()
