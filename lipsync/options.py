"""Every generation option, declared once.

``GenerateOptions`` is the one declaration: each field carries its flag / column / form name, type,
bounds, allowed values and help. The generate and dub flags, the dub manifest's option columns, the
server's form and JSON fields and the web page's advanced section are all made from ``OPTIONS``, so
the same request means the same thing whichever way it arrives. A default of ``None`` means "the
profile's" (``num_steps``, ``guidance_scale``, ``scheduler``, ``guidance_interval``, ``deepcache``,
``overlap``).

Standard library only: ``lipsync --help`` imports this.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

DEFAULT_SEED = 1247
LOOP_MODES = ("pingpong", "repeat", "freeze")
NO_FACE_POLICIES = ("error", "passthrough")
FACE_HELP = "'largest', a face index (0 = largest, 1 = next ...) or 'track:ID'"
# The samplers (lipsync.pipeline.denoise.make_scheduler): all deterministic, on the training schedule.
SCHEDULERS = ("ddim", "dpmsolver++", "unipc", "deis", "euler")
# How the regenerated face goes back into the frame (lipsync.face.composite, lipsync.pipeline.stages).
COMPOSITE_MODES = ("person", "person_warp", "latentsync")


def parse_bool(value) -> bool:
    """True / False from a flag, a cell or a form value (1/0, true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"{value!r} is not true / false")


def bool_flag(text: str) -> bool:
    """argparse ``type=`` for flags written ``--resume True`` / ``--resume False``."""
    try:
        return parse_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _option(default, help: str, *, kind: str, name: str | None = None, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] = (), scope: str = "request",
            unset: str = "the profile's"):
    meta = {"kind": kind, "help": help, "name": name, "minimum": minimum, "maximum": maximum,
            "choices": tuple(choices), "scope": scope, "unset": unset}
    return field(default=default, metadata={"option": meta})


@dataclass
class GenerateOptions:
    """How one video is lip-synced (everything but its inputs and the model)."""

    num_steps: int | None = _option(None, "denoising steps", kind="int", minimum=1, maximum=1000)
    guidance_scale: float | None = _option(
        None, "audio classifier-free guidance: how strongly the mouth follows the speech (1 = off)",
        kind="float", minimum=0.0, maximum=20.0)
    scheduler: str | None = _option(
        None, "sampler: ddim (LatentSync's; `--scheduler ddim --num_steps 20` is their path), dpmsolver++ "
              "(DPM-Solver++ 2M), unipc, deis or euler; the multistep solvers need fewer steps",
        kind="choice", choices=SCHEDULERS)
    guidance_interval: float | None = _option(
        None, "fraction of the denoising steps, from the first, that get audio guidance (1 = every step); "
              "the others run one conditional UNet pass", kind="float", minimum=0.0, maximum=1.0)
    seed: int = _option(DEFAULT_SEED, "random seed; the same seed gives the same video", kind="int",
                        minimum=0, maximum=2**63 - 1)
    face: str | int = _option("largest", f"which face to dub: {FACE_HELP}", kind="face")
    loop: str = _option("pingpong", "when the speech is longer than the video: play it back and forth "
                                     "(pingpong), repeat it, or hold the last frame (freeze); a longer video "
                                     "is trimmed to the speech", kind="choice", choices=LOOP_MODES)
    silence_gating: bool = _option(False, "keep the mouth closed where the speech is silent (voice activity "
                                          "detection)", kind="bool")
    overlap: int | None = _option(None, "frames shared by consecutive 16-frame windows (cross-faded)",
                                  kind="int", minimum=0, maximum=15)
    deepcache_interval: int | None = _option(None, "DeepCache: run the full UNet every N steps and reuse its "
                                                   "deep features in between (0 = off)", kind="int",
                                             name="deepcache", minimum=0, maximum=1000)
    composite: str | None = _option(
        None, "how the regenerated face goes back into the frame: person_warp (the person's own lips, beard and "
              "skin moved into the mouth shape the model drew, with its coarse shading and the inside of its "
              "mouth), person (the model's lower face, colour-matched, the source's texture kept where the mouth "
              "did not change) or latentsync (LatentSync's paste of the masked region)",
        kind="choice", choices=COMPOSITE_MODES)
    no_face: str | None = _option(
        None, "when no frame has a face: fail (error), or write the video, frames untouched, with the new "
              "speech (passthrough; the result says no_face)", kind="choice", choices=NO_FACE_POLICIES,
        unset="error in generate and the API, passthrough in dub")
    # How many windows are denoised at once: speed and memory only, never the frames. A whole job's
    # setting in batch dubbing (its pools say how much is batched), not a manifest column.
    batch_size: int = _option(1, "16-frame windows denoised together (speed and memory, not the result)",
                              kind="int", minimum=1, maximum=64, scope="job")


@dataclass(frozen=True)
class Option:
    name: str  # the flag (--name), manifest column, form / JSON field
    attr: str  # the GenerateOptions field
    kind: str  # int | float | bool | choice | face
    help: str
    default: Any
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...]
    scope: str  # request: per video / row / request; job: one value for a whole batch job
    unset: str = "the profile's"  # what None (not given) means, in words

    @property
    def default_text(self) -> str:
        return self.value_text(self.default)

    def value_text(self, value: Any) -> str:
        """How a value of this option reads in help texts: None is ``unset`` ("the profile's")."""
        if value is None:
            return self.unset
        if self.kind == "bool":
            return "on" if value else "off"
        return str(value)

    def help_text(self, default: Any = MISSING) -> str:
        """The help with its default, as ``--help``, the API docs and the web page show it;
        ``default``: a default other than the declared one (a server's configured default)."""
        return f"{self.help} (default: {self.value_text(self.default if default is MISSING else default)})"

    def parse(self, value: Any) -> Any:
        """The typed value of ``value`` (a string from a flag, a CSV cell or a form, or a JSON value);
        None for an empty one. A bad value is a ValueError that names the option."""
        if value is None or (isinstance(value, str) and not value.strip()) or (
                isinstance(value, float) and math.isnan(value)):
            return None
        parse = {"int": self._int, "float": self._float, "bool": self._bool, "choice": self._choice,
                 "face": self._face}[self.kind]
        return parse(value)

    def _bounds(self, x, value):
        lo, hi = self.minimum, self.maximum
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            where = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                     else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise ValueError(f"{self.name}: {value!r} must be {where}")
        return x

    def _int(self, value):
        if isinstance(value, bool):
            raise ValueError(f"{self.name}: {value!r} is not a whole number")
        try:
            f = float(value) if not isinstance(value, int) else value
            x = int(f)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{self.name}: {value!r} is not a whole number") from None
        if x != f:
            raise ValueError(f"{self.name}: {value!r} is not a whole number")
        return self._bounds(x, value)

    def _float(self, value):
        if isinstance(value, bool):
            raise ValueError(f"{self.name}: {value!r} is not a number")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: {value!r} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"{self.name}: {value!r} is not a finite number")
        return self._bounds(x, value)

    def _bool(self, value):
        try:
            return parse_bool(value)
        except ValueError as err:
            raise ValueError(f"{self.name}: {err}") from None

    def _choice(self, value):
        s = str(value).strip()
        if s not in self.choices:
            raise ValueError(f"{self.name}: {value!r} must be one of {', '.join(self.choices)}")
        return s

    def _face(self, value):
        if isinstance(value, bool):
            raise ValueError(f"{self.name}: {value!r} must be {FACE_HELP}")
        if isinstance(value, (int, float)):
            if not float(value).is_integer() or value < 0:  # inf and nan too
                raise ValueError(f"{self.name}: {value!r} must be {FACE_HELP}")
            return int(value)
        s = str(value).strip()
        if s.isdigit():
            return int(s)
        if s == "largest" or (s.startswith("track:") and s[6:].isdigit()):
            return s
        raise ValueError(f"{self.name}: {value!r} must be {FACE_HELP}")

    @property
    def values_text(self) -> str:
        """The values it takes, in words (the README's table)."""
        if self.kind == "bool":
            return "on / off"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "face":
            return "largest, N, track:ID"
        lo, hi = self.minimum, self.maximum
        return f"{lo:g} to {hi:g}" if hi is not None and hi < 1e6 else f">= {lo:g}"

    def describe(self) -> dict:
        """JSON-ready description (the web page's advanced section, ``GET /options``)."""
        return {"name": self.name, "kind": self.kind, "help": self.help, "default": self.default,
                "default_text": self.default_text, "minimum": self.minimum, "maximum": self.maximum,
                "choices": list(self.choices), "scope": self.scope}


def _declared() -> tuple[Option, ...]:
    out = []
    for f in fields(GenerateOptions):
        m = f.metadata["option"]
        out.append(Option(m["name"] or f.name, f.name, m["kind"], m["help"],
                          None if f.default is MISSING else f.default, m["minimum"], m["maximum"], m["choices"],
                          m["scope"], m.get("unset", "the profile's")))
    return tuple(out)


OPTIONS: tuple[Option, ...] = _declared()
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
REQUEST_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.scope == "request")


def options_from(values: Mapping[str, Any], base: GenerateOptions | None = None,
                 only: tuple[Option, ...] = OPTIONS) -> GenerateOptions:
    """``base`` (default: the declared defaults) with every given, non-empty value of ``values``
    (keyed by option name) applied. Keys that are not options are ignored; a bad value raises a
    ValueError naming the option."""
    changes = {}
    for opt in only:
        if opt.name in values:
            parsed = opt.parse(values[opt.name])
            if parsed is not None:
                changes[opt.attr] = parsed
    return replace(base or GenerateOptions(), **changes)


def as_values(options: GenerateOptions, only: tuple[Option, ...] = OPTIONS) -> dict[str, Any]:
    """The options keyed by option name (the inverse of ``options_from``), for JSON and records."""
    return {o.name: getattr(options, o.attr) for o in only}


def options_table() -> str:
    """The options as a Markdown table (README.md "Generation options"; a test keeps the two equal)."""
    rows = ["| flag / column / field | values | default | what it does |", "| --- | --- | --- | --- |"]
    for o in OPTIONS:
        where = "" if o.scope == "request" else " (generate only)"
        rows.append(f"| `{o.name}`{where} | {o.values_text} | {o.default_text} | {o.help} |")
    return "\n".join(rows)


def add_option_flags(parser: argparse.ArgumentParser, only: tuple[Option, ...] = OPTIONS,
                     defaults: GenerateOptions | None = None) -> None:
    """One ``--name`` flag per option. Flags default to None (not given), so ``options_from(vars(args))``
    keeps ``defaults``; the help text shows them."""
    shown = defaults or GenerateOptions()
    group = parser.add_argument_group("generation options (the same in generate, dub, the API and the web page)")
    for o in only:
        help_text = o.help_text(getattr(shown, o.attr))
        if o.kind == "bool":
            group.add_argument(f"--{o.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif o.kind == "choice":
            group.add_argument(f"--{o.name}", choices=o.choices, default=None, help=help_text)
        else:
            group.add_argument(f"--{o.name}", type=_flag_type(o), default=None, help=help_text,
                               metavar={"int": "N", "float": "X", "face": "FACE"}[o.kind])


def _flag_type(opt: Option):
    def convert(text: str):
        try:
            return opt.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).split(": ", 1)[-1]) from None

    convert.__name__ = opt.kind  # argparse names the type in its own error message
    return convert
