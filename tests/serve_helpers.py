"""Shared pieces of the Serve tests: test media, deploying the application, HTTP helpers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

FAST = {"num_steps": "1"}
_SERVE: dict[str, int] = {}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_port(ray_session) -> int:
    """Ray Serve started once in the session's Ray instance, on a free (non-default) port on
    127.0.0.1; test modules deploy their applications on it in turn. Import it with ``ray_session``
    (tests/ray_fixtures.py). pytest registers it once per importing module: the first instance
    starts Serve, later ones reuse it, and the one that started it shuts Serve down at session end."""
    from ray import serve

    started = "port" not in _SERVE
    if started:
        _SERVE["port"] = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": _SERVE["port"]})
    try:
        yield _SERVE["port"]
    finally:
        if started:
            _SERVE.clear()
            serve.shutdown()


@dataclass
class Service:
    base: str
    app_name: str
    state_dir: Path
    work_dir: Path
    settings: dict

    def url(self, path: str) -> str:
        return self.base + path


def settings_for_test(mode: str, state_dir: Path, work_dir: Path, **limits) -> dict:
    """Settings for a test deployment: small limits, fast job heartbeats, one model replica
    (1 CPU of the 2, two torch threads)."""
    return {
        "mode": mode,
        "state_dir": str(state_dir),
        "model": {"num_cpus": 1, "num_gpus": 0, "torch_threads": 2, "work_dir": str(work_dir),
                  "max_queued_requests": 8, "health_check_period_s": 1},
        "ingress": {"num_cpus": 0.1, "health_check_period_s": 1},
        "limits": {"max_upload_mb": 1, "max_media_seconds": 4, "generate_max_seconds": 2.5, "max_text_chars": 200,
                   "max_pending_requests": 2, "retry_after_s": 3, "request_timeout_s": 120,
                   "upload_idle_timeout_s": 2, **limits},
        "jobs": {"heartbeat_s": 0.5, "stale_after_s": 3, "max_attempts": 2, "poll_s": 0.2},
        "defaults": {"web_num_steps": 1},
    }


def deploy(port: int, app_name: str, settings: dict) -> Service:
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(settings), name=app_name, route_prefix="/",
              logging_config={"log_level": "WARNING", "enable_access_log": False})
    return Service(f"http://127.0.0.1:{port}", app_name, Path(settings["state_dir"]),
                   Path(settings["model"]["work_dir"]), settings)


def undeploy(service: Service) -> None:
    from ray import serve

    serve.delete(service.app_name)


def make_media(root: Path, kit) -> dict[str, Path]:
    """Synthetic talking heads and the broken or unsuitable files the error tests send.
    ``kit``: the ``media_kit`` fixture (tests/conftest.py)."""
    import cv2

    from lipsync.media import iter_frames, save_wav
    from lipsync.synth.corpus import make_clip

    sine, write_video = kit.sine, kit.write_video
    root = Path(root)
    make_clip(root / "one", seed=31, seconds=1.0, size=128, langs=["en"])  # 25 frames
    make_clip(root / "short", seed=32, seconds=0.6, size=128, langs=["en"])  # 15 frames: one window
    files = {
        "video": root / "one" / "video.mp4", "audio": root / "one" / "audio.wav",
        "short_video": root / "short" / "video.mp4", "short_audio": root / "short" / "audio.wav",
    }
    first = next(iter(iter_frames(str(files["video"])))).image
    files["image"] = root / "face.png"
    cv2.imwrite(str(files["image"]), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
    files["no_face"] = Path(write_video(root / "no_face.mp4", 15, 25, size=(96, 128)))
    files["silent_video"] = Path(write_video(root / "silent.mp4", 10, 25))
    files["long_audio"] = root / "long.wav"
    save_wav(str(files["long_audio"]), sine(5.0, 16000)[0], 16000)
    files["mid_audio"] = root / "mid.wav"
    save_wav(str(files["mid_audio"]), sine(3.0, 16000)[0], 16000)
    files["text_as_mp4"] = root / "notes.mp4"
    files["text_as_mp4"].write_text("this is not a video, just some text\n" * 20)
    files["garbage"] = root / "garbage.mp4"
    files["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    files["empty"] = root / "empty.wav"
    files["empty"].write_bytes(b"")
    return files


def wait_job(requests, service: Service, job_id: str, timeout: float = 180.0, until=("done", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        r = requests.get(service.url(f"/jobs/{job_id}"), timeout=10)
        assert r.status_code == 200, r.text
        job = r.json()
        seen.append((job["status"], job["progress"]))
        if job["status"] in until:
            job["_seen"] = seen
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not {until} after {timeout} s; seen {seen[-5:]}")
