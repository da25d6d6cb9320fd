"""Access control of the HTTP API without Ray: the API key, CORS and cross-origin refusals
(serve/access.py) around a stand-in app, job ids that never become paths, and the page asking for
the key. The same middleware over real HTTP (a `lipsync serve` process with $LIPSYNC_API_KEY) is
checked in tests/test_serve_overload.py."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from serve.access import AccessMiddleware, configure_access  # noqa: E402
from serve.config import AccessSettings, load_settings, resolve_api_key  # noqa: E402
from serve.limits import BodyLimitMiddleware, configure_body_limits  # noqa: E402
from serve.store import JobStore, new_job_id, valid_job_id  # noqa: E402

KEY = "s3cret-key"


@pytest.fixture()
def client():
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/info")
    def info():
        return {"info": 1}

    @app.post("/jobs")
    def jobs():
        return {"id": "x"}

    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AccessMiddleware)
    configure_body_limits(load_settings({}).limits)
    yield TestClient(app)
    configure_access(AccessSettings(), None)


def test_api_key(client):
    configure_access(AccessSettings(), hashlib.sha256(KEY.encode()).hexdigest())
    assert client.get("/healthz").status_code == 200  # open: load balancers, probes
    for path in ("/info", "/jobs/0123"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"] == "Unauthorized" and "X-API-Key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/jobs", files={"video": ("v.mp4", b"x" * 5000)})  # refused before the upload is used
    assert r.status_code == 401
    for headers in ({"X-API-Key": "wrong"}, {"Authorization": "Basic " + KEY}, {"Authorization": "Bearer"}):
        assert client.get("/info", headers=headers).status_code == 401
    assert client.get("/info", headers={"X-API-Key": KEY}).json() == {"info": 1}
    assert client.get("/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.post("/jobs", headers={"authorization": f"bearer {KEY}"}).status_code == 200
    configure_access(AccessSettings(), None)  # no key configured: open
    assert client.get("/info").status_code == 200


def test_key_sources(monkeypatch):
    monkeypatch.delenv("LIPSYNC_API_KEY", raising=False)
    assert resolve_api_key(AccessSettings()) is None
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    assert resolve_api_key(AccessSettings(api_key_sha256=digest.upper())) == digest
    monkeypatch.setenv("LIPSYNC_API_KEY", KEY)
    assert resolve_api_key(AccessSettings()) == digest
    assert resolve_api_key(AccessSettings(api_key="other")) == hashlib.sha256(b"other").hexdigest()  # flag wins
    with pytest.raises(ValueError, match="api_key_sha256"):
        load_settings({"access": {"api_key_sha256": "abc"}})
    assert load_settings({"access": {"cors_origins": "https://a.example/, https://b.example"}}).access.cors_origins \
        == ["https://a.example", "https://b.example"]
    # build_app keeps only the hash in the deployment's arguments
    from serve.cli import settings_from_args
    from lipsync.cli import build_parser

    app_args, _ = settings_from_args(build_parser().parse_args(
        ["serve", "--api_key", "k1", "--cors_origins", "https://x.example", "--max_queued_jobs", "7",
         "--max_pending_requests", "3"]))
    assert app_args["access"]["api_key"] == "k1" and app_args["access"]["cors_origins"] == ["https://x.example"]
    assert app_args["jobs"]["max_queued"] == 7 and app_args["limits"]["max_pending_requests"] == 3


def test_cors_off_unless_configured(client):
    configure_access(AccessSettings(), None)
    r = client.get("/info", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    # a page elsewhere cannot make a visitor's browser submit work; same-origin and non-browser clients can
    r = client.post("/jobs", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "Forbidden"
    assert client.post("/jobs", headers={"Origin": "null"}).status_code == 403
    assert client.post("/jobs", headers={"Origin": "http://testserver"}).status_code == 200
    assert client.post("/jobs").status_code == 200
    assert client.options("/jobs", headers={"Origin": "https://app.example",
                                            "Access-Control-Request-Method": "POST"}).status_code == 405

    configure_access(AccessSettings(cors_origins=["https://app.example"]), hashlib.sha256(KEY.encode()).hexdigest())
    pre = client.options("/jobs", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "x-api-key"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    r = client.post("/jobs", headers={"Origin": "https://app.example", "X-API-Key": KEY})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    r = client.post("/jobs", headers={"Origin": "https://app.example"})  # CORS does not replace the key
    assert r.status_code == 401
    assert client.post("/jobs", headers={"Origin": "https://other.example", "X-API-Key": KEY}).status_code == 403


def test_job_ids_never_become_paths(tmp_path):
    store = JobStore(tmp_path)
    good = new_job_id()
    assert valid_job_id(good) and store.job_dir(good) == tmp_path / "jobs" / good
    for bad in ("../../etc/passwd", "..", "", "0123456789ABCDEF0123456789abcdef", good + "/x", None, "a" * 31):
        assert not valid_job_id(bad)
        with pytest.raises(ValueError, match="not a job id"):
            store.job_dir(bad)
    assert store.get("../../etc/passwd") is None  # a lookup is only a lookup


def test_page_asks_for_the_key():
    from serve.page import render_page

    settings = load_settings({"mode": "web"})
    assert '"api_key_required": false' in render_page(settings, api_key_required=False)
    page = render_page(settings, api_key_required=True)
    assert '"api_key_required": true' in page and 'id="api_key"' in page and '"X-API-Key": key' in page
    assert KEY not in page
