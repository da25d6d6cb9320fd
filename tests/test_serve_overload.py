"""A real `lipsync serve` process under load and across a restart (the lean version of
benchmarks/serve_overload.py): start-up says what it waits for and a second server on the same port
stops with one line; the API key over real HTTP; bursts of POST /generate and POST /jobs get only
200/202/503 (+ Retry-After) and the job queue stays within its bound; a slow upload does not hold up
/healthz or other requests; jobs survive a stop and start of the whole server process.

The server is a child process with its own local Ray instance (not the session's), api mode, tiny
profile, small limits; one for the module, restarted once by the last test.
"""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")
pytest.importorskip("httpx")
pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from serve_overload import ServerProcess, burst, free_port, slow_upload, write_config  # noqa: E402

KEY = "test-overload-key"
AUTH = {"X-API-Key": KEY}
MAX_QUEUED = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from lipsync.synth.corpus import make_clip

    root = tmp_path_factory.mktemp("overload_media")
    make_clip(root / "short", seed=32, seconds=0.6, size=128, langs=["en"])
    return {"video": ("v.mp4", root / "short" / "video.mp4", "video/mp4"),
            "audio": ("a.wav", root / "short" / "audio.wav", "audio/wav")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload_server")
    config = write_config(root / "serve.yaml", limits={"max_pending_requests": 2, "max_uploads": 16,
                                                        "retry_after_s": 3, "upload_idle_timeout_s": 4},
                          jobs={"max_queued": MAX_QUEUED, "heartbeat_s": 0.5, "stale_after_s": 5})
    proc = ServerProcess(free_port(), root / "state", config, root / "server.log", env={"LIPSYNC_API_KEY": KEY})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def post(server, path, clip, data=None, headers=AUTH, timeout=300):
    files = {k: (n, open(p, "rb"), c) for k, (n, p, c) in clip.items()}
    try:
        return requests.post(server.base + path, files=files, data=data or {"num_steps": "1"}, headers=headers,
                             timeout=timeout)
    finally:
        for _, f, _ in files.values():
            f.close()


def test_startup_says_what_it_waits_for_and_a_second_server_stops_with_one_line(server):
    out = server.output()
    assert "LipSync is serving on" in out and "Traceback" not in out, out[-2000:]
    assert "starting a local Ray instance" in out
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "lipsync.cli", "serve", "--mode", "api", "--port", str(server.port)],
                            capture_output=True, text=True, timeout=120)
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert str(server.port) in lines[0] and "Traceback" not in second.stderr
    assert time.monotonic() - t0 < 60  # refused before any Ray start


def test_api_key_over_http(server):
    r = requests.get(server.base + "/healthz", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # open, but says nothing more without the key
    assert "jobs" in requests.get(server.base + "/healthz", headers=AUTH, timeout=30).json()
    for method, path in (("get", "/info"), ("get", "/options"), ("get", "/jobs/" + "0" * 32),
                         ("delete", "/jobs/" + "0" * 32), ("get", "/examples/face.mp4")):
        r = getattr(requests, method)(server.base + path, timeout=30)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized", (path, r.text)
    assert requests.get(server.base + "/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200
    r = requests.get(server.base + "/jobs/../../etc/passwd", headers=AUTH, timeout=30)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    r = requests.get(server.base + "/jobs/not-a-job-id", headers=AUTH, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    r = requests.get(server.base + "/info", headers={**AUTH, "Origin": "https://elsewhere.example"}, timeout=30)
    assert "access-control-allow-origin" not in r.headers  # CORS off unless configured


def test_generate_burst_only_200_or_503(server, clip):
    results = burst(server.base, "/generate", 10, clip, {"num_steps": "1"}, AUTH)
    codes = [r["status"] for r in results]
    assert set(codes) <= {200, 503}, results
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for r in results:
        if r["status"] == 503:
            assert r["retry_after"] == "3" and r["error"] == "Busy" and r["seconds"] < 30, r
        else:
            assert r["ctype"] == "video/mp4" and r["bytes"] > 1000
    assert requests.get(server.base + "/healthz", headers=AUTH, timeout=30).json()["pending_requests"] == 0


def test_job_burst_stays_within_the_queue_bound(server, clip):
    results = burst(server.base, "/jobs", 12, clip, {"num_steps": "1"}, AUTH)
    codes = [r["status"] for r in results]
    assert set(codes) <= {202, 503}, results
    assert 1 <= codes.count(202) <= MAX_QUEUED + 2, codes  # + the ones that finished during the burst
    assert all(r["retry_after"] == "3" for r in results if r["status"] == 503)
    jobs = requests.get(server.base + "/healthz", headers=AUTH, timeout=30).json()["jobs"]
    assert jobs["queued"] + jobs["running"] <= MAX_QUEUED, jobs


def test_slow_upload_does_not_block_others(server, clip):
    result: dict = {}
    slow = threading.Thread(target=slow_upload, args=(server.base, 8.0, AUTH), kwargs={"result": result,
                                                                                     "size": 200_000})
    slow.start()
    time.sleep(1.0)
    latencies = []
    while slow.is_alive():
        t0 = time.monotonic()
        assert requests.get(server.base + "/healthz", timeout=30).status_code == 200
        r = requests.get(server.base + "/options", headers=AUTH, timeout=30)
        assert r.status_code == 200
        latencies.append(time.monotonic() - t0)
        time.sleep(0.5)
    slow.join()
    assert len(latencies) >= 5 and max(latencies) < 5, latencies
    # The trickled body is a zero-filled "video": after ~8 s of upload it gets its answer (415/422 or busy).
    assert result.get("status_line", "").startswith("HTTP/1.1 "), result
    assert result["seconds"] >= 7


def test_jobs_survive_a_restart_of_the_whole_server(server, clip):
    first = post(server, "/jobs", clip)
    assert first.status_code in (202, 503), first.text
    deadline = time.monotonic() + 300
    while first.status_code == 503:  # the burst above may still fill the queue
        assert time.monotonic() < deadline
        time.sleep(3)
        first = post(server, "/jobs", clip)
    job_id = first.json()["id"]
    while requests.get(f"{server.base}/jobs/{job_id}", headers=AUTH, timeout=30).json()["status"] != "done":
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(1)
    queued = post(server, "/jobs", clip)
    assert server.stop() == 0
    assert "stopping" in server.output()
    server.start()
    job = requests.get(f"{server.base}/jobs/{job_id}", headers=AUTH, timeout=30).json()
    assert job["status"] == "done" and job["attempts"] == 1, job
    r = requests.get(f"{server.base}/jobs/{job_id}/result", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.content[4:8] == b"ftyp"
    if queued.status_code == 202:  # queued or running at the stop: finished by the new process
        other = queued.json()["id"]
        deadline = time.monotonic() + 300
        while (status := requests.get(f"{server.base}/jobs/{other}", headers=AUTH,
                                      timeout=30).json()["status"]) not in ("done", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(1)
        assert status == "done"
