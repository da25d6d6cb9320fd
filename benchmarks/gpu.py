"""GPU benchmark of the LatentSync profiles (random weights: the architecture sets the cost).

    .venv/bin/python benchmarks/gpu.py [--out out/bench/gpu.json] [--budget-s 450]
    .venv/bin/python benchmarks/gpu.py --dry      # CPU, tiny profile, every code path, seconds

Measures, for latentsync-1.5 (256 px) and latentsync-1.6 (512 px):
  * denoising frames/s (20 DDIM steps, audio CFG, 16-frame windows) for fp16 / bf16, window batch
    1 / 2 / 4, DeepCache off / on (interval 3), torch.compile off / on (on: batch 1, no DeepCache, to
    bound compile time), with the scaled-dot-product attention kernel that ran;
  * the samplers (issue 22): frames/s of whole windows (VAE encode, denoising, VAE decode; fp16,
    batch 1) for DDIM-20 (LatentSync's path, the baseline) and the faster settings, e.g.
    dpmsolver++ 8 steps, unipc 6, with guidance on the first 60 % of the steps, DeepCache 2, and
    each one's speed-up over DDIM-20 (quality of these settings: benchmarks/speed_quality.py);
  * VAE encode / decode frames/s;
  * the UNet's FLOPs per frame per pass (counted) and the fraction of the card's dense fp16/bf16 peak;
  * peak GPU memory of ``lipsync generate`` (latentsync-1.5) for a 10 s and a 60 s input (streaming:
    the two should match);
  * end-to-end frames/s of ``lipsync generate`` on a 10 s 1080p clip.
Prints a table, then the JSON (also written to --out). Rows past --budget-s are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# Dense (no sparsity) fp16/bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s.
PEAKS = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
         "A100": 312e12, "L40S": 362e12, "L4": 121e12}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Plan:
    device: str = "cuda"
    profiles: tuple = ("latentsync-1.5", "latentsync-1.6")
    dtypes: tuple = ("fp16", "bf16")
    batches: tuple = (1, 2, 4)
    deepcache: tuple = (0, 3)
    compile_dtypes: tuple = ("fp16",)
    # (label, scheduler, steps, guidance interval, DeepCache); the first is the baseline
    samplers: tuple = (("ddim-20", "ddim", 20, 1.0, 0), ("ddim-10", "ddim", 10, 1.0, 0),
                       ("dpmsolver++-8", "dpmsolver++", 8, 1.0, 0), ("dpmsolver++-6", "dpmsolver++", 6, 1.0, 0),
                       ("unipc-6", "unipc", 6, 1.0, 0), ("unipc-5", "unipc", 5, 1.0, 0),
                       ("dpmsolver++-8-g0.6", "dpmsolver++", 8, 0.6, 0), ("unipc-6-g0.6", "unipc", 6, 0.6, 0),
                       ("dpmsolver++-8-dc2", "dpmsolver++", 8, 1.0, 2),
                       ("unipc-6-g0.6-dc2", "unipc", 6, 0.6, 2))
    compile_backend: str = "inductor"
    steps: int = 20
    frames: int = 16
    memory_profile: str = "latentsync-1.5"
    memory_seconds: tuple = (10.0, 60.0)
    memory_steps: int = 2  # memory does not depend on the step count
    e2e_seconds: float = 10.0
    e2e_size: tuple = (1920, 1080)
    e2e_steps: int = 20
    skipped: list = field(default_factory=list)

    @classmethod
    def dry(cls) -> "Plan":
        # Every branch once, as small as it gets: 2-frame windows, 2 steps (DeepCache reuses on the
        # second), clips under a second; "eager" exercises the torch.compile wrapper without a compiler.
        return cls(device="cpu", profiles=("tiny",), dtypes=("fp32", "bf16"), batches=(1, 2), deepcache=(0, 2),
                   compile_dtypes=("fp32",), compile_backend="eager", steps=2, frames=2, memory_profile="tiny",
                   memory_seconds=(0.4, 0.8), memory_steps=1, e2e_seconds=0.4, e2e_size=(320, 240), e2e_steps=1,
                   samplers=(("ddim-2", "ddim", 2, 1.0, 0), ("dpmsolver++-2-g0.5", "dpmsolver++", 2, 0.5, 0),
                             ("unipc-2-dc2", "unipc", 2, 1.0, 2)))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_components(profile_name: str, device: str = "cpu"):
    """Random components at the profile's real configuration, without weight files, initialised
    on ``device`` (a 1.25 B-parameter UNet initialises in a second there, a minute on a CPU)."""
    from lipsync.pipeline import components as C
    from lipsync.profiles import load_profile

    prof = load_profile(profile_name)
    if prof.name == "tiny":
        return C.random_components(prof)
    from diffusers import AutoencoderKL

    from lipsync.models.audio import WhisperAudioEncoder
    from lipsync.models.whisper import WhisperDims, WhisperEncoder

    torch.manual_seed(0)
    with torch.device(device):
        unet = C.build_unet(prof)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            sample_size=prof.resolution)
    audio = WhisperAudioEncoder(WhisperEncoder(WhisperDims()))
    return C.Components(prof, unet, vae, audio, C.scheduler_of(prof), 0.18215, origin="random", random_init=True)


def token_shape(comp) -> tuple[int, int]:
    if comp.profile.name == "tiny":
        return 10, comp.unet.config.cross_attention_dim
    return 50, comp.unet.config.cross_attention_dim


def unet_flops_per_frame(unet, size: int, tokens: tuple[int, int], device: str, dtype, frames: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 13, frames, size, size, device=device, dtype=dtype)
    e = torch.randn(1, frames, *tokens, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, 500, e)
    return counter.get_total_flops() / frames


def attention_kernel(unet, size: int, tokens, device: str, dtype) -> str:
    """Which scaled-dot-product-attention implementation ran (from the profiler's op names)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(1, 13, 2, size, size, device=device, dtype=dtype)
    e = torch.randn(1, 2, *tokens, device=device, dtype=dtype)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        unet(x, 500, e)
    names = {ev.name for ev in prof.events()}
    for key, label in (("flash", "flash"), ("efficient", "mem-efficient"), ("cudnn", "cudnn"), ("_math", "math")):
        if any(key in n and "attention" in n for n in names):
            return label
    return "math" if any("scaled_dot_product" in n for n in names) else "none seen"


def time_denoise(unet, comp, plan: Plan, dtype, batch: int, deepcache: int) -> float:
    """Seconds for ``plan.steps`` guided steps over ``batch`` windows (UNet + scheduler only)."""
    from lipsync.pipeline.denoise import latentsync_scheduler

    k = 2 ** (len(comp.vae.config.block_out_channels) - 1)
    s = comp.profile.resolution // k
    dev, f = plan.device, plan.frames
    sched = latentsync_scheduler(comp.profile.prediction_type)
    cond = torch.randn(2 * batch, 9, f, s, s, device=dev, dtype=dtype)
    tokens = torch.randn(2 * batch, f, *token_shape(comp), device=dev, dtype=dtype)

    def run(steps: int) -> None:
        sched.set_timesteps(plan.steps, device=dev)
        lat = torch.randn(batch, 4, f, s, s, device=dev, dtype=torch.float32)
        cache = {} if deepcache > 1 else None
        for i, t in enumerate(sched.timesteps[:steps]):
            inp = torch.cat([torch.cat([lat, lat]).to(dtype), cond], 1)
            kw = {"cache": cache, "reuse_deep": i % deepcache != 0} if cache is not None else {}
            eps = unet(inp, t, tokens, **kw).float()
            u, c = eps.chunk(2)
            lat = sched.step(u + 1.5 * (c - u), t, lat).prev_sample

    with torch.no_grad():
        run(min(2, plan.steps))  # warm-up (and compilation)
        sync(dev)
        t0 = time.perf_counter()
        run(plan.steps)
        sync(dev)
    return time.perf_counter() - t0


def time_sampler(comp, plan: Plan, dtype, scheduler: str, steps: int, interval: float, deepcache: int) -> float:
    """Seconds for one window through ``WindowDenoiser`` (VAE encode, the sampler's steps with audio
    guidance 1.5 on the first ``interval`` of them, VAE decode), after a warm-up run."""
    from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser, latentsync_scheduler

    den = WindowDenoiser(comp.unet, comp.vae, latentsync_scheduler(comp.profile.prediction_type),
                         comp.scaling_factor, comp.shift_factor, plan.device, dtype)
    size = comp.profile.resolution
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (1, plan.frames, size, size, 3), dtype=np.uint8)
    keep = np.ones((size, size), np.float32)
    keep[size // 2:] = 0
    tokens = torch.randn(1, plan.frames, *token_shape(comp))
    settings = DenoiseSettings(steps, 1.5, deepcache, scheduler=scheduler, guidance_interval=(0.0, interval))
    noise = den.initial_noise(size, 0)
    den(crops, keep, tokens, noise, settings)  # warm-up
    sync(plan.device)
    t0 = time.perf_counter()
    den(crops, keep, tokens, noise, settings)
    sync(plan.device)
    return time.perf_counter() - t0


def time_vae(vae, size: int, frames: int, device: str, dtype) -> dict:
    x = torch.rand(frames, 3, size, size, device=device, dtype=dtype) * 2 - 1

    def timed(fn):
        fn()  # warm-up
        sync(device)
        t0 = time.perf_counter()
        y = fn()
        sync(device)
        return y, frames / (time.perf_counter() - t0)

    with torch.no_grad():
        z, enc = timed(lambda: vae.encode(x).latent_dist.mode())
        _, dec = timed(lambda: vae.decode(z).sample)
    return {"encode": enc, "decode": dec}


def peak_flops(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    for key in sorted(PEAKS, key=len, reverse=True):
        if key in name:
            return name, PEAKS[key]
    return name, None


def make_inputs(work: Path, seconds: float, size: tuple[int, int]) -> tuple[Path, Path]:
    """A ``seconds`` long speech track (the sample speech repeated) and a video of the sample face
    placed on a ``size`` canvas (3 s, looped by generate)."""
    import av
    import soundfile as sf

    speech, rate = sf.read(REPO / "lipsync" / "assets" / "samples" / "speech.wav", dtype="float32")
    n = int(seconds * rate)
    audio = work / f"speech_{seconds:g}s.wav"
    sf.write(audio, np.resize(speech, n), rate)
    video = work / f"face_{size[0]}x{size[1]}.mp4"
    if not video.exists():
        w, h = size
        side = min(h * 2 // 3, w)
        with av.open(str(REPO / "lipsync" / "assets" / "samples" / "face.mp4")) as src, av.open(str(video), "w") as dst:
            st = dst.add_stream("libx264", rate=25)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.options = {"preset": "ultrafast"}
            canvas = np.zeros((h, w, 3), np.uint8)
            canvas[:] = np.linspace(40, 160, w, dtype=np.uint8)[None, :, None]
            import cv2

            for frame in src.decode(video=0):
                img = canvas.copy()
                face = cv2.resize(frame.to_ndarray(format="rgb24"), (side, side), interpolation=cv2.INTER_CUBIC)
                y, x = (h - side) // 2, (w - side) // 2
                img[y:y + side, x:x + side] = face
                for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    dst.mux(p)
            for p in st.encode():
                dst.mux(p)
    return video, audio


def generate(comp, plan: Plan, dtype, seconds: float, size, steps: int, work: Path) -> dict:
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline

    video, audio = make_inputs(work, seconds, size)
    for m in (comp.unet, comp.vae):  # the timing rows left them in their last dtype
        m.to(plan.device, dtype)
    pipe = LipSyncPipeline(comp, plan.device, dtype)
    if plan.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    res = pipe(str(work / f"out_{seconds:g}s_{size[0]}.mp4"), video=str(video), audio=str(audio),
               options=GenerateOptions(num_steps=steps))
    peak = torch.cuda.max_memory_allocated() / 2**20 if plan.device.startswith("cuda") else None
    return {"seconds": seconds, "size": list(size), "steps": steps, "frames": res.frames,
            "frames_per_s": res.frames_per_second, "peak_gpu_mib": peak}


def run(plan: Plan, budget_s: float) -> dict:
    """Denoising rows and VAE first, then memory and end-to-end, then the torch.compile rows (their
    compilation is the slowest part; the budget drops them first)."""
    t_start = time.perf_counter()
    card, peak = peak_flops(plan.device)
    out: dict = {"device": card, "peak_flops": peak, "torch": torch.__version__, "steps": plan.steps,
                 "frames_per_window": plan.frames, "denoise": [], "samplers": [], "vae": [], "flops": {}, "memory": [],
                 "e2e": None}
    comps = {name: random_components(name, plan.device) for name in plan.profiles}
    for comp in comps.values():
        comp.unet.eval()
        comp.vae.to(plan.device).eval()

    def row(name, dname, b, dc, compiled):
        tag = f"{name} {dname} batch {b} deepcache {dc} compile {compiled}"
        if time.perf_counter() - t_start > budget_s:
            plan.skipped.append(tag)
            return
        comp, dtype = comps[name], DTYPES[dname]
        unet = comp.unet.to(plan.device, dtype)
        model = torch.compile(unet, backend=plan.compile_backend) if compiled else unet
        sec = time_denoise(model, comp, plan, dtype, b, dc)
        frames = b * plan.frames
        flops = out["flops"][name]["per_frame_per_pass"] * frames * 2 * plan.steps  # CFG: 2 passes a frame
        # DeepCache's reuse steps skip most of the UNet, so the ceiling is stated for full passes only.
        out["denoise"].append({"profile": name, "dtype": dname, "batch": b, "deepcache": dc, "compile": compiled,
                               "seconds": sec, "frames_per_s": frames / sec,
                               "flops_fraction": flops / sec / peak if (peak and not dc) else None})

    for name, comp in comps.items():
        size = comp.profile.resolution
        k = 2 ** (len(comp.vae.config.block_out_channels) - 1)
        for dname in plan.dtypes:
            dtype = DTYPES[dname]
            unet = comp.unet.to(plan.device, dtype)
            if name not in out["flops"]:
                out["flops"][name] = {
                    "per_frame_per_pass": unet_flops_per_frame(unet, size // k, token_shape(comp), plan.device, dtype,
                                                               plan.frames),
                    "attention": attention_kernel(unet, size // k, token_shape(comp), plan.device, dtype)}
            for b in plan.batches:
                for dc in plan.deepcache:
                    row(name, dname, b, dc, False)
            out["vae"].append({"profile": name, "dtype": dname,
                               **time_vae(comp.vae.to(dtype), size, plan.frames, plan.device, dtype)})
    dtype = DTYPES[plan.dtypes[0]]
    for name, comp in comps.items():
        comp.unet.to(plan.device, dtype)
        comp.vae.to(plan.device, dtype)
        base = None
        for label, sched, steps, interval, dc in plan.samplers:
            if time.perf_counter() - t_start > budget_s:
                plan.skipped.append(f"{name} sampler {label}")
                continue
            sec = time_sampler(comp, plan, dtype, sched, steps, interval, dc)
            base = sec if base is None else base
            out["samplers"].append({"profile": name, "sampler": label, "dtype": plan.dtypes[0], "seconds": sec,
                                    "frames_per_s": plan.frames / sec, "speedup": base / sec})
    mem = comps.get(plan.memory_profile) or random_components(plan.memory_profile, plan.device)
    with tempfile.TemporaryDirectory(prefix="lipsync-gpu-bench-") as tmp:
        work = Path(tmp)
        for s in plan.memory_seconds:
            if time.perf_counter() - t_start > budget_s:
                plan.skipped.append(f"memory {s:g} s")
                continue
            out["memory"].append(generate(mem, plan, dtype, s, (256, 256), plan.memory_steps, work))
        if time.perf_counter() - t_start > budget_s:
            plan.skipped.append("end-to-end")
        else:
            out["e2e"] = generate(mem, plan, dtype, plan.e2e_seconds, plan.e2e_size, plan.e2e_steps, work)
    for name in plan.profiles:
        for dname in plan.compile_dtypes:
            row(name, dname, 1, 0, True)
    out["skipped"] = plan.skipped
    out["total_s"] = time.perf_counter() - t_start
    return out


def table(r: dict) -> str:
    lines = [f"device: {r['device']}  (dense fp16/bf16 peak {r['peak_flops'] or 'n/a'} FLOP/s)  torch {r['torch']}",
             f"denoising, {r['steps']} steps, audio CFG, {r['frames_per_window']}-frame windows:",
             f"{'profile':16s} {'dtype':5s} {'batch':>5s} {'deepc':>5s} {'compile':>7s} {'frames/s':>9s} {'peak %':>7s}"]
    for d in r["denoise"]:
        frac = f"{100 * d['flops_fraction']:.1f}" if d["flops_fraction"] else "-"
        lines.append(f"{d['profile']:16s} {d['dtype']:5s} {d['batch']:5d} {d['deepcache']:5d} {str(d['compile']):>7s} "
                     f"{d['frames_per_s']:9.2f} {frac:>7s}")
    for name, f in r["flops"].items():
        lines.append(f"{name}: {f['per_frame_per_pass'] / 1e9:.1f} GFLOP per frame per UNet pass, "
                     f"attention kernel: {f['attention']}")
    if r.get("samplers"):
        lines.append("samplers (whole windows: VAE encode + steps + VAE decode, batch 1; speed-up vs the first):")
    for d in r.get("samplers", []):
        lines.append(f"{d['profile']:16s} {d['sampler']:22s} {d['dtype']:5s} {d['frames_per_s']:9.2f} frames/s "
                     f"x{d['speedup']:.2f}")
    for v in r["vae"]:
        lines.append(f"VAE {v['profile']} {v['dtype']}: encode {v['encode']:.1f} frames/s, decode {v['decode']:.1f} frames/s")
    for m in r.get("memory", []):
        peak = f"{m['peak_gpu_mib']:.0f} MiB" if m["peak_gpu_mib"] is not None else "n/a (CPU)"
        lines.append(f"generate {m['seconds']:g} s input: peak GPU memory {peak}, {m['frames_per_s']:.2f} frames/s")
    if r.get("e2e"):
        e = r["e2e"]
        lines.append(f"generate end-to-end, {e['seconds']:g} s {e['size'][0]}x{e['size'][1]}, {e['steps']} steps: "
                     f"{e['frames_per_s']:.2f} frames/s")
    if r["skipped"]:
        lines.append(f"skipped (budget): {', '.join(r['skipped'])}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU, tiny profile, every code path")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --dry)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip remaining rows after this many seconds")
    ap.add_argument("--out", default="out/bench/gpu.json")
    args = ap.parse_args(argv)
    plan = Plan.dry() if args.dry else Plan()
    budget = float("inf") if args.dry else args.budget_s  # a dry run must reach every path
    if args.device:
        plan.device = args.device
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --dry for the CPU code-path check")
    result = run(plan, budget)
    print(table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
