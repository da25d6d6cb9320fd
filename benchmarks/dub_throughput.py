"""Batch dubbing throughput: the same N clips through (a) a plain loop of `lipsync generate`
(LipSyncPipeline built once, one process) and (b) `lipsync dub` on a fresh local Ray instance;
plus each stage of (b) alone, and peak memory.

    .venv/bin/python benchmarks/dub_throughput.py [--clips 6] [--seconds 2] [--size 160] [--steps 2]
        [--cpus 2] [--set denoise.actors=1 ...] [--out out/bench]

Figures (frames = output frames of all clips):
  (a) frames/s of the loop (model loaded before the clock starts);
  (b) frames/s of the job, from run_dub's start to its results table: actor start-up included,
      `ray.init` not (reported apart); also its steady rate (frames of the 2nd..last finished
      videos over the time from the first to the last), i.e. once the pools are up;
  b/a for each variant of (a) (torch's default threads, which is what `lipsync generate` does,
  and 1 thread); and per stage, frames/s when that stage runs alone with the pool the job uses (prepare:
  PrepareVideo over every clip; denoise: the prepared shards split over as many processes as the
  job had denoise actors, with the same torch threads; finish: finish_video over every clip),
  then (b) as a share of the slowest stage's rate.
Peak memory: (a) the loop process's peak RSS; (b) the largest sum of RSS over the driver and all
Ray processes it started, sampled every 0.25 s. Each part also reports the CPU (in cores) that
other processes of the machine used meanwhile (`other_processes_cores`): on a shared machine the
figures are only comparable when that is near 0. Tiny profile, random weights (the cost does not
depend on them). Writes out/bench/dub_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_clips(work: Path, n: int, seconds: float, size: int) -> Path:
    from lipsync.synth.corpus import make_clip

    rows = ["id,video,audio"]
    for k in range(n):
        d = work / "clips" / f"c{k}"
        if not (d / "meta.json").exists():
            make_clip(d, seed=500 + k, seconds=seconds, size=size, langs=["en"])
        rows.append(f"c{k},{(d / 'video.mp4').resolve()},{(d / 'audio.wav').resolve()}")
    manifest = work / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def plain_loop(manifest: str, out: str, steps: int, threads: int) -> None:
    """Runs in a subprocess: (a). Prints one JSON line."""
    import torch

    warnings.simplefilter("ignore")
    if threads > 0:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    from lipsync.pipeline import GenerateOptions, LipSyncPipeline
    from lipsync.pipeline.manifest import load_job_input

    job = load_job_input(out, GenerateOptions(num_steps=steps), manifest=manifest)
    pipe = LipSyncPipeline.from_profile("tiny", device="cpu")
    t0 = time.perf_counter()
    frames = 0
    for t in job.tasks:
        frames += pipe(t.output, video=t.video, audio=t.audio, options=t.options).frames
    dt = time.perf_counter() - t0
    print(json.dumps({"frames": frames, "seconds": dt, "frames_per_second": frames / dt,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch_threads": threads}))


class OtherLoad:
    """CPU (in cores) used by processes outside this process tree while the block runs: this
    machine may be shared, and every figure here depends on it."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.cores = 0.0
        self._ours: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample_ours(self):
        import psutil

        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self._ours[p.pid] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass

    def _run(self):
        while not self._stop.is_set():
            self._sample_ours()
            time.sleep(0.25)

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def __enter__(self):
        self._sample_ours()
        self._ours0 = dict(self._ours)
        self._busy0, self._t0 = self._busy(), time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample_ours()
        ours = sum(v - self._ours0.get(pid, 0.0) for pid, v in self._ours.items())
        wall = time.perf_counter() - self._t0
        self.cores = max(0.0, (self._busy() - self._busy0 - ours) / wall)


class MemorySampler:
    """Peak of the summed RSS of this process and its descendants (the Ray instance it started)."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.peak_mb = 0.0
        self.peak_one_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0.0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                total += rss
                self.peak_one_mb = max(self.peak_one_mb, rss)
            self.peak_mb = max(self.peak_mb, total)
            time.sleep(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _plan(cpus: int, overrides: list[str]):
    from pipelines.dub import load_config, plan_pools

    return plan_pools(load_config(None, overrides), float(cpus), 0.0)


def ray_job(manifest: str, out: str, steps: int, cpus: int, overrides: list[str]) -> dict:
    import ray

    from lipsync.pipeline import GenerateOptions
    from lipsync.pipeline.manifest import load_job_input
    from pipelines.dub import DubJob, cluster_resources, load_config, plan_pools, run_dub

    with MemorySampler() as mem:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=int(1e9),
                 logging_level="WARNING")
        t_init = time.perf_counter() - t0
        cfg = load_config(None, overrides)
        plan = plan_pools(cfg, *cluster_resources())
        job = load_job_input(out, GenerateOptions(num_steps=steps), manifest=manifest)
        t1 = time.perf_counter()
        finished = []  # (time, id) of each finished video

        def say(msg: str) -> None:
            if msg.startswith("[") and ": done," in msg:
                finished.append((time.perf_counter(), msg.split("] ", 1)[1].split(":", 1)[0]))

        results = run_dub(job, DubJob(out, "tiny", None, cfg, overwrite=True), say=say)
        dt = time.perf_counter() - t1
        ray.shutdown()
    frames = sum(r.frames or 0 for r in results if r.status == "ok")
    by_id = {r.id: r.frames for r in results}
    # Steady state: from the first finished video to the last, what the pools deliver once started.
    steady = None
    if len(finished) > 1 and finished[-1][0] > finished[0][0]:
        steady = sum(by_id[i] for _, i in finished[1:]) / (finished[-1][0] - finished[0][0])
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    stage_s = {k: sum(json.loads(r.stages)[k]["s"] for r in results) for k in ("prepare", "denoise", "finish")}
    return {"frames": frames, "seconds": dt, "frames_per_second": frames / dt, "ray_init_seconds": t_init,
            "first_video_done_after_s": finished[0][0] - t1 if finished else None,
            "steady_frames_per_second": steady,
            "peak_rss_sum_mb": mem.peak_mb, "peak_rss_one_process_mb": mem.peak_one_mb,
            "plan": plan.describe(), "denoise_actors": plan.denoise_actors, "denoise_threads": plan.denoise_threads,
            "finish_concurrency": plan.finish_concurrency, "stage_seconds_in_job": stage_s}


# -- stages alone ---------------------------------------------------------------------------------
def _components(parts):
    from lipsync.pipeline.components import load_components
    from lipsync.profiles import load_profile

    warnings.simplefilter("ignore")
    return load_components(load_profile("tiny"), None, parts=parts)


def _prepare_all(manifest: str, out: str, steps: int, shards_path: str) -> dict:
    import torch

    from lipsync.face import FaceDetector
    from lipsync.pipeline import GenerateOptions
    from lipsync.pipeline.batch import PrepareVideo, VideoPlan
    from lipsync.pipeline.manifest import load_job_input
    from lipsync.pipeline.job import JobSetup

    torch.set_num_threads(1)
    comps = _components({"audio"})
    stage = PrepareVideo(JobSetup(comps.profile, comps.audio_encoder), 4, detector=FaceDetector(max_faces=8))
    job = load_job_input(out, GenerateOptions(num_steps=steps), manifest=manifest)
    t0 = time.perf_counter()
    shards, plans = [], []
    for t in job.tasks:
        for item in stage(t):
            (plans if isinstance(item, VideoPlan) else shards).append(item)
    dt = time.perf_counter() - t0
    with open(shards_path, "wb") as f:
        pickle.dump((plans, shards), f)
    return {"seconds": dt, "frames": sum(p.n_out for p in plans)}


def _denoise_part(args) -> float:
    shards_path, k, n, threads = args
    import torch

    from lipsync.pipeline.batch import denoise_shards
    from lipsync.pipeline.stages import Denoiser, regen_mask_of

    torch.set_num_threads(threads)
    comps = _components({"unet", "vae"})
    comps.to("cpu")
    den = Denoiser(comps, torch.device("cpu"), torch.float32, regen_mask_of(comps.profile))
    with open(shards_path, "rb") as f:
        _, shards = pickle.load(f)
    mine = shards[k::n]
    t0 = time.perf_counter()
    denoise_shards(den, mine, 1)
    dt = time.perf_counter() - t0
    with open(f"{shards_path}.{k}", "wb") as f:
        pickle.dump(mine, f)
    return dt


def _finish_part(args) -> float:
    shards_path, k, n, out = args
    from lipsync.pipeline.batch import finish_video

    with open(shards_path, "rb") as f:
        plans, _ = pickle.load(f)
    done = []
    i = 0
    while os.path.exists(f"{shards_path}.{i}"):
        with open(f"{shards_path}.{i}", "rb") as f:
            done += pickle.load(f)
        i += 1
    t0 = time.perf_counter()
    for plan in plans[k::n]:
        plan.task.output = os.path.join(out, f"{plan.task.id}.mp4")
        finish_video(plan, [s for s in done if s.id == plan.task.id])
    return time.perf_counter() - t0


def stages_alone(manifest: str, work: Path, steps: int, denoisers: int, threads: int, finishers: int) -> dict:
    ctx = mp.get_context("spawn")
    shards_path = str(work / "shards.pkl")
    with ctx.Pool(1) as pool:  # a fresh process, like the prepare actor
        prep = pool.apply(_prepare_all, (manifest, str(work / "stage-out"), steps, shards_path))
    frames = prep["frames"]
    # Pool start-up (imports, model build) is outside the clock: each part times its own work; the
    # stage's wall time is its slowest part (they run side by side).
    with ctx.Pool(denoisers) as pool:
        den = max(pool.map(_denoise_part, [(shards_path, k, denoisers, threads) for k in range(denoisers)]))
    (work / "stage-out").mkdir(exist_ok=True)
    with ctx.Pool(finishers) as pool:
        fin = max(pool.map(_finish_part, [(shards_path, k, finishers, str(work / "stage-out"))
                                          for k in range(finishers)]))
    return {"prepare": {"seconds": prep["seconds"], "frames_per_second": frames / prep["seconds"], "processes": 1},
            "denoise": {"seconds": den, "frames_per_second": frames / den, "processes": denoisers,
                        "torch_threads": threads},
            "finish": {"seconds": fin, "frames_per_second": frames / fin, "processes": finishers}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    ap.add_argument("--loop-threads", default="0,1",
                    help="torch threads of (a), comma list: each is a variant of (a); 0 = torch's default "
                         "(all cores, what `lipsync generate` uses) (default 0,1)")
    ap.add_argument("--set", action="append", default=[], help="dub config override for (b)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: a,b,stages")
    ap.add_argument("--repeat", type=int, default=1, help="runs of (a) then (b), alternating (default 1)")
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--plain-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_child:
        plain_loop(args.plain_child[0], args.plain_child[1], args.steps, int(args.plain_child[2]))
        return
    work = Path(args.out) / "dub"
    work.mkdir(parents=True, exist_ok=True)
    manifest = str(make_clips(work, args.clips, args.seconds, args.size))
    skip = set(filter(None, args.skip.split(",")))
    report = {"clips": args.clips, "seconds_per_clip": args.seconds, "size": args.size, "steps": args.steps,
              "cpus": args.cpus, "machine_cores": os.cpu_count()}
    # Stages alone first, on a quiet machine (a Ray instance that was just shut down may still be
    # exiting and would slow them down).
    from pipelines.dub import cluster_resources  # noqa: F401  (fails early if the package is broken)

    plan = _plan(args.cpus, args.set)
    if "stages" not in skip:
        with OtherLoad() as other:
            report["stages_alone"] = stages_alone(manifest, work, args.steps, plan.denoise_actors,
                                                  plan.denoise_threads, plan.finish_concurrency)
        report["stages_alone"]["other_processes_cores"] = other.cores
        print("stages alone", report["stages_alone"], flush=True)
    variants = [int(x) for x in args.loop_threads.split(",")]
    runs = []
    for r in range(args.repeat):
        run = {}
        if "a" not in skip:
            for threads in variants:
                with OtherLoad() as other:
                    proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--plain-child",
                                           manifest, str(work / "out-a"), str(threads)],
                                          capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["other_processes_cores"] = other.cores
                run[f"a_plain_loop_threads_{res['torch_threads']}"] = res
                print(f"(a) run {r}", res, flush=True)
        if "b" not in skip:
            time.sleep(5)
            with OtherLoad() as other:
                run["b_dub"] = ray_job(manifest, str(work / "out-b"), args.steps, args.cpus, args.set)
            run["b_dub"]["other_processes_cores"] = other.cores
            print(f"(b) run {r}", run["b_dub"], flush=True)
            for k in [k for k in run if k.startswith("a_plain")]:
                run[f"ratio_b_over_{k[2:]}"] = run["b_dub"]["frames_per_second"] / run[k]["frames_per_second"]
            time.sleep(5)
        runs.append(run)
    report["runs"] = runs
    for k in sorted({k for run in runs for k in run if k.startswith("ratio")}):
        report[k] = [run[k] for run in runs if k in run]
    if "stages_alone" in report:
        slowest = min(v["frames_per_second"] for v in report["stages_alone"].values() if isinstance(v, dict))
        report["b_share_of_slowest_stage"] = [run["b_dub"]["frames_per_second"] / slowest
                                              for run in runs if "b_dub" in run]
    path = Path(args.out) / "dub_throughput.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
