"""Latency and throughput of the HTTP service: POST /generate of a 3 s synthetic clip at several
client concurrencies, against the Ray Serve application started here on a local Ray instance.

    .venv/bin/python benchmarks/serve_latency.py                       # num_steps 2, concurrency 1 4 8
    .venv/bin/python benchmarks/serve_latency.py --num_steps 20 --replicas 2 --torch_threads 1

Reports, per concurrency: requests sent, 200 / 503 counts, p50 / p95 latency of the 200s (seconds,
upload to last byte; beside it the p50 of the pipeline's own time in the model replica, so the
difference is queueing plus HTTP / Serve overhead), throughput (finished requests per second and seconds of output video per
second of wall time). A short warm-up request runs first (model load, first-call costs).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentile(values, q):
    return float(np.percentile(values, 100 * q)) if len(values) else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_steps", type=int, default=2, help="denoising steps per request (default 2)")
    p.add_argument("--seconds", type=float, default=3.0, help="clip length (default 3)")
    p.add_argument("--concurrency", default="1,4,8", help="client concurrencies (default 1,4,8)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per concurrency level (default: max(4, concurrency))")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    p.add_argument("--model_cpus", type=float, default=1.0, help="CPUs reserved per model replica (default 1)")
    p.add_argument("--torch_threads", type=int, default=None, help="torch threads per replica (default: all cores)")
    p.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--port", type=int, default=18765)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()

    import ray
    import requests
    from ray import serve

    from lipsync.synth.corpus import make_clip
    from serve.app import build_app

    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="lipsync-serve-bench-"))
    make_clip(work / "clip", seed=5, seconds=args.seconds, size=256, langs=["en"])
    video, audio = work / "clip" / "video.mp4", work / "clip" / "audio.wav"

    cores = os.cpu_count() or 1
    ray.init(address="local", num_cpus=args.num_cpus or cores, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    settings = {
        "mode": "api", "state_dir": str(work / "state"),
        "model": {"num_replicas": args.replicas, "num_cpus": args.model_cpus, "num_gpus": 0,
                  "torch_threads": args.torch_threads or max(1, cores // args.replicas), "max_queued_requests": 64},
        "limits": {"max_pending_requests": max(levels) * 2, "request_timeout_s": 3600},
    }
    t0 = time.perf_counter()
    serve.run(build_app(settings), name="lipsync-bench", route_prefix="/")
    startup = time.perf_counter() - t0
    base = f"http://127.0.0.1:{args.port}"

    def one(_):
        t = time.perf_counter()
        with open(video, "rb") as v, open(audio, "rb") as a:
            r = requests.post(base + "/generate", files={"video": ("v.mp4", v), "audio": ("a.wav", a)},
                              data={"num_steps": str(args.num_steps)}, timeout=3600)
        return (r.status_code, time.perf_counter() - t, float(r.headers.get("x-lipsync-media-seconds", 0) or 0),
                float(r.headers.get("x-lipsync-elapsed-seconds", 0) or 0))

    code, warm, *_ = one(0)
    assert code == 200, f"warm-up request failed with {code}"
    print(f"serve start {startup:.1f} s; warm-up request {warm:.1f} s; clip {args.seconds:g} s, "
          f"num_steps {args.num_steps}, {args.replicas} model replica(s), {cores} cores", flush=True)
    rows = []
    for c in levels:
        n = args.requests or max(4, c)
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(c) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t
        ok = [lat for code, lat, *_ in results if code == 200]
        media = sum(m for code, _, m, _ in results if code == 200)
        pipeline = [e for code, _, _, e in results if code == 200]
        row = {"concurrency": c, "requests": n, "ok": len(ok), "busy_503": sum(code == 503 for code, *_ in results),
               "other": sum(code not in (200, 503) for code, *_ in results),
               "p50_s": round(percentile(ok, 0.5), 2), "p95_s": round(percentile(ok, 0.95), 2),
               "pipeline_p50_s": round(percentile(pipeline, 0.5), 2),
               "wall_s": round(wall, 1), "requests_per_s": round(len(ok) / wall, 3),
               "video_s_per_s": round(media / wall, 3)}
        rows.append(row)
        print(f"concurrency {c}: {row['ok']}/{n} ok ({row['busy_503']} x 503), p50 {row['p50_s']} s, "
              f"p95 {row['p95_s']} s (pipeline alone p50 {row['pipeline_p50_s']} s), {row['requests_per_s']} req/s, {row['video_s_per_s']} s of video per s "
              f"({row['wall_s']} s wall)", flush=True)
    serve.delete("lipsync-bench")
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "startup_s": startup, "warmup_s": warm,
                                               "levels": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
