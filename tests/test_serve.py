"""The Ray Serve application over real HTTP: generate and job round trips, every limit and bad input
answered with its status code and a JSON message (no server paths), job state surviving a killed
replica, and a burst of concurrent requests. Plus unit tests of the pieces that need no Ray.

One local Ray instance for the session (tests/ray_fixtures.py); the application is deployed once for
this module on a free port and deleted at the end.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import time
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve")

from lipsync.errors import CorruptMediaError, NoFaceError  # noqa: E402
from lipsync.media import probe  # noqa: E402
from ray_fixtures import ray_session  # noqa: E402,F401  (the session's Ray instance)
from serve.config import load_settings  # noqa: E402
from serve.errors import ApiError, describe  # noqa: E402
from serve.store import JobStore, new_job_id  # noqa: E402
from serve.validate import upload_kind  # noqa: E402
from serve_helpers import (  # noqa: E402,F401  (serve_port: Serve on a free port, once per session)
    FAST, deploy, make_media, serve_port, settings_for_test, undeploy, wait_job)

APP = "lipsync-test-api"


# -- pieces without Ray ------------------------------------------------------------------------------
def test_store_claim_heartbeat_and_recovery(tmp_path):
    store = JobStore(tmp_path)
    a, b = new_job_id(), new_job_id()
    store.create(a, {"inputs": {}})
    time.sleep(0.01)
    store.create(b, {"inputs": {}})
    job = store.claim("r1")
    assert job.id == a and job.status == "running" and job.attempts == 1  # oldest first
    assert store.claim("r2").id == b
    assert store.claim("r3") is None
    assert store.heartbeat(a, "r1", 5, 10) and not store.heartbeat(a, "someone-else")
    assert store.get(a).progress == 0.5
    # r1 dies: its job goes back to the queue once, then fails on its second loss.
    assert store.recover_stale(stale_after_s=-1, max_attempts=2) == [(a, "queued"), (b, "queued")]
    assert not store.heartbeat(a, "r1")  # the old runner learns it lost the job
    assert store.claim("r4").attempts == 2
    store.claim("r4")
    assert sorted(store.recover_stale(-1, 2)) == sorted([(a, "failed"), (b, "failed")])
    failed = store.get(a)
    assert failed.status == "failed" and "interrupted" in failed.error and failed.error_status == 503
    assert any("re-queued" in n for n in failed.notes)
    # Records live in the database file: a new store (a restarted replica) sees them.
    assert JobStore(tmp_path).get(a).status == "failed"
    assert store.delete(a).id == a and store.get(a) is None and store.delete(a) is None
    assert store.counts()["failed"] == 1


def test_store_finish_release_expire(tmp_path):
    store = JobStore(tmp_path)
    j = new_job_id()
    store.create(j, {"inputs": {}})
    store.claim("r1")
    assert store.release(j, "r1", "shutting down", count_attempt=False)
    job = store.get(j)
    assert job.status == "queued" and job.attempts == 0 and job.notes == ["shutting down"]
    store.claim("r2")
    assert not store.finish(j, "r1", {"frames": 1})  # not r1's any more
    assert store.finish(j, "r2", {"frames": 3}, ["note"])
    done = store.get(j)
    assert done.status == "done" and done.result == {"frames": 3} and done.public()["frames"] == 3
    assert done.public()["result_url"] == f"/jobs/{j}/result"
    store.job_dir(j).mkdir()
    assert store.expire(keep_s=-1) == [j] and not store.job_dir(j).exists()


def test_errors_never_show_server_paths():
    err = CorruptMediaError("/srv/state/tmp/ab12/video.mp4",
                            "cannot open: [Errno 1094995529] Invalid data: '/srv/state/tmp/ab12/video.mp4'")
    api = describe(err, {"/srv/state/tmp/ab12/video.mp4": "video"})
    assert api.status == 422 and api.detail.startswith("video: cannot open")
    assert "/srv" not in api.detail
    assert describe(NoFaceError("/x/y/video.mp4", "no face found in any frame"), {}).detail == \
        "input: no face found in any frame"
    assert describe(ValueError("bad loop"), {}).status == 400
    other = describe(RuntimeError("/secret/path exploded"), {})
    assert other.status == 500 and "secret" not in other.detail


def test_upload_types():
    limits = load_settings({}).limits
    assert upload_kind("video", "../../etc/passwd.MP4", None, limits) == ("video", ".mp4")
    assert upload_kind("video", "face.PNG", None, limits) == ("image", ".png")  # a still sent as video
    assert upload_kind("audio", "blob", "audio/wav", limits) == ("audio", ".wav")
    assert upload_kind("audio", "clip.mkv", None, limits) == ("audio", ".mkv")  # the audio of a video
    for field, name in (("video", "run.exe"), ("image", "a.mp4"), ("audio", "noext")):
        with pytest.raises(ApiError) as info:
            upload_kind(field, name, None, limits)
        assert info.value.status == 415


def test_settings_and_config_file():
    from serve.cli import settings_from_args
    from lipsync.cli import build_parser

    with pytest.raises(ValueError, match="unknown key"):
        load_settings({"limits": {"max_upload": 3}})
    with pytest.raises(ValueError, match="mode"):
        load_settings({"mode": "desktop"})
    parser = build_parser()
    config = str(Path(__file__).resolve().parents[1] / "lipsync" / "configs" / "serve.yaml")
    args = parser.parse_args(["serve", "--config", config, "--mode", "api", "--replicas", "2"])
    app_args, http = settings_from_args(args)
    assert app_args["mode"] == "api" and app_args["model"]["num_replicas"] == 2 and http["port"] == 8000
    app_args, http = settings_from_args(parser.parse_args(["serve", "--mode", "web"]))
    assert http == {"host": "127.0.0.1", "port": 7860} and app_args["model"]["profile"] == "tiny"


def test_cli_wiring_imports_no_ray():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = "import sys, serve.cli, serve.config, serve.store, serve.validate; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    # The original documentation's entry point answers like `lipsync serve`.
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=root, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--mode {api,web}" in out.stdout and "--port" in out.stdout, out.stderr


# -- the service over HTTP ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory, media_kit):
    return make_media(tmp_path_factory.mktemp("serve_media"), media_kit)


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("serve_api")
    svc = deploy(serve_port, APP, settings_for_test("api", root / "state", root / "work"))
    try:
        yield svc
    finally:
        undeploy(svc)


def post(service, path, files=None, data=None, timeout=180):
    opened = {k: (name, open(p, "rb") if not isinstance(p, bytes) else p) for k, (name, p) in (files or {}).items()}
    try:
        return requests.post(service.url(path), files=opened, data=data or {}, timeout=timeout)
    finally:
        for _, f in opened.values():
            if hasattr(f, "close"):
                f.close()


def assert_json_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word in body["detail"], body
    assert "Traceback" not in r.text and "/tmp" not in r.text and "/root" not in r.text
    return body


def assert_clean(service):
    """No request left files behind (ingress temp folders, model work folders)."""
    tmp = service.state_dir / "tmp"
    assert not list(tmp.iterdir()) if tmp.exists() else True
    assert not list(service.work_dir.iterdir()) if service.work_dir.exists() else True


def test_health_docs_and_index(service):
    r = requests.get(service.url("/healthz"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["mode"] == "api"
    assert requests.get(service.url("/docs"), timeout=10).status_code == 200
    spec = requests.get(service.url("/openapi.json"), timeout=10).json()
    assert {"/generate", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/healthz"} <= set(spec["paths"])
    assert requests.get(service.url("/"), timeout=10).json()["docs"] == "/docs"  # api mode: no page
    # Every request option is a field of POST /generate and POST /jobs, documented as --help says it.
    from lipsync.options import REQUEST_OPTIONS

    for path in ("/generate", "/jobs"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        for o in REQUEST_OPTIONS:
            assert fields[o.name]["description"] == o.help_text(), (path, o.name)
        assert "batch_size" not in fields  # the model deployment's setting, not a request's


def test_options_document(service):
    """GET /options: the declaration, this server's defaults and what a run gets (the web page's source)."""
    from lipsync.options import REQUEST_OPTIONS

    doc = requests.get(service.url("/options"), timeout=10).json()
    # the profile's values of the options that default to it (more appear as options are declared), as
    # the bundled weights set them: a 4-step student without a guidance pass (tiny.yaml says 20 / 3.5)
    assert doc["profile"] == "tiny" and {"num_steps": 4, "guidance_scale": 1.0, "overlap": 4}.items() <= \
        doc["profile_values"].items()
    assert set(doc["profile_values"]) <= {o.name for o in REQUEST_OPTIONS if o.default is None}
    assert [o["name"] for o in doc["options"]] == [o.name for o in REQUEST_OPTIONS]
    by_name = {o["name"]: o for o in doc["options"]}
    steps, seed, loop = by_name["num_steps"], by_name["seed"], by_name["loop"]
    assert steps["server_default"] is None and steps["effective"] == 4 and steps["maximum"] == 100
    assert steps["default_text"] == "the profile's" and steps["description"].endswith("(default: the profile's)")
    assert seed["server_default"] == seed["default"] == seed["effective"] == 1247
    assert loop["choices"] == ["pingpong", "repeat", "freeze"] and loop["kind"] == "choice"
    assert doc["web"] == {"num_steps": 1}
    assert_json_error(requests.get(service.url("/nope"), timeout=10), 404)


def test_generate_round_trip(service, media, tmp_path):
    r = post(service, "/generate", {"video": ("my face (1).mp4", media["video"]),
                                    "audio": ("speech.wav", media["audio"])}, FAST)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["x-lipsync-frames"] == "25"
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    info = probe(str(out))
    assert info.video is not None and info.audio is not None
    assert info.video.num_frames == 25 and abs(info.duration - 1.0) < 0.1
    assert_clean(service)


def test_job_round_trip_image_and_text(service, media, tmp_path):
    r = post(service, "/jobs", {"image": ("face.png", media["image"])},
             {"text": "Hello there.", "lang": "en", **FAST, "seed": "5", "loop": "repeat", "silence_gating": "true"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    job = wait_job(requests, service, job_id)
    assert job["status"] == "done", job
    # The job's options as resolved: the fields given, the server's defaults for the others.
    from lipsync.options import REQUEST_OPTIONS

    assert set(job["options"]) == {o.name for o in REQUEST_OPTIONS}
    assert {"num_steps": 1, "guidance_scale": None, "seed": 5, "face": "largest", "loop": "repeat",
            "silence_gating": True, "overlap": None}.items() <= job["options"].items()
    defaults = {o.name: o.default for o in REQUEST_OPTIONS}
    assert all(job["options"][k] == defaults[k] for k in set(defaults) - {"num_steps", "seed", "loop",
                                                                          "silence_gating"})
    progress = [p for s, p in job["_seen"] if s == "running"]
    assert progress == sorted(progress) and job["progress"] == 1.0
    assert job["frames"] == job["frames_total"] > 0 and job["attempts"] == 1
    r = requests.get(service.url(f"/jobs/{job_id}/result"), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    out = tmp_path / "job.mp4"
    out.write_bytes(r.content)
    info = probe(str(out))
    assert info.video.num_frames == job["frames"] and abs(info.duration - job["media_seconds"]) < 0.1
    assert "attachment" in requests.get(service.url(f"/jobs/{job_id}/result?download=true"),
                                        timeout=30).headers["content-disposition"]
    # Only the result is kept: the inputs are gone once the job finished.
    assert [p.name for p in (service.state_dir / "jobs" / job_id).iterdir()] == ["result.mp4"]
    r = requests.delete(service.url(f"/jobs/{job_id}"), timeout=10)
    assert r.status_code == 200 and r.json()["deleted"]
    assert_json_error(requests.get(service.url(f"/jobs/{job_id}"), timeout=10), 404)
    assert_json_error(requests.get(service.url(f"/jobs/{job_id}/result"), timeout=10), 404)
    assert not (service.state_dir / "jobs" / job_id).exists()
    assert_clean(service)


def test_delete_running_job(service, media):
    """DELETE stops a running job: record and files go at once, the model is free for the next one."""
    job_id = post(service, "/jobs", {"video": ("v.mp4", media["video"]), "audio": ("a.wav", media["audio"])},
                  FAST).json()["id"]
    wait_job(requests, service, job_id, until=("running", "done"))
    r = requests.delete(service.url(f"/jobs/{job_id}"), timeout=10)
    assert r.status_code == 200 and r.json()["deleted"], r.text
    assert_json_error(requests.get(service.url(f"/jobs/{job_id}"), timeout=10), 404)
    deadline = time.monotonic() + 30
    while (service.state_dir / "jobs" / job_id).exists():
        assert time.monotonic() < deadline, "the deleted job's folder is still there"
        time.sleep(0.2)
    r = post(service, "/generate", {"video": ("v.mp4", media["short_video"]),
                                    "audio": ("a.wav", media["short_audio"])}, FAST)
    assert r.status_code == 200 and r.headers["x-lipsync-frames"] == "15"


def test_bad_requests_and_limits(service, media):
    v, a = ("v.mp4", media["video"]), ("a.wav", media["audio"])
    cases = [
        # (files, data, status, words in detail)
        ({"audio": a}, {}, 400, ["video", "image"]),
        ({"video": v, "image": ("f.png", media["image"]), "audio": a}, {}, 400, ["not both"]),
        ({"video": v}, {}, 400, ["audio", "text"]),
        ({"video": v, "audio": a}, {"text": "hello"}, 400, ["not both"]),
        ({"video": ("setup.exe", media["video"]), "audio": a}, {}, 415, ["video", ".exe", "not an accepted type"]),
        ({"video": v, "audio": ("a.txt", media["audio"])}, {}, 415, ["audio"]),
        ({"video": ("notes.mp4", media["text_as_mp4"]), "audio": a}, {}, 415, ["video: not a media file"]),
        ({"video": ("g.mp4", media["garbage"]), "audio": a}, {}, 422, ["video:", "not a readable media container"]),
        ({"video": v, "audio": ("e.wav", media["empty"])}, {}, 422, ["audio:", "empty"]),
        ({"video": v, "audio": ("s.mp4", media["silent_video"])}, {}, 422, ["audio: no audio stream"]),
        ({"video": v, "audio": ("long.wav", media["long_audio"])}, {}, 422, ["audio: 5.0 s long", "limit is 4 s"]),
        ({"video": v, "audio": ("mid.wav", media["mid_audio"])}, {}, 422, ["POST /jobs"]),
        ({"video": v}, {"text": "x" * 201}, 422, ["text:", "limit is 200"]),
        ({"video": v, "audio": a}, {"num_steps": "0"}, 400, ["num_steps"]),
        ({"video": v, "audio": a}, {"num_steps": "abc"}, 400, ["num_steps"]),
        ({"video": v, "audio": a}, {"guidance_scale": "99"}, 400, ["guidance_scale"]),
        ({"video": v, "audio": a}, {"face": "../../etc/passwd"}, 400, ["face"]),
        ({"video": v, "audio": a}, {"num_steps": "500"}, 400, ["num_steps", "max_num_steps 100"]),
        ({"video": v, "audio": a}, {"loop": "bounce"}, 400, ["loop"]),
        ({"video": v, "audio": a}, {"overlap": "16"}, 400, ["overlap: 16 must be between 0 and 15"]),
        ({"video": v, "audio": a}, {"silence_gating": "maybe"}, 400, ["silence_gating"]),
        ({"video": v}, {"text": "hi", "lang": "en; rm -rf"}, 400, ["lang"]),
        ({"video": ("big.mp4", bytes(1_200_000)), "audio": a}, {}, 413, ["too large", "1 MB"]),
    ]
    for files, data, status, words in cases:
        r = post(service, "/generate", files, data, timeout=60)
        assert_json_error(r, status, *words)
    # The same checks guard POST /jobs; a 3 s speech is fine for a job but too long for /generate.
    assert_json_error(post(service, "/jobs", {"video": ("g.mp4", media["garbage"]), "audio": a}), 422, "video:")
    # An over-limit body sent without Content-Length (chunked) is cut off while it streams in.
    boundary = "lipsyncboundary"

    def chunks():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"x.mp4\"\r\n"
               "Content-Type: video/mp4\r\n\r\n").encode()
        for _ in range(6):
            yield bytes(256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.post(service.url("/generate"), data=chunks(), timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_json_error(r, 413, "too large")
    for path in ("/jobs/0123456789abcdef0123456789abcdef", "/jobs/../../etc", "/jobs/x/result"):
        assert_json_error(requests.get(service.url(path), timeout=10), 404)
    assert_json_error(requests.delete(service.url("/jobs/0123456789abcdef0123456789abcdef"), timeout=10), 404)
    assert_clean(service)


def test_video_without_a_face_is_a_clear_error(service, media):
    r = post(service, "/generate", {"video": ("nf.mp4", media["no_face"]), "audio": ("a.wav", media["short_audio"])},
             FAST)
    assert_json_error(r, 422, "no face")
    assert_clean(service)


def test_stalled_upload_times_out(service):
    """A client that stops sending its body gets 408 after upload_idle_timeout_s, not a hung request."""
    host, port = service.base.removeprefix("http://").split(":")
    body = (b"--b\r\nContent-Disposition: form-data; name=\"video\"; filename=\"x.mp4\"\r\n\r\n" + bytes(1000))
    head = (f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: 500000\r\n\r\n").encode()
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    assert b" 408 " in status_line, data[:300]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["detail"].startswith("upload stalled")
    assert time.monotonic() - t0 < 20


def test_job_survives_replica_restart(service, media, ray_session):  # noqa: F811
    """Kill the ingress replica while a job runs: Serve starts a new one, which finds the job record
    in the SQLite store, re-queues the interrupted job (its heartbeat stopped) and finishes it; a job
    finished before the kill is still served."""
    ray = ray_session
    files = {"video": ("v.mp4", media["short_video"]), "audio": ("a.wav", media["short_audio"])}
    first = post(service, "/jobs", files, FAST).json()["id"]
    assert wait_job(requests, service, first)["status"] == "done"
    second = post(service, "/jobs", {"video": ("v.mp4", media["video"]), "audio": ("a.wav", media["audio"])},
                  FAST).json()["id"]
    wait_job(requests, service, second, until=("running", "done"))
    old = requests.get(service.url("/healthz"), timeout=10).json()["replica"]
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)

    deadline = time.monotonic() + 60
    while True:  # the proxy routes to the new replica as soon as it is up
        try:
            health = requests.get(service.url("/healthz"), timeout=5).json()
            if health.get("replica") not in (None, old):
                break
        except (requests.RequestException, ValueError):
            pass
        assert time.monotonic() < deadline, "no new ingress replica"
        time.sleep(0.5)
    job = wait_job(requests, service, second, timeout=180)
    assert job["status"] == "done", job
    assert job["attempts"] == 2 and any("re-queued" in n for n in job["notes"]), job
    assert requests.get(service.url(f"/jobs/{second}/result"), timeout=30).status_code == 200
    kept = requests.get(service.url(f"/jobs/{first}"), timeout=10).json()
    assert kept["status"] == "done" and kept["attempts"] == 1
    r = requests.get(service.url(f"/jobs/{first}/result"), timeout=30)
    assert r.status_code == 200 and r.content[4:8] == b"ftyp"


def test_job_survives_model_replica_death(service, media, ray_session):  # noqa: F811
    """Kill the model replica mid-generation: the job goes back to the queue and runs again on the
    replica Serve starts in its place."""
    from ray import serve

    ray = ray_session
    handle = serve.get_deployment_handle("LipSyncModel", app_name=APP)
    model_actor = handle.info.remote().result(timeout_s=60)["actor"]
    # 3 s of speech (75 frames): the first attempt is still busy when the kill lands.
    job_id = post(service, "/jobs", {"video": ("v.mp4", media["video"]), "audio": ("a.wav", media["mid_audio"])},
                  FAST).json()["id"]
    deadline = time.monotonic() + 120
    while requests.get(service.url(f"/jobs/{job_id}"), timeout=10).json()["frames_done"] == 0:
        assert time.monotonic() < deadline, "the job never started generating"
        time.sleep(0.2)
    ray.kill(ray.get_actor(model_actor, namespace="serve"), no_restart=True)
    job = wait_job(requests, service, job_id, timeout=180)
    assert job["status"] == "done", job
    assert job["attempts"] == 2 and any("model replica stopped" in n for n in job["notes"]), job
    assert handle.info.remote().result(timeout_s=60)["actor"] != model_actor


def test_concurrent_burst_gets_200_or_503(service, media):
    """20 requests at once: the ones over the admission limit get 503 + Retry-After at once, the
    others finish; nothing hangs and the service still answers afterwards."""
    def one(_):
        t0 = time.monotonic()
        r = post(service, "/generate", {"video": ("v.mp4", media["short_video"]),
                                        "audio": ("a.wav", media["short_audio"])}, FAST, timeout=150)
        return r.status_code, r.headers.get("retry-after"), r.headers.get("content-type"), time.monotonic() - t0

    with cf.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    codes = [c for c, *_ in results]
    assert set(codes) <= {200, 503}, results
    assert codes.count(200) >= 1 and codes.count(503) >= 1, results
    for code, retry, ctype, seconds in results:
        if code == 503:
            assert retry == "3" and ctype.startswith("application/json") and seconds < 10
        else:
            assert ctype == "video/mp4"
    health = requests.get(service.url("/healthz"), timeout=10).json()
    assert health["status"] == "ok" and health["pending_requests"] == 0
    assert_clean(service)
