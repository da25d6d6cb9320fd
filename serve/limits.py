"""Request body limits and admission for the ingress: size (413) and stalled uploads (408), enforced
while the body streams in, before FastAPI parses (and spools) a multipart form; and the early 503s:
an upload (``POST /generate``, ``POST /jobs``) is refused before its body is read when
``limits.max_uploads`` bodies are already streaming in, and a ``POST /generate`` when
``limits.max_pending_requests`` are already running or waiting (``ADMISSION``, counted per process:
one ingress replica per process). No Ray import here.

The limits live in this module (``configure_body_limits``), not in the ingress class: the ingress's
FastAPI app is pickled when its class is decorated, and a module imported by reference is the one
place both the replica's constructor and this middleware see the same object."""

from __future__ import annotations

import asyncio
import json

from fastapi import HTTPException

from serve.config import Limits
from serve.errors import ApiError

DRAIN_CAP = 64 << 20  # an over-limit body is read (and dropped) up to this much so the client sees the 413

_LIMITS: dict = {"limits": Limits()}
UPLOAD_PATHS = frozenset({"/generate", "/jobs"})
# Per ingress process: bodies being received, POST /generate being served (the handler counts these).
ADMISSION: dict[str, int] = {"uploads": 0, "generate": 0}


def busy_error(why: str, limits: Limits | None = None) -> ApiError:
    limits = limits or _LIMITS["limits"]
    return ApiError(503, f"server busy: {why}; retry after {limits.retry_after_s} s", "Busy",
                    {"Retry-After": str(limits.retry_after_s)})


def configure_body_limits(limits: Limits) -> None:
    _LIMITS["limits"] = limits


class BodyLimitMiddleware:
    """413 for a request body over ``limits.max_upload_mb`` (checked against Content-Length first,
    then counted as it streams in, so nothing over the limit is buffered); 408 when the body
    stalls longer than ``limits.upload_idle_timeout_s``. The rest of an over-limit body is drained
    (up to ``DRAIN_CAP``) before answering, so a client still sending reads the answer instead of a
    reset connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limits: Limits = _LIMITS["limits"]
        max_bytes = int(limits.max_upload_mb * (1 << 20))
        idle = limits.upload_idle_timeout_s
        declared = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    pass
        too_large = ApiError(413, f"upload too large: the limit is {limits.max_upload_mb:g} MB per request",
                             "PayloadTooLarge")
        if declared is not None and declared > max_bytes:
            if declared <= max_bytes + DRAIN_CAP:
                await _drain(receive, idle, DRAIN_CAP + max_bytes)
            return await _send_json(send, too_large)
        upload = scope["path"] in UPLOAD_PATHS
        if upload and ADMISSION["uploads"] >= limits.max_uploads:
            return await send_error(send, receive, busy_error(
                f"{ADMISSION['uploads']} uploads are already in progress", limits), max_bytes)
        if scope["path"] == "/generate" and ADMISSION["generate"] >= limits.max_pending_requests:
            return await send_error(send, receive, busy_error(
                f"{ADMISSION['generate']} requests are already being served", limits), max_bytes)
        state = {"received": 0, "exceeded": False, "counted": upload}
        if upload:
            ADMISSION["uploads"] += 1

        def body_done():
            if state["counted"]:
                state["counted"] = False
                ADMISSION["uploads"] -= 1

        async def limited_receive():
            try:
                message = await asyncio.wait_for(receive(), timeout=idle)
            except asyncio.TimeoutError:
                body_done()
                raise HTTPException(408, f"upload stalled: no data for {idle:g} s") from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > max_bytes:
                    state["exceeded"] = True
                    body_done()
                    raise HTTPException(413, too_large.detail)
                if not message.get("more_body"):
                    body_done()
            else:
                body_done()
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start" and state["exceeded"]:
                await _drain(receive, idle, DRAIN_CAP)
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        finally:
            body_done()


async def _drain(receive, idle: float, cap: int) -> None:
    total = 0
    while total <= cap:
        try:
            message = await asyncio.wait_for(receive(), timeout=idle)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def send_error(send, receive, err: ApiError, cap: int | None = None) -> None:
    """Answer ``err`` to a request whose body has not been read: the body is drained first (up to
    ``cap``, default the upload limit) so a client still sending reads the answer, not a reset."""
    limits: Limits = _LIMITS["limits"]
    if cap is None:
        cap = int(limits.max_upload_mb * (1 << 20))
    await _drain(receive, min(limits.upload_idle_timeout_s, 10.0), min(cap, DRAIN_CAP))
    await _send_json(send, err)


async def _send_json(send, err: ApiError) -> None:
    body = json.dumps({"detail": err.detail, "error": err.kind}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
