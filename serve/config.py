"""Settings of the Serve application: one tree of plain dataclasses, read from the ``args`` of an
application in a Serve config file (``lipsync/configs/serve.yaml``) or built by ``lipsync serve``.

Unknown keys are errors (a typo must not silently fall back to a default). No Ray import here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync.media.formats import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from lipsync.options import REQUEST_OPTIONS, GenerateOptions, options_from



@dataclass
class ModelSettings:
    """The model deployment: one pipeline per replica."""

    profile: str = "tiny"
    checkpoint_dir: str | None = None
    device: str = "auto"  # auto: cuda when the replica was given a GPU, else cpu
    dtype: str = "auto"
    num_replicas: int = 1
    # Ray Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...);
    # when set it replaces num_replicas.
    autoscaling: dict | None = None
    num_cpus: float = 1.0
    num_gpus: float | str = "auto"  # auto: 1 when the Ray cluster has a GPU, else 0
    max_ongoing_requests: int = 1  # generations one replica runs at a time
    max_queued_requests: int = 16  # requests waiting for a replica per caller; more -> 503
    torch_threads: int | None = None  # default: the replica's num_cpus
    batch_size: int = 1
    work_dir: str | None = None  # per-request temp files (default: the system temp dir)
    health_check_period_s: float = 10.0


@dataclass
class IngressSettings:
    """The HTTP ingress deployment (FastAPI): uploads, validation, jobs; light on CPU."""

    num_replicas: int = 1
    num_cpus: float = 0.1
    max_ongoing_requests: int = 200  # HTTP requests per replica; admission control is ours (limits)
    # HTTP requests waiting in the Serve proxy for an ingress replica (all max_ongoing_requests busy);
    # more -> 503 + Retry-After from the proxy itself
    max_queued_requests: int = 100
    health_check_period_s: float = 10.0


@dataclass
class Limits:
    max_upload_mb: float = 200.0  # whole request body; more -> 413
    max_media_seconds: float = 600.0  # any uploaded video or audio; longer -> 422
    generate_max_seconds: float = 60.0  # POST /generate speech; longer -> 422 (use POST /jobs)
    max_text_chars: int = 2000
    max_num_steps: int = 100
    video_types: list[str] = field(default_factory=lambda: list(VIDEO_SUFFIXES))
    image_types: list[str] = field(default_factory=lambda: list(IMAGE_SUFFIXES))
    audio_types: list[str] = field(default_factory=lambda: list(AUDIO_SUFFIXES))  # plus video_types
    max_pending_requests: int = 8  # POST /generate running or waiting per ingress replica; more -> 503
    # request bodies of POST /generate and POST /jobs being received at once per ingress replica; more -> 503
    # (a slow uploader holds one of these, never a generation slot, and never blocks other requests)
    max_uploads: int = 32
    retry_after_s: int = 10
    request_timeout_s: float = 600.0  # POST /generate end to end; past it -> 504
    upload_idle_timeout_s: float = 60.0  # no body bytes for this long -> 408


@dataclass
class JobSettings:
    concurrency: int = 1  # jobs one ingress replica runs at a time
    max_queued: int = 100  # queued + running jobs; more -> 503
    timeout_s: float = 3600.0  # a job running longer fails
    max_attempts: int = 2  # runs of a job whose replica died under it before it is marked failed
    heartbeat_s: float = 2.0
    stale_after_s: float = 30.0  # a running job without heartbeat this long lost its replica
    keep_hours: float = 24.0  # finished jobs (record + result) are deleted after this
    poll_s: float = 0.5


def _defaults_options(self) -> GenerateOptions:
    """These defaults as GenerateOptions (each value parsed by the declaration: a bad one is a
    ValueError naming it)."""
    return options_from({o.name: getattr(self, o.name) for o in REQUEST_OPTIONS}, only=REQUEST_OPTIONS)


# Generation options when a request does not give them: one key per request option of
# lipsync/options.py (its name, its declared default; None: the profile's), plus the web page's own.
Defaults = dataclasses.make_dataclass(
    "Defaults",
    [*((o.name, Any, field(default=o.default)) for o in REQUEST_OPTIONS),
     ("web_num_steps", "int | None", field(default=None))],  # the page's step field starts here (None: empty)
    namespace={"options": _defaults_options,
               "__doc__": "Generation options when a request does not give them (lipsync/options.py)."})
Defaults.__module__ = __name__  # pickled by reference, like the other settings classes


@dataclass
class AccessSettings:
    """Who may call the API (``serve/access.py``)."""

    # Required on every route but /healthz, the page and the API docs: `Authorization: Bearer KEY` or
    # `X-API-Key: KEY`. null: $LIPSYNC_API_KEY, else no key (anyone who reaches the port may call it).
    api_key: str | None = None
    # The key's SHA-256 (hex) instead of the key itself (kept out of the config); build_app stores only this.
    api_key_sha256: str | None = None
    # Origins whose pages may call the API from a browser (CORS), e.g. ["https://app.example.com"];
    # empty: no CORS headers, and cross-origin POST/DELETE requests are refused (403).
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class AppSettings:
    mode: str = "web"  # api: the HTTP API; web: the API plus the page at /
    state_dir: str | None = None  # jobs.sqlite, job inputs and results, request temp files
    model: ModelSettings = field(default_factory=ModelSettings)
    ingress: IngressSettings = field(default_factory=IngressSettings)
    limits: Limits = field(default_factory=Limits)
    jobs: JobSettings = field(default_factory=JobSettings)
    defaults: Defaults = field(default_factory=Defaults)
    access: AccessSettings = field(default_factory=AccessSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_state_dir(self) -> Path:
        return resolve_state_dir(self.state_dir)


def resolve_state_dir(value: str | None) -> Path:
    if value:
        return Path(os.path.expanduser(value)).absolute()
    env = os.environ.get("LIPSYNC_STATE_DIR")
    if env:
        return Path(os.path.expanduser(env)).absolute()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "lipsync" / "serve"


def _build(cls, data: Any, where: str):
    if data is None:
        return cls()
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise ValueError(f"serve settings: '{where}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"serve settings: unknown key(s) under '{where}': {', '.join(unknown)} "
                         f"(known: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        sub = _NESTED.get((cls, name))
        values[name] = _build(sub, value, f"{where}.{name}" if where else name) if sub else value
    return cls(**values)


_NESTED = {
    (AppSettings, "model"): ModelSettings,
    (AppSettings, "ingress"): IngressSettings,
    (AppSettings, "limits"): Limits,
    (AppSettings, "jobs"): JobSettings,
    (AppSettings, "defaults"): Defaults,
    (AppSettings, "access"): AccessSettings,
}


def load_settings(args: dict | AppSettings | None) -> AppSettings:
    """Settings from an application's ``args`` mapping (missing keys take the defaults above)."""
    settings = args if isinstance(args, AppSettings) else _build(AppSettings, args or {}, "")
    if settings.mode not in ("api", "web"):
        raise ValueError(f"serve settings: mode must be 'api' or 'web', not {settings.mode!r}")
    try:
        settings.defaults.options()
    except ValueError as err:
        raise ValueError(f"serve settings: defaults.{err}") from None
    acc = settings.access
    if isinstance(acc.cors_origins, str):
        acc.cors_origins = [o.strip() for o in acc.cors_origins.split(",") if o.strip()]
    acc.cors_origins = [o.rstrip("/") for o in acc.cors_origins or []]
    if acc.api_key is not None and not str(acc.api_key).strip():
        raise ValueError("serve settings: access.api_key is empty (leave it out for no key)")
    if acc.api_key_sha256 is not None and not (len(acc.api_key_sha256) == 64 and all(
            c in "0123456789abcdef" for c in acc.api_key_sha256.lower())):
        raise ValueError("serve settings: access.api_key_sha256 must be 64 hex digits (sha256 of the key)")
    for name, minimum in (("max_pending_requests", 1), ("max_uploads", 1), ("retry_after_s", 0)):
        if int(getattr(settings.limits, name)) < minimum:
            raise ValueError(f"serve settings: limits.{name} must be at least {minimum}")
    if int(settings.jobs.max_queued) < 1:
        raise ValueError("serve settings: jobs.max_queued must be at least 1")
    for name in ("video_types", "image_types", "audio_types"):
        setattr(settings.limits, name, [s.lower() if s.startswith(".") else "." + s.lower()
                                        for s in getattr(settings.limits, name)])
    return settings


def resolve_api_key(access: AccessSettings) -> str | None:
    """The SHA-256 of the API key in force: ``access.api_key``, else ``$LIPSYNC_API_KEY``, else
    ``access.api_key_sha256``; None: no key."""
    import hashlib

    key = access.api_key or os.environ.get("LIPSYNC_API_KEY") or None
    if key is not None and key.strip():
        return hashlib.sha256(key.strip().encode()).hexdigest()
    return access.api_key_sha256.lower() if access.api_key_sha256 else None


def merge(base: dict, override: dict) -> dict:
    """``override`` laid over ``base`` recursively (None values in override are ignored)."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key, {}), dict):
            out[key] = merge(out.get(key) or {}, value)
        else:
            out[key] = value
    return out
