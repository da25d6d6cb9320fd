"""How much of the jaw's motion the KEPT part of the training crops carries (a leak the UNet can
read instead of the audio), from preprocessing shards of synthetic clips (they hold ``gt_jaw``):

    .venv/bin/python benchmarks/alignment_leak.py --shards out/train/shards [--max_files 40]

Per segment and pixel, |Pearson r| between the crop's grey level and the ground-truth jaw; the
90th percentile over a band of rows, averaged over segments. Smooth signals correlate by chance,
so each band is also scored against another segment's jaw (the baseline), and the upper face
(rows 0.10-0.45, above the lower-face mask) against the jaw shifted by -8..+8 frames: a peak at a
positive lag means the crop responds to the jaw that many frames late (a causal filter's lag).
The synthetic head motion is independent of speech, so with a leak-free alignment every figure
outside the mask stays at the baseline (it does on shards of the current preprocessing, which
registers the upper face; docs/developer_guide.md has the figures before and after).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lipsync.train.prepare import decode_image  # noqa: E402

BANDS = [(0.10, 0.30), (0.30, 0.40), (0.40, 0.45), (0.45, 0.50), (0.50, 0.55), (0.60, 0.80)]
UPPER = (0.10, 0.45)
LAGS = (-8, -4, -2, 0, 2, 4, 8)


def load_segments(shards: str, max_files: int) -> list[tuple[np.ndarray, np.ndarray]]:
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(shards, "train", "*.parquet")))[:max_files]
    if not files:
        raise SystemExit(f"{shards}: no train/*.parquet shards (run `lipsync preprocess` first)")
    segs = []
    for f in files:
        for row in pq.read_table(f, columns=["frames", "gt_jaw"]).to_pylist():
            if row["gt_jaw"] is None:
                continue
            grey = np.stack([decode_image(b).astype(np.float32).mean(-1) for b in row["frames"]])
            segs.append((grey, np.asarray(row["gt_jaw"], np.float32)))
    if not segs:
        raise SystemExit(f"{shards}: no segment carries gt_jaw (shards of synthetic clips are needed)")
    return segs


def abs_corr(x: np.ndarray, j: np.ndarray) -> np.ndarray:
    """|r| of every pixel of ``x`` (F, H, W) with ``j`` (F,)."""
    xc, jc = x - x.mean(0), j - j.mean()
    return np.abs((xc * jc[:, None, None]).sum(0) / (np.sqrt((xc ** 2).sum(0) * (jc ** 2).sum()) + 1e-6))


def band(c: np.ndarray, rows: tuple[float, float]) -> float:
    s = c.shape[0]
    return float(np.percentile(c[int(rows[0] * s):int(rows[1] * s)], 90))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="out/train/shards")
    ap.add_argument("--max_files", type=int, default=40)
    args = ap.parse_args(argv)
    segs = load_segments(args.shards, args.max_files)
    print(f"{len(segs)} segments, crops {segs[0][0].shape[1]} px")
    for rows in BANDS:
        own, other = [], []
        for i, (x, j) in enumerate(segs):
            jo = segs[(i + 7) % len(segs)][1]
            if len(jo) < len(j):
                continue
            own.append(band(abs_corr(x, j), rows))
            other.append(band(abs_corr(x, jo[:len(j)]), rows))
        print(f"rows {rows[0]:.2f}-{rows[1]:.2f}: |r| with own jaw {np.mean(own):.3f}, "
              f"with another segment's jaw {np.mean(other):.3f}")
    for lag in LAGS:
        vals = []
        for x, j in segs:
            n = len(j)
            xs, js = (x[lag:], j[:n - lag]) if lag >= 0 else (x[:n + lag], j[-lag:])
            vals.append(band(abs_corr(xs, js), UPPER))
        print(f"upper face (rows {UPPER[0]:.2f}-{UPPER[1]:.2f}), pixels {lag:+d} frames after the jaw: "
              f"{np.mean(vals):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
