"""The request of ``POST /generate`` and ``POST /jobs``, made from the option declaration
(``lipsync/options.py``): one form field per request option, with its type, bounds, allowed values
and help (``/docs`` shows the same text as ``--help``), resolved against the server's defaults
(``serve/config.py`` ``Defaults``) by ``serve.validate.check_options``: the same ``options_from``
the CLI and the dub manifest use, then the server's own limits (``Limits.max_num_steps``).
``GET /options`` describes it all as JSON.

No Ray import here (FastAPI and pydantic only).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile

from lipsync.media.formats import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from lipsync.options import REQUEST_OPTIONS, GenerateOptions, Option, as_values, options_from
from serve.config import AppSettings


@dataclass
class GenerateForm:
    """A parsed form: the inputs, and the option fields as given (None: not given)."""

    video: UploadFile | None
    image: UploadFile | None
    audio: UploadFile | None
    text: str | None
    lang: str
    voice: str | None
    options: dict[str, Any] = field(default_factory=dict)


def _python_type(o: Option):
    if o.kind == "choice":
        return Literal[o.choices]
    return {"int": int, "float": float, "bool": bool, "face": str}[o.kind]


def option_parameter(o: Option) -> inspect.Parameter:
    """The form field of one option. The type (and, for a choice, the allowed values) is checked by
    FastAPI; bounds and the face syntax by the declaration's parser, which names the option in its
    message as the CLI and the manifest do. The bounds are in the schema for ``/docs``."""
    bounds = {k: v for k, v in (("minimum", o.minimum), ("maximum", o.maximum)) if v is not None}
    annotation = Annotated[_python_type(o) | None, Form(description=o.help_text(), json_schema_extra=bounds or None)]
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _kinds(suffixes) -> str:
    return ", ".join(s.lstrip(".") for s in suffixes)


_INPUT_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("video", Annotated[UploadFile | None, File(description=f"face video ({_kinds(VIDEO_SUFFIXES)}); "
                                                                "a still image here is taken as `image`")], None),
        ("image", Annotated[UploadFile | None, File(description=f"still image with a face "
                                                                f"({_kinds(IMAGE_SUFFIXES)})")], None),
        ("audio", Annotated[UploadFile | None, File(description=f"driving speech ({_kinds(AUDIO_SUFFIXES)}, "
                                                                "or a video's audio track)")], None),
        ("text", Annotated[str | None, Form(description="text to speak instead of `audio` (offline TTS)")], None),
        ("lang", Annotated[str, Form(description="language of `text`: en, zh, es, fr, de, ... (default: en)")],
         "en"),
        ("voice", Annotated[str | None, Form(description="TTS voice variant, e.g. m1, f2")], None),
    )
]


def generate_form(**fields) -> GenerateForm:
    """The FastAPI dependency of POST /generate and POST /jobs. Its signature (which FastAPI reads
    for the form fields and the OpenAPI schema) is made below from the declaration."""
    inputs = {p.name: fields.get(p.name, p.default) for p in _INPUT_PARAMETERS}
    return GenerateForm(**inputs, options={o.name: fields.get(o.name) for o in REQUEST_OPTIONS})


generate_form.__signature__ = inspect.Signature(
    [*_INPUT_PARAMETERS, *(option_parameter(o) for o in REQUEST_OPTIONS)], return_annotation=GenerateForm)


def request_options(spec_options: dict[str, Any], batch_size: int = 1) -> GenerateOptions:
    """The model replica's GenerateOptions from a request spec's (or a stored job's) ``options``:
    the ingress resolved them already (``serve.validate.check_options``); ``batch_size`` is the
    replica's (``model.batch_size``), not the request's."""
    return options_from(spec_options, GenerateOptions(batch_size=batch_size), REQUEST_OPTIONS)


def profile_values(profile: str, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """What "the profile's" means on this server: the values of the options that default to it, as
    the model's weights folder sets them (empty if the profile or its weights cannot be read here)."""
    try:
        from lipsync.pipeline.components import model_profile
        from lipsync.profiles import load_profile

        p = model_profile(load_profile(profile), checkpoint_dir)
    except Exception:  # a profile only the model replicas can read: the page says "the profile's"
        return {}
    return {o.name: getattr(p, o.attr) for o in REQUEST_OPTIONS if o.default is None and hasattr(p, o.attr)}


def options_document(settings: AppSettings) -> dict:
    """``GET /options``: every request option as declared (``Option.describe``), with what this
    server does when a request leaves it out (``server_default``: the configured default, None =
    the profile's; ``effective``: the value a run gets), plus the server's limits on top."""
    defaults = settings.defaults.options()
    profile = profile_values(settings.model.profile, settings.model.checkpoint_dir)
    server = as_values(defaults, REQUEST_OPTIONS)
    items = []
    for o in REQUEST_OPTIONS:
        item = o.describe()
        item.update(server_default=server[o.name], server_default_text=o.value_text(server[o.name]),
                    effective=profile.get(o.name) if server[o.name] is None else server[o.name],
                    description=o.help_text(server[o.name]))
        if o.name == "num_steps":
            item["maximum"] = min(o.maximum, settings.limits.max_num_steps)
        items.append(item)
    return {"profile": settings.model.profile, "profile_values": profile, "options": items,
            "web": {"num_steps": settings.defaults.web_num_steps}}

