"""The ``lipsync`` command line. Subcommands import their heavy dependencies lazily so that
``lipsync --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lipsync import __version__
from lipsync.errors import LipSyncError

DESCRIPTION = """\
LipSync: audio-driven lip-sync (visual dubbing) with a latent diffusion model, at scale on Ray.

subcommands:
  generate  lip-sync a video (or a still image) to speech (or text): the main command
  synth     render a synthetic talking-head corpus with ground truth (test data, demos, training)
  tts       turn text into 16 kHz speech with a phoneme timeline (offline espeak-ng)
  probe     show what the system sees in a media file: streams, fps, duration, faces
  dub       batch dubbing of many clips as one Ray Data job (local Ray or --address)
  serve     HTTP API and web page on Ray Serve
  preprocess  clips -> Parquet training shards (Ray Data)
  train     train a recipe of lipsync/configs/train/ on Ray Train
  eval      lip-sync metrics of a video: LSE-C / LSE-D / offset, accuracy, mouth, temporal, SSIM / PSNR
"""


def _add_generate(sub):
    p = sub.add_parser(
        "generate", help="lip-sync a video or image to speech or text",
        description="Regenerate the lower face of the person in a video (or a still image) so the lips follow "
                    "the speech, paste it back at the original resolution and write an H.264 + AAC mp4 as "
                    "long as the speech. Frames without a face pass through untouched.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video_path", help="input video (local path or s3://)")
    src.add_argument("--image_path", help="input still image with a face")
    speech = p.add_mutually_exclusive_group(required=True)
    speech.add_argument("--audio_path", help="driving speech: wav/mp3/flac/m4a or any file with an audio track")
    speech.add_argument("--text", help="text to speak (offline TTS) instead of an audio file")
    p.add_argument("--lang", default="en", help="language of --text (en, zh, es, fr, de, ...; default en)")
    p.add_argument("--voice", default=None, help="TTS voice variant for --text (see `lipsync tts --list`)")
    p.add_argument("--output_path", required=True, help="output mp4 (local path or s3://)")
    p.add_argument("--profile", default="tiny",
                   help="model profile: tiny (default, CPU-friendly), latentsync-1.5, latentsync-1.6, or a YAML file")
    p.add_argument("--checkpoint_dir", default=None,
                   help="folder with the profile's weight files (default pretrained/ for the LatentSync profiles; "
                        "a folder with model_index.json, e.g. a training export, is loaded as is)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16")
    from lipsync.options import add_option_flags  # stdlib only: keeps `lipsync --help` fast

    add_option_flags(p)  # every option of lipsync/options.py; not given: the declared default
    from lipsync.input_limits import add_limit_flags  # stdlib only

    add_limit_flags(p)  # --max_seconds, --max_pixels
    p.set_defaults(func=cmd_generate)


def generate_request(args):
    """The GenerateOptions of a parsed ``lipsync generate``: the declared defaults (None: the
    profile's) with every option flag given applied."""
    from lipsync.options import options_from

    return options_from(vars(args))


def cmd_generate(args) -> int:
    import warnings

    from lipsync.input_limits import apply_limits

    apply_limits(args)  # before any media module reads them

    from tqdm import tqdm

    from lipsync.pipeline import LipSyncPipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        pipe = LipSyncPipeline.from_profile(args.profile, args.checkpoint_dir, args.device, args.dtype)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    opts = generate_request(args)
    bar = tqdm(total=None, unit="frame", desc="lip-sync", disable=None)  # None: no bar when not a terminal

    def progress(done, total):
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = pipe(args.output_path, video=args.video_path, image=args.image_path, audio=args.audio_path,
                      text=args.text, lang=args.lang, voice=args.voice, options=opts, progress=progress)
    finally:
        bar.close()
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.summary())
    return 0


COMMAND_GROUP = "lipsync.commands"
COMMAND_ORDER = ("dub", "serve", "preprocess", "train")  # as DESCRIPTION lists them; any others follow by name


def _add_ray_commands(sub):
    """The subcommands that run on Ray live beside their Ray code (pipelines/, serve/), which the library
    never imports: each registers through an entry point of the ``lipsync.commands`` group (pyproject.toml),
    ``name = "module:function"``, the function adding subcommand ``name`` to ``sub``. Their parser modules
    import no Ray, so ``lipsync --help`` stays fast. One that does not load becomes a subcommand that
    says why in one line when it is used (``LIPSYNC_DEBUG=1`` raises the error here instead)."""
    from importlib.metadata import entry_points

    found = {}
    for ep in entry_points(group=COMMAND_GROUP):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins, as for imports
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    for name in sorted(found, key=lambda n: (rank.get(n, len(rank)), n)):
        try:
            found[name].load()(sub)
        except Exception as err:  # a missing module, a broken plugin: the other commands still work
            if os.environ.get("LIPSYNC_DEBUG"):
                raise
            _add_unavailable(sub, name, found[name].value, err)


def _add_unavailable(sub, name: str, target: str, err: Exception):
    """Subcommand ``name`` whose entry point ``target`` failed with ``err``: listed by ``--help``, and
    any use of it (flags included) is a one-line error."""
    reason = f"cannot load {target} ({type(err).__name__}: {' '.join(str(err).split())})"
    if name in sub.choices:  # the plugin failed half-way through adding its parser
        del sub.choices[name]
        sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest != name]
    p = sub.add_parser(name, help=f"unavailable: {reason}", add_help=False)

    def unavailable(args):
        raise LipSyncError(f"lipsync {name} is unavailable: {reason}; is the package that provides it "
                           "installed? (LIPSYNC_DEBUG=1 shows the traceback)")

    def accept_anything(args=None, namespace=None):
        namespace = namespace if namespace is not None else argparse.Namespace()
        namespace.func = unavailable
        return namespace, []

    p.parse_known_args = accept_anything


def _add_synth(sub):
    p = sub.add_parser(
        "synth", help="render a synthetic talking-head corpus",
        description="Render synthetic talking-head clips (speech + articulated face photo) with "
                    "per-frame ground truth: DIR/clip_NNNNN/{video.mp4,audio.wav,landmarks.npz,meta.json} "
                    "and DIR/manifest.csv. Deterministic for a seed; a rerun keeps finished clips.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num", type=int, default=4, help="number of clips (default 4)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each clip in seconds (default 4)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="square frame size in pixels (default 256)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="sentence split: 'test' sentences never appear in 'train' clips")
    p.add_argument("--langs", default=None, help="comma-separated languages (default en,es,zh,fr,de)")
    p.add_argument("--jobs", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--identity", type=int, default=None,
                   help="use this identity number for every clip (0 = the portrait unchanged; default: random per clip)")
    p.add_argument("--faces", default=None,
                   help="folder of frontal portrait photos to build identities from (default: the bundled portrait)")
    p.add_argument("--speech", default=None,
                   help="folder of speech recordings (wav/flac/mp3/m4a/ogg): a share of the clips "
                        "(--speech_fraction) speak a segment of one of them instead of espeak, the mouth "
                        "articulated from the audio; e.g. lipsync data fetch --mirror ../shared/data/faces-kit "
                        "--kind speech --split train --link DIR")
    p.add_argument("--speech_fraction", "--speech-fraction", type=float, default=0.5,
                   help="with --speech: the share of clips that take a recording, 0..1 (default 0.5)")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from lipsync.synth.corpus import make_corpus
    from lipsync.synth.identity import photos_in

    faces = photos_in(args.faces) if args.faces else None
    speech = None
    if args.speech:
        from lipsync.synth.recorded import recordings_in

        if not 0.0 <= args.speech_fraction <= 1.0:
            raise LipSyncError(f"--speech_fraction must be between 0 and 1, got {args.speech_fraction}")
        speech = recordings_in(args.speech)
    langs = [s.strip() for s in args.langs.split(",")] if args.langs else None
    t0 = time.perf_counter()
    done = []

    def progress(path, dt):
        done.append(dt)
        note = f"{dt:.1f} s" if dt else "already done"
        print(f"[{len(done)}/{args.num}] {path} ({note})", flush=True)

    rows = make_corpus(args.out, args.num, seconds=args.seconds, seed=args.seed, jobs=args.jobs,
                       progress=progress, size=args.size, split=args.split, langs=langs, faces=faces,
                       identity=args.identity, speech=speech, speech_fraction=args.speech_fraction)
    print(f"{len(rows)} clips in {args.out} ({time.perf_counter() - t0:.1f} s); manifest: {args.out}/manifest.csv")
    return 0


def _add_tts(sub):
    p = sub.add_parser("tts", help="text to speech (wav) with a phoneme timeline",
                       description="Synthesise speech offline with espeak-ng (bundled, no system package). "
                                   "Writes a 16 kHz mono wav; --phonemes also writes the phoneme timeline as JSON.")
    p.add_argument("--text", help="text to speak")
    p.add_argument("--lang", default="en", help="language code: en, zh, es, fr, de, ... (default en)")
    p.add_argument("--voice", default=None, help="voice variant, e.g. m1, f2 (see --list)")
    p.add_argument("--rate", type=int, default=175, help="words per minute (default 175)")
    p.add_argument("--pitch", type=int, default=50, help="pitch 0-99 (default 50)")
    p.add_argument("--out", help="output wav path (local or s3://)")
    p.add_argument("--phonemes", help="also write the phoneme timeline to this JSON file")
    p.add_argument("--list", action="store_true", help="list languages and voice variants, then exit")
    p.set_defaults(func=cmd_tts)


def cmd_tts(args) -> int:
    from lipsync import tts
    from lipsync.media.audio import save_wav

    if args.list:
        print("languages:", " ".join(tts.list_languages()))
        print("voices:   ", " ".join(tts.list_variants()))
        return 0
    if not args.text or not args.out:
        print("error: tts needs --text and --out (or --list)", file=sys.stderr)
        return 2
    speech = tts.synthesize(args.text, lang=args.lang, voice=args.voice, rate=args.rate, pitch=args.pitch)
    save_wav(args.out, speech.samples, speech.sample_rate)
    if args.phonemes:
        from lipsync.media.uri import write_bytes

        write_bytes(args.phonemes, json.dumps(speech.to_json(), ensure_ascii=False, indent=1).encode())
    print(f"{args.out}: {speech.duration:.2f} s, {speech.sample_rate} Hz, {len(speech.phonemes)} phonemes "
          f"({speech.lang}, voice {speech.voice})")
    return 0


def _add_probe(sub):
    p = sub.add_parser("probe", help="show streams, fps, duration, resolution and faces of a file",
                       description="Print what the system sees in a video, image or audio file (local or s3://): "
                                   "container, streams, fps, duration, resolution, rotation, and the faces "
                                   "found in a few sampled frames.")
    p.add_argument("file")
    p.add_argument("--samples", type=int, default=5, help="frames to sample for face detection (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from lipsync.probe_report import probe_report, format_report

    report = probe_report(args.file, samples=args.samples)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _add_data(sub):
    from lipsync.data.cli import add_parser  # stdlib only: keeps `lipsync --help` fast

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lipsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    _add_generate(sub)
    _add_ray_commands(sub)
    _add_synth(sub)
    _add_tts(sub)
    _add_probe(sub)
    _add_data(sub)
    from lipsync.eval.cli import add_parser as _add_eval

    _add_eval(sub)
    return parser


def run_parsed(args) -> int:
    """Run a parsed subcommand: a LipSyncError or a bad value is one line on stderr and exit code 1,
    never a traceback (``LIPSYNC_DEBUG=1`` shows it)."""
    try:
        return int(args.func(args) or 0)
    except (LipSyncError, ValueError) as err:
        if os.environ.get("LIPSYNC_DEBUG"):
            raise
        text = str(err)
        print(f"error: {' '.join(text.split()) if len(text) < 400 else text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def job_main(prog: str, description: str, add_arguments, argv: list[str] | None = None) -> int:
    """The ``jobs/*.py`` entrypoints (``ray job submit``): one subcommand as a program of its own."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_parsed(parser.parse_args(sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())
