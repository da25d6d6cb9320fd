"""Killed processes in batch dubbing (`lipsync dub`, pipelines/dub.py) on the session's local Ray.

* A denoise worker SIGKILLed mid-job, after the first output was recorded: Ray restarts the actor
  and retries its call (``denoise.retries``); the job ends with one output per row, nothing
  half-written visible, and the output written before the kill untouched.
* The same with ``denoise.retries=0``: the killed call's videos are error rows ("lost: ..."), the
  rest are written; still one output or one error row per manifest row (a rerun then does the
  lost ones: that is the resume of the driver test).
* The driver SIGKILLed after the first output was recorded, then the same command run again: the
  recorded outputs are skipped (same inode, mtime and record), the rest written once, and the
  temporary files the dead run left are gone.

Three tiny clips, one denoising step: what is tested is the bookkeeping, not the frames.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from lipsync.media import iter_frames
from lipsync.options import GenerateOptions
from lipsync.synth.corpus import make_clip
from ray_fixtures import ray_session  # noqa: F401  (the session's Ray instance)

CHEAP = GenerateOptions(num_steps=1, guidance_scale=1.0)
IDS = ["v0", "v1", "v2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """v0 is short (0.8 s: done first), v1 and v2 longer (1.6 s): work is left when v0 is recorded."""
    root = tmp_path_factory.mktemp("kill")
    make_clip(root / "s", seed=51, seconds=0.8, size=128, langs=["en"])
    make_clip(root / "l", seed=52, seconds=1.6, size=128, langs=["en"])
    rows = [("v0", "s"), ("v1", "l"), ("v2", "l")]
    lines = ["id,video,audio"] + [f"{i},{c}/video.mp4,{c}/audio.wav" for i, c in rows]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root


def run(manifest, out, overrides=(), say=None):
    from lipsync.pipeline.manifest import load_job_input
    from pipelines.dub import DubJob, load_config, run_dub

    job = load_job_input(str(out), CHEAP, manifest=str(manifest))
    return run_dub(job, DubJob(str(out), "tiny", None, load_config(None, list(overrides))), say or (lambda m: None))


def every_file(out):
    """Every file under ``out``, hidden ones included, relative."""
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def wait_for_record(out, alive, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        done = [n for n in os.listdir(out / "_done") if n.endswith(".json") and not n.startswith(".")] \
            if (out / "_done").is_dir() else []
        if done:
            return done[0][:-5]
        time.sleep(0.05)
    return None


def snapshot(out, ident):
    """What must not change once ``ident`` is recorded: its output's inode and mtime, its record."""
    st = (out / f"{ident}.mp4").stat()
    return st.st_ino, st.st_mtime_ns, (out / "_done" / f"{ident}.json").read_bytes()


def session_workers(tag):
    """The worker processes of this test session's Ray instance whose title holds ``tag`` (other
    Ray instances on the machine are never touched): children of its raylet."""
    import psutil
    import ray
    from ray._private import ray_constants

    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    found = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            if any(tag in c for c in p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def denoiser_processes():
    return session_workers("MapBatches(DenoiseUDF)")


def kill_busy_denoiser(alive, timeout=300):
    """SIGKILL the denoise actor's process while it works (CPU busy): its call is in flight."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        for p in denoiser_processes():
            try:
                if p.cpu_percent(interval=0.2) > 20:
                    p.send_signal(signal.SIGKILL)
                    return p.pid
            except psutil.NoSuchProcess:
                pass
    return None


def check_rows(out, results, expect):
    """One result per manifest row, in order; an output exactly for the rows that have one; no
    temporary file anywhere under the output folder."""
    assert [r.id for r in results] == IDS
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [(t["id"], t["status"]) for t in table] == [(r.id, r.status) for r in results]
    status = {r.id: r.status for r in results}
    assert status == expect, results
    written = {i for i, s in status.items() if s != "error"}
    files = every_file(out)
    assert not [f for f in files if "partial" in f], files
    assert files == sorted([f"{i}.mp4" for i in written] + [f"_done/{i}.json" for i in written]
                           + ["results.parquet"]), files
    for r in results:
        if r.status == "error":
            assert r.error and r.output and not os.path.exists(r.output)
        else:
            assert r.error is None and len(list(iter_frames(str(out / f"{r.id}.mp4")))) == r.frames
    return table


def show(table):
    for t in table:
        print({k: t[k] for k in ("id", "status", "output", "error", "frames")})


def kill_denoiser_mid_job(clips, out, overrides):
    """Run the job in a thread; after the first record, SIGKILL the busy denoiser. Returns the
    results, the first id recorded, its snapshot taken before the kill, and the killed pid."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("results", run(clips / "m.csv", out, overrides)))
    worker.start()
    first = wait_for_record(out, worker.is_alive)
    before = snapshot(out, first) if first else None
    pid = kill_busy_denoiser(worker.is_alive) if first else None
    worker.join()
    assert first is not None and pid is not None, "the denoiser was never caught working after the first record"
    return box["results"], first, before, pid


def test_killed_denoise_worker_is_replaced_and_its_call_retried(ray_session, clips, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    results, first, before, pid = kill_denoiser_mid_job(
        clips, out, ["prepare.shard_windows=1", "denoise.actors=1", "denoise.retries=3"])
    table = check_rows(out, results, {i: "ok" for i in IDS})
    assert snapshot(out, first) == before  # written before the kill: never denoised or written again
    assert all(p.pid != pid for p in denoiser_processes())
    print(f"\nkilled denoise worker {pid} after {first} was recorded; results:")
    show(table)


def test_killed_denoise_call_without_retries_fails_only_its_videos(ray_session, clips, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    results, first, before, pid = kill_denoiser_mid_job(
        clips, out, ["prepare.shard_windows=1", "denoise.actors=1", "denoise.retries=0"])
    lost = [r for r in results if r.status == "error"]
    assert lost and first not in {r.id for r in lost}
    assert all(re.search(r"l/video\.mp4: lost: the Ray worker (preparing or )?denoising it died more often than "
                         r"the retries allow \(prepare\.retries=2, denoise\.retries=0\)", r.error) for r in lost), lost
    table = check_rows(out, results, {r.id: r.status if r.status == "error" else "ok" for r in results})
    assert snapshot(out, first) == before
    print(f"\nkilled denoise worker {pid} (denoise.retries=0) after {first} was recorded; results:")
    show(table)


def test_killed_driver_rerun_resumes(ray_session, clips, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "lipsync.cli", "dub", "--manifest", str(clips / "m.csv"), "--output_dir", str(out),
           "--num_steps", "1", "--guidance_scale", "1", "--set", "denoise.actors=1", "--set", "prepare.shard_windows=1",
           "--address", address]
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            first = wait_for_record(out, lambda: proc.poll() is None)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert first is not None, (tmp_path / "driver.log").read_text()[-3000:]
    # Ray ends the dead driver's actors; wait for them, so no writer of that run is left.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(session_workers(t) for t in ("FinishWorker", "MapBatches(")):
        time.sleep(0.2)
    recorded = sorted(n[:-5] for n in os.listdir(out / "_done") if n.endswith(".json") and not n.startswith("."))
    assert len(recorded) < len(IDS), "the driver finished before it could be killed"
    before = {i: snapshot(out, i) for i in recorded}
    # What a finish worker killed with its driver leaves: its temporary output and record.
    todo = [i for i in IDS if i not in recorded][-1]
    (out / f".{todo}.0123456789ab.partial.mp4").write_bytes(b"half a video")
    (out / "_done" / f".{todo}.0123456789ab.partial.json").write_bytes(b"{")
    lines = []
    results = run(clips / "m.csv", out, ["denoise.actors=1", "prepare.shard_windows=1"], lines.append)
    table = check_rows(out, results, {i: "skipped" if i in recorded else "ok" for i in IDS})
    assert {i: snapshot(out, i) for i in recorded} == before  # resumed: nothing recorded was redone
    for i in IDS:
        assert json.loads((out / "_done" / f"{i}.json").read_text())["status"] == "ok"
    assert sum(": done," in ln for ln in lines) == len(IDS) - len(recorded)
    print(f"\ndriver killed after {recorded} recorded; rerun results:")
    show(table)
