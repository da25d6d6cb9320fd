"""Training shards the train tests make themselves: synthetic 2 s clips of the bundled portrait
(one identity), one 48-frame segment each, written by the preprocessing stage in-process; the last
clip goes to val."""

from __future__ import annotations

import shutil
from pathlib import Path


def make_shards(root: Path, num: int, seed: int) -> Path:
    from lipsync.synth.corpus import make_clip
    from lipsync.train.prepare import ClipPreparer, PrepareOptions
    from lipsync.train.sources import discover

    corpus = root / "corpus"
    for i in range(num):
        # One identity (the portrait unchanged): the val clip is the same face saying something else.
        make_clip(corpus / f"clip_{i:05d}", seed=seed + i, seconds=2, size=128, langs=["en"], identity=0)
    out = root / "shards"
    stage = ClipPreparer(str(out), PrepareOptions(segment_frames=48))
    for t in discover(str(corpus))[0]:
        assert stage(t).segments == 1
    last = f"clip_{num - 1:05d}.parquet"
    (out / "val").mkdir()
    shutil.move(str(out / "train" / last), str(out / "val" / last))
    return out
