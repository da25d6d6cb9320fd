"""Training-data preparation: discovery of the input layouts, shot cuts, and the Ray Data job on a
small dataset (seed layout + a synthetic corpus clip + a video with a cut + a corrupt file)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from ray_fixtures import ray_session  # noqa: F401

SEG = 24  # frames per segment in these tests (2 s clips = 50 frames -> 2 segments)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from lipsync.synth.corpus import make_clip

    root = tmp_path_factory.mktemp("clips")
    for i in range(3):
        make_clip(root / f"clip_{i:05d}", seed=100 + i, seconds=2, size=128, langs=["en"])
    return root


@pytest.fixture(scope="module")
def dataset(clips, tmp_path_factory):
    """Input folder: a corpus clip (meta.json kept), the seed layout (train: paired audio; val: the
    video's own track), a video with a hard cut in the middle, and a truncated (corrupt) video."""
    from lipsync.media.audio import load_audio
    from lipsync.media.video import iter_frames
    from lipsync.media.writer import VideoWriter

    root = tmp_path_factory.mktemp("dataset")
    shutil.copytree(clips / "clip_00000", root / "clip_00000")
    for d in ("train/videos", "train/audios", "val/videos"):
        (root / d).mkdir(parents=True)
    shutil.copy(clips / "clip_00001" / "video.mp4", root / "train/videos/spk1.mp4")
    shutil.copy(clips / "clip_00001" / "audio.wav", root / "train/audios/spk1.wav")
    shutil.copy(clips / "clip_00002" / "video.mp4", root / "val/videos/spk2.mp4")
    data = (clips / "clip_00002" / "video.mp4").read_bytes()
    (root / "train/videos/broken.mp4").write_bytes(data[: len(data) // 3])
    # 50 frames of clip 1 then 50 of clip 2 (another identity and background): one hard cut at 50.
    audio = np.concatenate([load_audio(str(clips / f"clip_0000{i}" / "audio.wav")) for i in (1, 2)])
    with VideoWriter(str(root / "train/videos/cut.mp4"), fps=25, audio=audio, audio_rate=16000) as w:
        for i in (1, 2):
            for f in iter_frames(str(clips / f"clip_0000{i}" / "video.mp4")):
                w.write(f.image)
    return root


def test_shot_cut_detector(clips):
    from lipsync.media.video import iter_frames
    from lipsync.train.prepare import ShotCutDetector

    frames = [f.image for f in iter_frames(str(clips / "clip_00001" / "video.mp4"), max_frames=20)]
    frames += [f.image for f in iter_frames(str(clips / "clip_00002" / "video.mp4"), max_frames=20)]
    det = ShotCutDetector()
    cuts = [i for i, im in enumerate(frames) if det(im)]
    assert cuts == [20]  # head motion and lighting drift inside a shot are not cuts


def test_discover_layouts(dataset):
    from lipsync.train.sources import discover

    tasks, notes = discover(str(dataset))
    by_id = {t.id: t for t in tasks}
    assert set(by_id) == {"clip_00000", "train-spk1", "train-broken", "train-cut", "val-spk2"}
    assert by_id["clip_00000"].meta.endswith("meta.json") and by_id["clip_00000"].audio.endswith("audio.wav")
    assert by_id["train-spk1"].audio.endswith("train/audios/spk1.wav") and by_id["train-spk1"].split == "train"
    assert by_id["val-spk2"].audio is None and by_id["val-spk2"].split == "val"  # its own audio track
    assert any("spk2" in n for n in notes)
    moved, _ = discover(str(dataset), val_fraction=1.0)
    assert {t.split for t in moved if t.meta is None} == {"val"}


def test_preprocess_job(dataset, tmp_path, ray_session):  # noqa: F811
    import pyarrow.parquet as pq

    from lipsync.train.prepare import PrepareOptions, decode_image
    from pipelines.preprocess import PreprocessJob, exit_code, run_preprocess

    out = tmp_path / "shards"
    lines: list[str] = []
    job = PreprocessJob(str(dataset), str(out), PrepareOptions(segment_frames=SEG, audio_margin_frames=12))
    rows = run_preprocess(job, say=lines.append)
    report = {r["id"]: r for r in pq.read_table(out / "report.parquet").to_pylist()}
    assert {r["id"] for r in rows} == set(report)
    assert report["train-broken"]["status"] == "error" and "broken.mp4" in report["train-broken"]["error"]
    assert exit_code(rows) == 3
    for ident in ("clip_00000", "train-spk1", "val-spk2"):
        assert report[ident]["status"] == "ok" and report[ident]["segments"] == 2, report[ident]
    assert report["train-cut"]["cuts"] == 1 and report["train-cut"]["segments"] == 4

    train = pq.read_table(out / "train").to_pylist()
    val = pq.read_table(out / "val").to_pylist()
    assert {r["clip_id"] for r in val} == {"val-spk2"}
    seg = next(r for r in train if r["clip_id"] == "clip_00000")
    assert seg["num_frames"] == SEG == len(seg["frames"]) and seg["fps"] == 25 and seg["resolution"] == 96
    assert decode_image(seg["frames"][0]).shape == (96, 96, 3)
    assert len(seg["audio"]) == (SEG + 24) * 640 and seg["audio_offset"] == 12 * 640
    assert seg["lang"] == "en" and seg["identity"] and len(seg["gt_jaw"]) == SEG  # corpus ground truth kept
    meta = json.loads((dataset / "clip_00000" / "meta.json").read_text())
    start = seg["start_frame"]
    assert np.allclose(seg["gt_jaw"], meta["mouth"]["jaw"][start:start + SEG], atol=1e-4)
    spk1 = next(r for r in train if r["clip_id"] == "train-spk1")
    assert spk1["lang"] is None and spk1["split"] == "train"
    # The audio is the segment's own: its samples equal the file's from (start - margin) frames on.
    from lipsync.media.audio import load_audio

    wav = load_audio(str(dataset / "train/audios/spk1.wav"))
    a0 = (spk1["start_frame"] - 12) * 640
    lo = max(a0, 0)
    assert np.allclose(np.asarray(spk1["audio"])[lo - a0:lo - a0 + 4000], wav[lo:lo + 4000], atol=1e-6)
    # Segments never span the cut at frame 50 (two per shot).
    cut_starts = sorted(r["start_frame"] for r in train if r["clip_id"] == "train-cut")
    assert cut_starts == [0, 24, 50, 74]
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"]["train"]["segments"] == 8 and info["splits"]["val"]["segments"] == 2

    # A rerun skips finished clips (completion records) and retries the failed one only.
    again = run_preprocess(job, say=lines.append)
    status = {r["id"]: r["status"] for r in again}
    assert status["train-broken"] == "error" and status["clip_00000"] == "skipped"
    assert sum(s == "skipped" for s in status.values()) == 4
    assert os.path.exists(out / "_done" / "clip_00000.json")


def test_sync_filter_hook(clips, tmp_path):
    """The pluggable sync filter: segments it rejects are counted, kept ones record its confidence
    and offset, and their audio is shifted by the offset (offset correction)."""
    import pyarrow.parquet as pq

    from lipsync.media.audio import load_audio
    from lipsync.train.prepare import ClipPreparer, PrepareOptions, audio_slice
    from lipsync.train.sources import ClipTask

    task = ClipTask("c1", str(clips / "clip_00001" / "video.mp4"), str(clips / "clip_00001" / "audio.wav"))
    calls = []

    def shifted(crops, audio, offset, fps):
        calls.append((crops.shape, len(audio), offset, fps))
        return {"confidence": 5.0, "offset": 2}

    opts = PrepareOptions(segment_frames=SEG, min_sync_confidence=3.0, max_sync_offset=6)
    rep = ClipPreparer(str(tmp_path / "a"), opts, sync_filter=shifted)(task)
    assert rep.status == "ok" and rep.segments == 2 and rep.filtered == 0
    assert calls[0] == ((SEG, 96, 96, 3), (SEG + 24) * 640, 12 * 640, 25.0)
    rows = pq.read_table(rep.shard).to_pylist()
    wav = load_audio(task.audio)
    for r in rows:
        assert r["sync_offset"] == 2 and r["sync_confidence"] == 5.0
        a0 = (r["start_frame"] - 2 - 12) * 640  # audio 2 frames ahead: its sound was read 2 frames earlier
        assert np.array_equal(np.asarray(r["audio"], np.float32), audio_slice(wav, a0, a0 + (SEG + 24) * 640))
    rep = ClipPreparer(str(tmp_path / "b"), opts, sync_filter=lambda *a: {"confidence": 1.0, "offset": 0})(task)
    assert rep.segments == 0 and rep.filtered == 2 and rep.shard == ""

    syncnet = pytest.importorskip("lipsync.models.syncnet")
    syncnet.SyncNet(syncnet.SyncNetConfig(num_frames=5)).save_pretrained(tmp_path / "sn")
    from lipsync.train.prepare import load_sync_filter

    fn = load_sync_filter(str(tmp_path / "sn"))
    seg = rows[0]
    from lipsync.train.prepare import decode_image

    crops = np.stack([decode_image(b) for b in seg["frames"]])
    res = fn(crops, np.asarray(seg["audio"], np.float32), seg["audio_offset"], 25.0)
    assert set(res) >= {"confidence", "offset"} and -15 <= res["offset"] <= 15 and res["confidence"] >= 0
    # The filter's offset is the evaluator's (positive = audio ahead); with ideal embeddings, sound
    # 3 frames late gives -3, and offset correction then reads the audio 3 frames later.
    from lipsync.eval.metrics import lse, sync_distances

    v = np.eye(30)[:20]
    a = np.eye(30)
    late = sync_distances(v, np.arange(20), np.roll(a, 3, axis=0), tuple(range(-5, 6)))  # sound 3 frames late
    assert lse(late, tuple(range(-5, 6)))["offset"] == -3


def test_s3_input_and_output(clips, s3_bucket):
    """Input and shards on S3 (a local moto server): discovery, the stage, the trainer's reader."""
    import s3fs

    from lipsync.media.uri import storage_options
    from lipsync.train.data import read_segments
    from lipsync.train.prepare import ClipPreparer, PrepareOptions, read_done
    from lipsync.train.sources import discover

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options())
    src = f"{s3_bucket}/dataset"
    fs.put(str(clips / "clip_00001" / "video.mp4"), f"{src}/train/videos/a.mp4")
    fs.put(str(clips / "clip_00001" / "audio.wav"), f"{src}/train/audios/a.wav")
    fs.put(str(clips / "clip_00002"), f"{src}/corpus/clip_00002", recursive=True)
    tasks, _ = discover(f"s3://{src}")
    by_id = {t.id: t for t in tasks}
    assert set(by_id) == {"train-a", "corpus-clip_00002"}
    assert by_id["train-a"].audio == f"s3://{src}/train/audios/a.wav"
    assert by_id["corpus-clip_00002"].meta == f"s3://{src}/corpus/clip_00002/meta.json"
    out = f"s3://{s3_bucket}/shards"
    stage = ClipPreparer(out, PrepareOptions(segment_frames=SEG))
    rep = stage(by_id["train-a"])
    assert rep.status == "ok" and rep.shard == f"{out}/train/train-a.parquet", rep
    assert read_done(out, "train-a")["segments"] == 2
    segs = read_segments([rep.shard])
    assert len(segs) == 2 and segs[0].crops(0, 2).shape == (2, 96, 96, 3)


def test_empty_input_fails_before_ray(tmp_path, capsys, monkeypatch):
    """A folder with no videos is reported by name without starting or joining a Ray cluster."""
    import pipelines.cluster
    from lipsync.cli import main

    def no_ray(address):
        raise AssertionError("Ray was started for an input with no videos")

    monkeypatch.setattr(pipelines.cluster, "connect", no_ray)
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "no videos found" in err
    assert not (tmp_path / "out").exists()
