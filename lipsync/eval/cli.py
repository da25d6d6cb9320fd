"""``lipsync eval``: the parser (no heavy imports) and the command."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="lip-sync metrics of a video: LSE-C/D, offset, accuracy, mouth, temporal, SSIM/PSNR",
        description="Measure how well a video's lips follow the speech (SyncNet LSE-C / LSE-D / offset over "
                    "-15..+15 frames, lip-sync accuracy), the mouth opening against ground truth (Pearson r, "
                    "LMD), temporal consistency, and SSIM / PSNR against a reference. Definitions: docs/eval.md.")
    p.add_argument("--video", required=True, help="the video to evaluate (local path or s3://)")
    p.add_argument("--audio", default=None, help="the driving speech (default: the video's own audio track)")
    p.add_argument("--reference", default=None,
                   help="a video of the same size to compare with (SSIM / PSNR, whole frame and lower face)")
    p.add_argument("--ground-truth", "--ground_truth", dest="ground_truth", default=None, metavar="META",
                   help="ground truth of a synthetic clip: its meta.json or folder (from `lipsync synth`)")
    p.add_argument("--syncnet", default=None, metavar="DIR|FILE",
                   help="SyncNet to use: a folder (config.json + model.safetensors) or the public "
                        "syncnet_v2.model file (default: the SyncNet bundled with the package)")
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json and PNG plots into DIR")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of a summary")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 or auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from lipsync.eval.evaluator import evaluate, summary_lines

    report = evaluate(args.video, args.audio, reference=args.reference, ground_truth=args.ground_truth,
                      syncnet=args.syncnet, out_dir=args.out, device=args.device)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for line in summary_lines(report):
        print(line)
    files = report.get("files")
    if files:
        print("wrote " + ", ".join(files.values()))
    sys.stdout.flush()
    return 0
