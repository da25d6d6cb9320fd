"""Evaluation of lip-synced videos: LSE-C / LSE-D / offset, lip-sync accuracy, mouth opening
against ground truth, LMD, temporal consistency, SSIM / PSNR against a reference (docs/eval.md).

``lipsync.eval.evaluate(video, audio, reference=None, ground_truth=None, syncnet=None)`` returns the
report as a dict. Importing this package is cheap: torch and mediapipe load on the first call.
"""

from __future__ import annotations


def evaluate(video, audio=None, reference=None, ground_truth=None, syncnet=None, out_dir=None,
             device: str = "cpu", profile: str = "tiny") -> dict:
    """See :func:`lipsync.eval.evaluator.evaluate`."""
    from lipsync.eval.evaluator import evaluate as _evaluate

    return _evaluate(video, audio, reference=reference, ground_truth=ground_truth, syncnet=syncnet,
                     out_dir=out_dir, device=device, profile=profile)


def dub_sync_score(output, task=None) -> float | None:
    """The batch job's sync score (``evaluator: lipsync.eval:dub_sync_score`` in lipsync/configs/dub.yaml):
    LSE-C of a finished output against its own audio track, which is the driving speech, with the
    bundled SyncNet; None when no window could be scored (e.g. too short for a 5-frame window)."""
    report = evaluate(output)
    sync = report.get("sync") or {}
    return sync.get("lse_c")


__all__ = ["dub_sync_score", "evaluate"]
