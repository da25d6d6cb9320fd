"""Overload, slow clients and a full restart of the HTTP service, against a real ``lipsync serve``
process (api mode, tiny profile, small limits) on a local Ray instance started by that process.

    .venv/bin/python benchmarks/serve_overload.py                       # 50 /generate + 200 /jobs at once
    .venv/bin/python benchmarks/serve_overload.py --generate 50 --jobs 200 --json benchmarks/results/serve_overload.json

Phases (a /healthz probe runs once a second through all of them, and the resident memory of the
server's whole process tree (driver, raylet, GCS, Serve controller, proxy, replicas) is sampled
twice a second):

1. start-up: seconds until the server says it serves (it prints what it waits for meanwhile);
2. a slow client trickles a ~1 MB multipart upload over ``--slow_seconds`` (20 s) while the bursts run;
3. ``--generate`` concurrent ``POST /generate`` (a 0.6 s clip, ``num_steps`` 1);
4. ``--jobs`` concurrent ``POST /jobs`` (the same clip), then the accepted jobs run to the end;
5. the whole server process is stopped (Ctrl-C) and started again on the same state dir: every
   accepted job must still be there, done, with its result.

Reports per burst: requests, status counts, whether every 429/503 had ``Retry-After``, p50 / p99
latency (all answers, and the 2xx alone), anything other than 200/202/429/503; the probe's max
latency; the slow upload's outcome; peak RSS (total and largest process); restart figures.
``ServerProcess`` and the request helpers are used by tests/test_serve_overload.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OK_CODES = {200, 202, 429, 503}


def percentile(values, q):
    return float(np.percentile(values, 100 * q)) if len(values) else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, limits: dict | None = None, jobs: dict | None = None, model: dict | None = None,
                 ingress: dict | None = None) -> Path:
    """A Serve config with small limits for these runs (the flags of ``lipsync serve`` override it)."""
    import yaml

    args = {
        "mode": "api",
        "model": {"profile": "tiny", "num_cpus": 1, "num_gpus": 0, "torch_threads": 2, "max_queued_requests": 8,
                  **(model or {})},
        "ingress": {"num_cpus": 0.1, "max_queued_requests": 100, **(ingress or {})},
        "limits": {"max_upload_mb": 2, "max_media_seconds": 10, "generate_max_seconds": 5,
                   "max_pending_requests": 4, "max_uploads": 32, "retry_after_s": 5,
                   "upload_idle_timeout_s": 5, "request_timeout_s": 300, **(limits or {})},
        "jobs": {"max_queued": 20, "heartbeat_s": 1, "stale_after_s": 10, "poll_s": 0.2, **(jobs or {})},
    }
    path.write_text(yaml.safe_dump({"applications": [{"name": "lipsync", "args": args}]}))
    return path


class ServerProcess:
    """``lipsync serve`` as a child process (its own session, so a Ctrl-C here does not reach it)."""

    def __init__(self, port: int, state_dir: Path, config: Path, log: Path, extra_args=(), env=None):
        self.port, self.state_dir, self.config, self.log = port, Path(state_dir), Path(config), Path(log)
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.started_s = None
        self.offset = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lipsync.cli", "serve", "--mode", "api", "--port", str(self.port),
                "--config", str(self.config), "--state_dir", str(self.state_dir), *self.extra_args]

    def start(self, timeout: float = 600.0) -> float:
        t0 = time.monotonic()
        self.offset = len(self.output())  # this start's lines come after the earlier runs'
        self._out = open(self.log, "a")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - t0 < timeout:
            if "is serving on" in self.output()[self.offset:]:
                self.started_s = time.monotonic() - t0
                return self.started_s
            if self.proc.poll() is not None:
                raise RuntimeError(f"lipsync serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"lipsync serve did not start in {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._out.close()
        return self.proc.returncode

    def tree_rss(self) -> tuple[int, int]:
        """(total RSS of the server's process tree, largest single process) in bytes."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        sizes = []
        for p in procs:
            try:
                sizes.append(p.memory_info().rss)
            except psutil.Error:
                pass
        return sum(sizes), max(sizes, default=0)


class RssSampler(threading.Thread):
    def __init__(self, server: ServerProcess, every: float = 0.5):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.peak_total = self.peak_one = 0
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            total, one = self.server.tree_rss()
            self.peak_total, self.peak_one = max(self.peak_total, total), max(self.peak_one, one)
            self.stop_event.wait(self.every)


class Prober(threading.Thread):
    """GET /healthz once a second: its latency must stay small whatever the load."""

    def __init__(self, base: str, headers: dict | None = None, every: float = 1.0):
        super().__init__(daemon=True)
        self.base, self.headers, self.every = base, headers or {}, every
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()

    def run(self):
        import requests

        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                r = requests.get(self.base + "/healthz", headers=self.headers, timeout=30)
                if r.status_code != 200:
                    self.failures.append(str(r.status_code))
            except requests.RequestException as err:
                self.failures.append(type(err).__name__)
            self.latencies.append(time.monotonic() - t0)
            self.stop_event.wait(self.every)


def burst(base: str, path: str, n: int, files: dict, data: dict, headers: dict | None = None,
          timeout: float = 600.0) -> list[dict]:
    """``n`` concurrent multipart POSTs (asyncio + httpx, one connection each). Each result: status,
    latency, Retry-After, the JSON error kind, the body (for 2xx JSON)."""
    import asyncio

    import httpx

    blobs = {field: (name, Path(p).read_bytes(), ctype) for field, (name, p, ctype) in files.items()}

    async def one(client):
        t0 = time.monotonic()
        try:
            r = await client.post(base + path, files=blobs, data=data, headers=headers or {})
        except httpx.HTTPError as err:
            return {"status": type(err).__name__, "seconds": time.monotonic() - t0}
        out = {"status": r.status_code, "seconds": time.monotonic() - t0, "retry_after": r.headers.get("retry-after"),
               "ctype": r.headers.get("content-type", "")}
        if out["ctype"].startswith("application/json"):
            body = r.json()
            out["error"] = body.get("error") if isinstance(body, dict) else None
            out["body"] = body if r.status_code < 300 else None
            out["detail"] = body.get("detail") if isinstance(body, dict) else None
        else:
            out["bytes"] = len(r.content)
        return out

    async def run():
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(n)))

    return asyncio.run(run())


def summarize(results: list[dict]) -> dict:
    codes = Counter(r["status"] for r in results)
    lat = [r["seconds"] for r in results]
    ok = [r["seconds"] for r in results if isinstance(r["status"], int) and 200 <= r["status"] < 300]
    refused = [r for r in results if r["status"] in (429, 503)]
    return {
        "requests": len(results), "status_counts": {str(k): v for k, v in sorted(codes.items(), key=str)},
        "unexpected": sorted({str(r["status"]) for r in results if r["status"] not in OK_CODES}),
        "retry_after_on_all_429_503": all(r.get("retry_after") for r in refused),
        "p50_s": round(percentile(lat, 0.5), 3), "p99_s": round(percentile(lat, 0.99), 3),
        "max_s": round(max(lat, default=float("nan")), 3),
        "p50_2xx_s": round(percentile(ok, 0.5), 3), "p99_2xx_s": round(percentile(ok, 0.99), 3),
        "p50_refused_s": round(percentile([r["seconds"] for r in refused], 0.5), 3),
    }


def slow_upload(base: str, seconds: float, headers: dict | None = None, size: int = 1_000_000,
                result: dict | None = None) -> dict:
    """A client that sends a multipart POST /jobs body in small pieces spread over ``seconds``
    (a piece every 0.5 s, well inside the idle timeout). Returns the status it finally got."""
    result = {} if result is None else result
    host, port = base.removeprefix("http://").split(":")
    head = (b'--b\r\nContent-Disposition: form-data; name="video"; filename="slow.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n")
    tail = b"\r\n--b--\r\n"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (f"POST /jobs HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               f"{extra}Content-Length: {len(head) + size + len(tail)}\r\nConnection: close\r\n\r\n").encode()
    pieces = max(1, int(seconds / 0.5))
    chunk = size // pieces
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=seconds + 120) as s:
        s.sendall(request + head)
        sent = 0
        for i in range(pieces):
            part = chunk if i < pieces - 1 else size - sent
            try:
                s.sendall(bytes(part))
            except OSError:
                break
            sent += part
            time.sleep(0.5)
        try:
            s.sendall(tail)
        except OSError:
            pass
        data = b""
        while True:
            try:
                piece = s.recv(65536)
            except OSError:
                break
            if not piece:
                break
            data += piece
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    body = data.split(b"\r\n\r\n", 1)[1].decode(errors="replace") if b"\r\n\r\n" in data else ""
    result.update(status_line=status, seconds=round(time.monotonic() - t0, 1), body=body[:300], sent=sent)
    return result


def wait_jobs(base: str, ids: list[str], headers: dict | None = None, timeout: float = 1800.0) -> dict:
    import requests

    deadline = time.monotonic() + timeout
    final: dict[str, str] = {}
    while time.monotonic() < deadline and len(final) < len(ids):
        for job_id in ids:
            if job_id in final:
                continue
            r = requests.get(f"{base}/jobs/{job_id}", headers=headers or {}, timeout=30)
            if r.status_code == 200 and r.json()["status"] in ("done", "failed"):
                final[job_id] = r.json()["status"]
        time.sleep(1.0)
    return final


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generate", type=int, default=50, help="concurrent POST /generate (default 50)")
    p.add_argument("--jobs", type=int, default=200, help="concurrent POST /jobs (default 200)")
    p.add_argument("--max_pending_requests", type=int, default=4)
    p.add_argument("--max_queued_jobs", type=int, default=20)
    p.add_argument("--max_uploads", type=int, default=32)
    p.add_argument("--slow_seconds", type=float, default=20.0)
    p.add_argument("--num_steps", type=int, default=1)
    p.add_argument("--api_key", default="bench-key", help="run with this API key (empty: none)")
    p.add_argument("--no_restart", action="store_true", help="skip the restart phase")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()

    import requests

    from lipsync.synth.corpus import make_clip

    work = Path(tempfile.mkdtemp(prefix="lipsync-overload-"))
    make_clip(work / "clip", seed=32, seconds=0.6, size=128, langs=["en"])
    files = {"video": ("v.mp4", work / "clip" / "video.mp4", "video/mp4"),
             "audio": ("a.wav", work / "clip" / "audio.wav", "audio/wav")}
    data = {"num_steps": str(args.num_steps)}
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    config = write_config(work / "serve.yaml", limits={"max_pending_requests": args.max_pending_requests,
                                                        "max_uploads": args.max_uploads},
                          jobs={"max_queued": args.max_queued_jobs})
    server = ServerProcess(free_port(), work / "state", config, work / "server.log",
                           env={"LIPSYNC_API_KEY": args.api_key} if args.api_key else {})
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "settings": {"max_pending_requests": args.max_pending_requests,
                                 "max_queued_jobs": args.max_queued_jobs, "max_uploads": args.max_uploads,
                                 "num_steps": args.num_steps, "api_key": bool(args.api_key)}}
    rss = None
    try:
        report["startup_s"] = round(server.start(), 1)
        print(f"server up in {report['startup_s']} s on {server.base}", file=sys.stderr)
        rss = RssSampler(server)
        rss.start()
        r = requests.post(server.base + "/generate", headers=headers, data=data, timeout=600,
                          files={k: (n, open(f, "rb"), c) for k, (n, f, c) in files.items()})
        report["warmup"] = {"status": r.status_code}
        report["rss_after_warmup_mb"] = round(server.tree_rss()[0] / 2**20)
        prober = Prober(server.base, headers)
        prober.start()
        slow: dict = {}
        slow_thread = threading.Thread(target=slow_upload, args=(server.base, args.slow_seconds, headers),
                                       kwargs={"result": slow}, daemon=True)
        slow_thread.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        gen = burst(server.base, "/generate", args.generate, files, data, headers)
        report["generate"] = {**summarize(gen), "wall_s": round(time.monotonic() - t0, 1)}
        print("generate:", json.dumps(report["generate"]), file=sys.stderr)
        t0 = time.monotonic()
        jobs = burst(server.base, "/jobs", args.jobs, files, data, headers)
        report["jobs"] = {**summarize(jobs), "wall_s": round(time.monotonic() - t0, 1)}
        print("jobs:", json.dumps(report["jobs"]), file=sys.stderr)
        slow_thread.join(args.slow_seconds + 180)
        report["slow_upload"] = slow
        accepted = [r["body"]["id"] for r in jobs if r["status"] == 202]
        health = requests.get(server.base + "/healthz", headers=headers, timeout=30).json()
        report["jobs"]["queued_plus_running_after_burst"] = health["jobs"]["queued"] + health["jobs"]["running"]
        t0 = time.monotonic()
        final = wait_jobs(server.base, accepted, headers)
        report["jobs"]["accepted_finished"] = dict(Counter(final.values()))
        report["jobs"]["drain_s"] = round(time.monotonic() - t0, 1)
        prober.stop_event.set()
        prober.join()
        report["healthz_probe"] = {"probes": len(prober.latencies), "failures": prober.failures,
                                   "p50_s": round(percentile(prober.latencies, 0.5), 3),
                                   "max_s": round(max(prober.latencies, default=float("nan")), 3)}
        rss.stop_event.set()
        rss.join()
        report["peak_rss_mb"] = {"server_tree": round(rss.peak_total / 2**20), "largest_process":
                                 round(rss.peak_one / 2**20)}
        if not args.no_restart:
            rc = server.stop()
            report["restart"] = {"stop_rc": rc}
            report["restart"]["startup_s"] = round(server.start(), 1)
            found = Counter()
            for job_id in accepted:
                r = requests.get(f"{server.base}/jobs/{job_id}", headers=headers, timeout=30)
                status = r.json().get("status") if r.status_code == 200 else str(r.status_code)
                if status == "done":
                    res = requests.get(f"{server.base}/jobs/{job_id}/result", headers=headers, timeout=60)
                    status = "done+result" if res.status_code == 200 and res.content[4:8] == b"ftyp" else status
                found[status] += 1
            report["restart"]["jobs_after_restart"] = dict(found)
    finally:
        if rss is not None:
            rss.stop_event.set()
        server.stop()
    out = server.output()
    report["server_log_tracebacks"] = out.count("Traceback")
    report["startup_lines"] = [ln for ln in out.splitlines() if ln.startswith(("waiting for", "LipSync is serving"))][:12]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
