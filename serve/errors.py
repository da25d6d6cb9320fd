"""Errors as the HTTP API reports them: a status code and a one-line ``detail`` that names the
input field and the problem (the error's ``.problem``), never a server path. No Ray import here."""

from __future__ import annotations

import re

from lipsync.errors import (
    CheckpointError,
    LipSyncError,
    MediaError,
    SpeechError,
    UnsupportedFormatError,
)

# Absolute paths with at least two components (what a temp file name looks like).
_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:]+/)+[^\s'\",:;)]*")


class ApiError(Exception):
    """An error with its HTTP status, safe to show as is."""

    def __init__(self, status: int, detail: str, kind: str | None = None, headers: dict | None = None):
        self.status = status
        self.detail = detail
        self.kind = kind or type(self).__name__
        self.headers = headers or {}
        super().__init__(detail)

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail, "error": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "ApiError":
        return cls(int(d["status"]), str(d["detail"]), d.get("error"))


def scrub(text: str, names: dict[str, str] | None = None) -> str:
    """``text`` with every known local path replaced by its public name and any other absolute
    path replaced by ``<file>``."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return _PATH.sub("<file>", text)


def status_of(err: Exception) -> int:
    if isinstance(err, UnsupportedFormatError):
        return 415
    if isinstance(err, (MediaError, SpeechError)):
        return 422
    if isinstance(err, CheckpointError):
        return 500
    if isinstance(err, ValueError):
        return 400
    return 500


def describe(err: Exception, names: dict[str, str] | None = None) -> ApiError:
    """The public form of an error raised while handling inputs whose local paths are the keys of
    ``names`` (values: the field names the client used, e.g. ``{"/tmp/x/video.mp4": "video"}``)."""
    names = names or {}
    status = status_of(err)
    if isinstance(err, (MediaError, CheckpointError)):
        field = names.get(err.path) or ("model weights" if isinstance(err, CheckpointError) else "input")
        detail = f"{field}: {scrub(err.problem, names)}"
        if isinstance(err, CheckpointError):
            detail = "the server's model weights cannot be loaded: " + scrub(err.problem, names)
    elif isinstance(err, SpeechError):
        detail = "text: " + scrub(str(err), names)
    elif isinstance(err, (LipSyncError, ValueError)):
        detail = scrub(str(err), names)
    else:
        detail = "internal server error"
    return ApiError(status, detail, type(err).__name__)
