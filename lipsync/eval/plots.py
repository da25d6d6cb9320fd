"""PNG plots of an evaluation report (matplotlib, headless)."""

from __future__ import annotations

import numpy as np


def _figure(width: float = 8.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def _save(plt, fig, path: str) -> None:
    from lipsync.media.uri import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in (values or [])], np.float64)


def plot_offset_curve(report: dict, path: str) -> None:
    """Mean SyncNet distance per audio-video offset; the minimum marks the estimated offset."""
    s = report["sync"]
    plt, fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    x = np.array(s["offsets"])
    y = _arr(s["curve"])
    order = np.argsort(x)
    ax.plot(x[order], y[order], "-o", ms=3, color="tab:blue")
    ax.axvline(s["offset"], color="tab:red", ls="--", lw=1, label=f"offset {s['offset']:+d}")
    ax.axhline(s["lse_d"] + s["lse_c"], color="grey", ls=":", lw=1, label="median")
    ax.set_xlabel("AV offset (frames; > 0: audio ahead of video)")
    ax.set_ylabel("mean embedding distance")
    ax.set_title(f"LSE-D {s['lse_d']:.3f}   LSE-C {s['lse_c']:.3f}   ({s['model']})")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_mouth(report: dict, path: str) -> None:
    """Mouth opening (and the ground truth, if any) over time against the speech energy."""
    ser = report["series"]
    fps = float(report.get("fps", 25.0))
    opening = _arr(ser["mouth_opening"])
    t = np.arange(len(opening)) / fps
    plt, fig = _figure(10.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(t, opening, color="tab:red", lw=1.3, label="mouth opening (measured)")
    gt = _arr(ser.get("gt_mouth_opening"))
    if len(gt):
        ax.plot(np.arange(len(gt)) / fps, gt, color="tab:green", lw=1.0, ls="--", label="mouth opening (ground truth)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner-lip gap / inter-ocular distance")
    ax2 = ax.twinx()
    energy = _arr(ser["speech_energy_db"])
    ax2.fill_between(np.arange(len(energy)) / fps, np.nan_to_num(energy, nan=-100.0), -100.0,
                     color="tab:blue", alpha=0.18, step="mid", label="speech energy")
    finite = energy[np.isfinite(energy)]
    if finite.size:
        ax2.set_ylim(max(-100.0, float(np.percentile(finite, 5)) - 5.0), float(finite.max()) + 3.0)
    ax2.set_ylabel("speech energy (dBFS)")
    r = report["mouth"].get("r_speech_energy")
    title = "mouth opening vs speech energy" + ("" if r is None else f"  (r = {r:.2f})")
    if report["mouth"].get("r_gt_jaw") is not None:
        title += f";  r vs ground-truth jaw = {report['mouth']['r_gt_jaw']:.2f}"
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)
