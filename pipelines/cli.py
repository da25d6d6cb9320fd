"""``lipsync dub``: the batch-dubbing subcommand. Registered with ``lipsync`` through the
``lipsync.commands`` entry point ``dub = pipelines.cli:add_parsers`` (pyproject.toml); nothing here
imports Ray until the command runs."""

from __future__ import annotations

import argparse
import sys

DUB_DESCRIPTION = """\
Lip-sync many videos in one job on Ray: CPU workers decode, track and align faces, GPU workers
(or CPU workers on a cluster without GPUs) denoise windows from any videos in batches, CPU workers
paste back and encode. Input: a manifest (CSV, JSONL or Parquet; columns id, video or image, audio
or text + lang, optional output and per-row options) or --videos DIR --audios DIR paired by file
name. A rerun skips outputs already finished. A video with no face in any frame is written with the
new speech, frames untouched (status no_face; --no_face error makes it an error row). Writes
<output_dir>/results.parquet and prints a summary. Exit code: 0 all done, 3 some videos failed (see
the results), 1 the job could not run.
"""


def add_dub_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("dub", help="lip-sync a batch of videos on Ray (manifest or folders)",
                       description=DUB_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    dub_arguments(p)
    return p


def dub_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV / JSONL / Parquet manifest (local or s3://)")
    src.add_argument("--videos", help="folder of videos (or images); pair with --audios by file name")
    p.add_argument("--audios", help="folder of audio files named like the videos")
    p.add_argument("--output_dir", required=True,
                   help="where outputs (<id>.mp4 unless the manifest says otherwise), completion records "
                        "(_done/) and results.parquet go (local or s3://)")
    p.add_argument("--profile", default="tiny", help="model profile: tiny (default), latentsync-1.5, latentsync-1.6 "
                                                     "or a YAML file")
    p.add_argument("--checkpoint_dir", default=None, help="folder with the profile's weights (see lipsync generate)")
    p.add_argument("--config", default=None,
                   help="pool sizes, batch sizes, CPUs/GPUs per actor (default lipsync/configs/dub.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set denoise.actors=2 (repeatable)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://...); default: join the local Ray instance "
                        "if one runs, else start one")
    p.add_argument("--overwrite", action="store_true", help="redo every video, even those already finished")
    p.add_argument("--lang", default="en", help="language of text rows without a lang column (default en)")
    from lipsync.options import REQUEST_OPTIONS, add_option_flags  # stdlib only

    # The job's defaults: a manifest cell of the same name overrides them for its row. batch_size is
    # not among them: in a job the denoise pool batches windows of any videos (denoise.batch_size).
    add_option_flags(p, REQUEST_OPTIONS)
    from lipsync.input_limits import add_limit_flags  # stdlib only

    add_limit_flags(p)  # handed to every worker of the job
    p.set_defaults(func=cmd_dub)


def dub_defaults(args):
    """The job's GenerateOptions from a parsed ``lipsync dub``: the declared defaults (None: the
    profile's) with every option flag given applied; manifest cells override them per row."""
    from lipsync.options import REQUEST_OPTIONS, options_from

    return options_from(vars(args), only=REQUEST_OPTIONS)


def add_parsers(sub) -> None:
    """The ``dub`` entry point of the ``lipsync.commands`` group: adds ``lipsync dub`` to ``sub``."""
    add_dub_parser(sub)


def cmd_dub(args) -> int:
    from lipsync.pipeline.manifest import load_job_input

    if args.videos is not None and args.audios is None:
        raise ValueError("--videos needs --audios (the folder of audio files named like the videos)")
    if args.audios is not None and args.videos is None:
        raise ValueError("--audios goes with --videos (use --manifest otherwise)")
    defaults = dub_defaults(args)
    from lipsync.input_limits import apply_limits
    from pipelines.cluster import connect
    from pipelines.dub import DubJob, exit_code, load_config, run_dub

    config = load_config(args.config, args.set)
    job_input = load_job_input(args.output_dir, defaults, manifest=args.manifest, videos=args.videos,
                               audios=args.audios, lang=args.lang)
    for note in job_input.notes:
        print(f"note: {note}", file=sys.stderr)
    if job_input.ignored_columns:
        print(f"note: ignoring manifest columns: {', '.join(job_input.ignored_columns)}", file=sys.stderr)
    limits = apply_limits(args)  # this process (and a local Ray it starts) and, through DubJob, every worker
    connect(args.address)
    job = DubJob(args.output_dir, args.profile, args.checkpoint_dir, config, args.overwrite, limits)
    return exit_code(run_dub(job_input, job))


def main_dub(argv: list[str] | None = None) -> int:
    """``jobs/dub.py``: the same command, for ``ray job submit``."""
    from lipsync.cli import job_main

    return job_main("jobs/dub.py", DUB_DESCRIPTION, dub_arguments, argv)
