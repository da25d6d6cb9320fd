"""Who may call the HTTP API: an optional API key and CORS (``access`` of ``serve/config.py``). No
Ray import here.

- API key: when one is configured (``--api_key``, ``$LIPSYNC_API_KEY``, ``access.api_key`` or
  ``access.api_key_sha256``), every route but ``OPEN_PATHS`` (``/healthz``, the page at ``/`` and the
  API docs) answers 401 JSON unless the request sends ``Authorization: Bearer KEY`` or
  ``X-API-Key: KEY``. Only the key's SHA-256 travels to the replicas and is compared (in constant
  time).
- CORS: off unless ``access.cors_origins`` lists origins (Starlette's ``CORSMiddleware`` then answers
  preflights and adds the headers for those origins only). Without it a browser request from another
  origin that would change something (POST, DELETE, ...) is refused with 403 (so a page elsewhere
  cannot submit jobs through a visitor's browser); same-origin requests and clients that send no
  ``Origin`` (curl, scripts) are not affected.

Like ``serve/limits.py`` the settings live in this module (``configure_access``): the ingress's
FastAPI app is pickled when its class is decorated, and a module imported by reference is where the
replica's constructor and this middleware meet.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from serve.config import AccessSettings
from serve.errors import ApiError
from serve.limits import send_error

OPEN_PATHS = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc",
                        "/favicon.ico"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPOSED_HEADERS = ["Location", "Retry-After", "Content-Disposition", "X-LipSync-Frames", "X-LipSync-Media-Seconds",
                   "X-LipSync-Elapsed-Seconds", "X-LipSync-Random-Weights"]

_ACCESS: dict = {"settings": AccessSettings(), "key_sha256": None}


def configure_access(access: AccessSettings, key_sha256: str | None) -> None:
    _ACCESS["settings"] = access
    _ACCESS["key_sha256"] = key_sha256


def key_required() -> bool:
    return _ACCESS["key_sha256"] is not None


def _header(headers, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def authorized(headers) -> bool:
    """Whether raw ASGI ``headers`` carry the configured key (True when no key is configured)."""
    want = _ACCESS["key_sha256"]
    if want is None:
        return True
    given = _header(headers, b"x-api-key")
    if given is None:
        auth = _header(headers, b"authorization") or ""
        scheme, _, token = auth.partition(" ")
        given = token if scheme.lower() == "bearer" else None
    if not given:
        return False
    digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape")).hexdigest()
    return hmac.compare_digest(digest, want)


def _origin_allowed(origin: str, headers, allowed: list[str]) -> bool:
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    host = _header(headers, b"host")
    try:
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


class AccessMiddleware:
    """The API key check and CORS, outermost in the ingress's middleware stack (so a refused request
    is answered before its body is read, then the body is drained, as the body limits do)."""

    def __init__(self, app):
        self.app = app
        self._cors = None
        self._cors_for: tuple | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origins = tuple(_ACCESS["settings"].cors_origins or ())
        if not origins:
            return await self._guard(scope, receive, send)
        if self._cors_for != origins:
            from starlette.middleware.cors import CORSMiddleware

            self._cors = CORSMiddleware(self._guard, allow_origins=list(origins),
                                        allow_methods=["GET", "POST", "DELETE"],
                                        allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                                        expose_headers=EXPOSED_HEADERS, max_age=600)
            self._cors_for = origins
        return await self._cors(scope, receive, send)

    async def _guard(self, scope, receive, send):
        headers = scope.get("headers", [])
        origin = _header(headers, b"origin")
        if origin and scope["method"] not in SAFE_METHODS and not _origin_allowed(
                origin, headers, list(_ACCESS["settings"].cors_origins or ())):
            return await send_error(send, receive, ApiError(
                403, "cross-origin request refused: this server allows none (access.cors_origins / --cors_origins)",
                "Forbidden"))
        if scope["path"] not in OPEN_PATHS and not authorized(headers):
            return await send_error(send, receive, ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                "Unauthorized", {"WWW-Authenticate": "Bearer"}))
        return await self.app(scope, receive, send)
