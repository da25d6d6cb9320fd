"""Checks the ingress makes before anything reaches a model replica: accepted types, the
generation options (parsed by their declaration, lipsync/options.py, then the server's limits),
media that opens and has the needed stream, duration limits. No Ray import here.

An uploaded file's name is only ever looked at for its suffix (the type); files are stored under
names the server chooses.
"""

from __future__ import annotations

import os
import re
from typing import Any

from lipsync.errors import EmptyMediaError, MediaError, NoAudioStreamError, NoVideoStreamError
from lipsync.options import REQUEST_OPTIONS, GenerateOptions, options_from

from serve.config import Limits
from serve.errors import ApiError, describe

# What a browser or HTTP client may send when a file name has no usable suffix.
_CONTENT_TYPES = {
    "video/mp4": ".mp4", "video/quicktime": ".mov", "video/x-matroska": ".mkv", "video/webm": ".webm",
    "video/x-msvideo": ".avi", "video/x-m4v": ".m4v",
    "image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp", "image/webp": ".webp",
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav",
    "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/flac": ".flac", "audio/x-flac": ".flac",
    "audio/mp4": ".m4a", "audio/x-m4a": ".m4a", "audio/aac": ".aac", "audio/ogg": ".ogg", "audio/opus": ".opus",
}
_LANG = re.compile(r"^[A-Za-z]{2,12}([-_][A-Za-z0-9]{1,8}){0,4}$")
_VOICE = re.compile(r"^[A-Za-z0-9_+-]{1,32}$")


def upload_kind(field: str, filename: str | None, content_type: str | None, limits: Limits) -> tuple[str, str]:
    """(kind, suffix) of an upload in form field ``field`` ("video", "image" or "audio").

    ``kind`` is where it goes: "video", "image" or "audio". A still image sent as ``video``
    (as the seed's API example may do) is taken as an image. Raises ApiError 415.
    """
    suffix = os.path.splitext(os.path.basename(filename or ""))[1].lower()
    if not suffix and content_type:
        suffix = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower(), "")
    accepted = {
        "video": [*limits.video_types, *limits.image_types],
        "image": list(limits.image_types),
        "audio": [*limits.audio_types, *limits.video_types],
    }[field]
    if suffix not in accepted:
        shown = f"'{suffix}'" if suffix and len(suffix) <= 12 and suffix[1:].isalnum() else "this type"
        raise ApiError(415, f"{field}: {shown} is not an accepted type (accepted: {' '.join(accepted)})",
                       "UnsupportedMediaType")
    if field == "video" and suffix in limits.image_types:
        return "image", suffix
    return field, suffix


def check_media(path: str, field: str, kind: str, limits: Limits) -> float:
    """Probe a stored upload; returns its duration in seconds (0 for an image).

    Raises ApiError: 415 (not a media format we read), 422 (corrupt, empty, no needed stream,
    too long).
    """
    from lipsync.media.probe import probe

    try:
        info = probe(path)
        if kind == "video" and (info.video is None or info.is_image):
            raise NoVideoStreamError(path, "no video stream")
        if kind == "image" and info.video is None:
            raise NoVideoStreamError(path, "not an image")
        if kind == "audio" and info.audio is None:
            raise NoAudioStreamError(path, "no audio stream")
        duration = 0.0 if kind == "image" else float(info.audio.duration if kind == "audio" else info.duration)
        if kind != "image" and not duration > 0:
            raise EmptyMediaError(path, "zero duration")
    except MediaError as err:
        raise describe(err, {path: field}) from None
    if duration > limits.max_media_seconds:
        raise ApiError(422, f"{field}: {duration:.1f} s long; the limit is {limits.max_media_seconds:g} s",
                       "MediaTooLong")
    return duration


def check_options(values: dict[str, Any], defaults: GenerateOptions, limits: Limits) -> GenerateOptions:
    """A request's generation options: the server's ``defaults`` with every given value of ``values``
    (keyed by option name; None or empty: not given) parsed and applied by the declaration
    (``lipsync/options.py``, as the CLI and the dub manifest do), then the server's own limits.
    Raises ApiError 400 (BadOption) naming the field."""
    try:
        options = options_from(values, defaults, REQUEST_OPTIONS)
    except ValueError as err:
        raise ApiError(400, str(err), "BadOption") from None
    if options.num_steps is not None and options.num_steps > limits.max_num_steps:
        raise ApiError(400, f"num_steps: {options.num_steps} is more than this server allows "
                            f"(max_num_steps {limits.max_num_steps})", "BadOption")
    return options


def check_speech(lang, voice, text, limits: Limits) -> None:
    """The text-to-speech fields. Raises ApiError 400 / 422."""
    if lang is not None and not _LANG.match(lang):
        raise ApiError(400, "lang must be a language code such as en, zh, es, pt-br", "BadOption")
    if voice is not None and voice != "" and not _VOICE.match(voice):
        raise ApiError(400, "voice must be a voice variant name such as m1 or f2", "BadOption")
    if text is not None and len(text) > limits.max_text_chars:
        raise ApiError(422, f"text: {len(text)} characters; the limit is {limits.max_text_chars}", "TextTooLong")
