"""The input limits of ``lipsync generate`` and ``lipsync dub`` as flags: ``--max_seconds`` (longest
video or audio) and ``--max_pixels`` (largest frame or image, width x height).

They set the limits of ``lipsync.media.limits`` (``LIPSYNC_MAX_MEDIA_SECONDS``, ``LIPSYNC_MAX_PIXELS``),
which every reader checks against what a file's header claims before anything is decoded: a file
over a limit is refused with a MediaTooLargeError naming the file, the size it claims and the limit
(in dub: that row's error; on the API, the server's own limits answer 413 / 422). Not given: the
environment's value, else the built-in limit (4 hours, 64 Mpx). ``generate`` sets them in its own
process; ``dub`` hands them to every Ray worker of the job.

Standard library only: ``lipsync --help`` imports this.
"""

from __future__ import annotations

import argparse
import os

SECONDS_ENV = "LIPSYNC_MAX_MEDIA_SECONDS"
PIXELS_ENV = "LIPSYNC_MAX_PIXELS"
# The built-in limits (lipsync.media.limits reads them from here).
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_SECONDS = 4 * 3600.0


def _positive(kind):
    def convert(text: str):
        try:
            value = kind(float(text)) if kind is int else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
        return value

    convert.__name__ = "number"
    return convert


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """``--max_seconds`` and ``--max_pixels`` (default None: the environment's, else built in)."""
    group = parser.add_argument_group("input limits (checked from each file's header, before decoding)")
    group.add_argument("--max_seconds", type=_positive(float), default=None, metavar="S",
                       help=f"longest video or audio accepted, in seconds (default: ${SECONDS_ENV}, else "
                            f"{DEFAULT_MAX_SECONDS:g} = {DEFAULT_MAX_SECONDS / 3600:g} h)")
    group.add_argument("--max_pixels", type=_positive(int), default=None, metavar="N",
                       help=f"largest frame or image accepted, width x height (default: ${PIXELS_ENV}, "
                            f"else {DEFAULT_MAX_PIXELS})")


def limit_env(args) -> dict[str, str]:
    """The environment variables the given limit flags stand for (none given: empty)."""
    env = {}
    if getattr(args, "max_seconds", None) is not None:
        env[SECONDS_ENV] = repr(float(args.max_seconds))
    if getattr(args, "max_pixels", None) is not None:
        env[PIXELS_ENV] = str(int(args.max_pixels))
    return env


def apply_limits(args) -> dict[str, str]:
    """Set the given limits for this process (and the processes it starts); returns them."""
    env = limit_env(args)
    os.environ.update(env)
    return env
