"""``lipsync preprocess``: training-data preparation on Ray Data. Registered with ``lipsync`` through
the ``lipsync.commands`` entry point ``preprocess = pipelines.preprocess_cli:add_parsers``
(pyproject.toml); nothing here imports Ray until the command runs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Turn a folder of talking-head videos into training shards on Ray: decode at 25 fps and 16 kHz,
detect shot cuts, track and align the face (the same code as lipsync generate), cut fixed-length
segments (frames without a face and shot cuts end a segment), optionally keep only segments a
SyncNet finds in sync, and write Parquet shards: <output>/<split>/<clip>.parquet, one row per
segment with the aligned crops (encoded images), the segment's audio samples and metadata.

Input layouts: dataset/{train,val}/{videos,audios}/ paired by file stem (a video without an audio
file uses its own track), a `lipsync synth` corpus (its ground truth is kept), or any folder of
videos (own audio, split train). Local paths or s3://. A rerun skips finished clips. Writes
<output>/report.parquet (one row per clip; bad files are error rows, never fatal) and
<output>/dataset.json. Exit code: 0 all clips done, 3 some failed, 1 the job could not run.
"""


def preprocess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="dataset folder (local or s3://)")
    p.add_argument("--output", required=True, help="where the shards, report and dataset.json go (local or s3://)")
    p.add_argument("--profile", default="tiny", help="model profile whose crop size and alignment to use "
                                                      "(default tiny: 96 px)")
    p.add_argument("--segment_frames", type=int, default=48,
                   help="frames per segment (default 48: a 16-frame training window, a reference window "
                        "and SyncNet windows fit with margin)")
    p.add_argument("--audio_margin_frames", type=int, default=12,
                   help="audio kept before and after each segment, in frames (default 12 = 0.48 s)")
    p.add_argument("--image_format", choices=["jpg", "png"], default="jpg", help="crop encoding (default jpg, q95)")
    p.add_argument("--cut_threshold", type=float, default=0.5,
                   help="colour-histogram distance (0..1) between consecutive frames taken as a shot cut")
    p.add_argument("--val_fraction", type=float, default=0.0,
                   help="move this share of the train clips (chosen by a hash of their id) to split val")
    p.add_argument("--sync_filter", default=None, metavar="DIR|MODULE:FN",
                   help="keep only segments in sync: a folder of SyncNet weights, or package.module:function "
                        "(default: no filter)")
    p.add_argument("--min_sync_confidence", type=float, default=0.2,
                   help="with --sync_filter: least LSE-C style confidence (default 0.2, on our SyncNet's scale: "
                        "unit embeddings, distances 0..2; LatentSync's 3 is on SyncNet v2's scale)")
    p.add_argument("--max_sync_offset", type=int, default=6, help="with --sync_filter, frames (default 6)")
    p.add_argument("--actors", default="auto", help="preparation actors (default auto)")
    p.add_argument("--num_cpus", default="auto", help="CPUs per actor, fractional allowed (default auto: 0.75)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://...); default: the local Ray instance "
                        "if one runs, else start one")
    p.add_argument("--overwrite", action="store_true", help="redo every clip, even those already done")
    p.set_defaults(func=cmd_preprocess)


def add_parsers(sub) -> None:
    p = sub.add_parser("preprocess", help="prepare training shards from videos on Ray",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    preprocess_arguments(p)


def _auto(value: str, kind):
    return value if value == "auto" else kind(value)


def cmd_preprocess(args) -> int:
    from lipsync.train.prepare import PrepareOptions
    from pipelines.preprocess import PreprocessJob, exit_code, find_clips, run_preprocess

    if args.segment_frames < 1 or args.audio_margin_frames < 0:
        raise ValueError("--segment_frames must be >= 1 and --audio_margin_frames >= 0")
    opts = PrepareOptions(profile=args.profile, segment_frames=args.segment_frames,
                          audio_margin_frames=args.audio_margin_frames, image_format=args.image_format,
                          cut_threshold=args.cut_threshold, min_sync_confidence=args.min_sync_confidence,
                          max_sync_offset=args.max_sync_offset)
    job = PreprocessJob(args.input, args.output, opts, _auto(args.actors, int), _auto(args.num_cpus, float),
                        args.val_fraction, args.sync_filter, args.overwrite)
    from pipelines.cluster import connect

    try:
        clips = find_clips(job)
        connect(args.address)
        return exit_code(run_preprocess(job, clips=clips))
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ValueError(str(err)) from err


def main_preprocess(argv: list[str] | None = None) -> int:
    """``jobs/preprocess.py``: the same command, for ``ray job submit``."""
    from lipsync.cli import job_main

    return job_main("jobs/preprocess.py", DESCRIPTION, preprocess_arguments, argv)
