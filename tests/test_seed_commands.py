"""The original documentation's commands, run as written from the repository's root-level scripts:
``python cli.py ...`` (= ``lipsync generate``) and ``python train.py --config configs/model_config.yaml
...`` (= ``lipsync preprocess`` + ``lipsync train``) on a ``dataset/{train,val}/{videos,audios}`` layout.
Each runs as a real subprocess; training is cut to one step (``--max_steps 1``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "lipsync" / "assets" / "samples"


def _run(argv: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_cli_py_generates(tmp_path):
    """python cli.py --video_path ... --audio_path ... --output_path ... --batch_size 4 --num_steps N, on
    the bundled sample video and the first 1.6 s of its speech (two 16-frame windows, one batch)."""
    from lipsync.media.audio import load_audio, save_wav
    from lipsync.media.probe import probe

    wav = tmp_path / "input_audio.wav"
    save_wav(str(wav), load_audio(str(SAMPLES / "speech.wav"))[: int(1.6 * 16000)], 16000)
    out_mp4 = tmp_path / "output_video.mp4"
    proc, seconds = _run([str(ROOT / "cli.py"), "--video_path", str(SAMPLES / "face.mp4"),
                          "--audio_path", str(wav), "--output_path", str(out_mp4),
                          "--batch_size", "4", "--num_steps", "2"], tmp_path, 600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = probe(str(out_mp4))
    speech = probe(str(wav))
    assert info.video is not None and info.audio is not None
    assert abs(info.duration - speech.duration) < 0.2
    print(f"cli.py: {seconds:.0f} s")


def _dataset(root: Path) -> None:
    """dataset/{train,val}/{videos,audios}: 2 train clips and 1 val clip of 2 s (one 48-frame segment
    each), every video paired with a wav of the same stem."""
    from lipsync.synth.corpus import make_clip

    for i, (split, stem) in enumerate([("train", "spk_a"), ("train", "spk_b"), ("val", "spk_c")]):
        clip = root / "clips" / stem
        make_clip(clip, seed=300 + i, seconds=2, size=128, langs=["en"], identity=0)
        for sub in ("videos", "audios"):
            (root / "dataset" / split / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip / "video.mp4", root / "dataset" / split / "videos" / f"{stem}.mp4")
        shutil.copy(clip / "audio.wav", root / "dataset" / split / "audios" / f"{stem}.wav")
    shutil.rmtree(root / "clips")


@pytest.mark.slow
def test_train_py_preprocesses_and_trains(tmp_path):
    """python train.py --config configs/model_config.yaml --log_dir logs/ --save_dir checkpoints/ --resume False,
    in a folder holding dataset/ and a copy of configs/model_config.yaml (its paths are relative to it)."""
    _dataset(tmp_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "model_config.yaml", tmp_path / "configs" / "model_config.yaml")
    argv = [str(ROOT / "train.py"), "--config", "configs/model_config.yaml", "--log_dir", "logs/",
            "--save_dir", "checkpoints/", "--resume", "False", "--max_steps", "1", "--set", "data.val_batches=1"]
    proc, seconds = _run(argv, tmp_path, 900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    report = tmp_path / "data" / "shards" / "dataset"
    assert sorted(p.name for p in (report / "train").glob("*.parquet")) == ["train-spk_a.parquet",
                                                                            "train-spk_b.parquet"]
    assert [p.name for p in (report / "val").glob("*.parquet")] == ["val-spk_c.parquet"]
    model = tmp_path / "checkpoints" / "finetune" / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["profile"]["name"] == "tiny"
    assert "train: done at step 1" in proc.stdout
    print(f"train.py: {seconds:.0f} s")

    # --resume True continues that run (the finished clips are not prepared again).
    argv[argv.index("--resume") + 1] = "True"
    argv[argv.index("--max_steps") + 1] = "2"
    again, seconds = _run(argv, tmp_path, 600)
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-4000:])
    assert "train: done at step 2" in again.stdout
    print(f"train.py --resume True: {seconds:.0f} s")
    print(again.stdout[-3000:])


@pytest.mark.parametrize("edit, message", [
    ({"dataset": {"train": "data/training", "shards": "s"}, "training": "unet_stage1"}, "folder named train"),
    ({"dataset": {"train": "d/train", "val": "e/val", "shards": "s"}, "training": "unet_stage1"}, "beside"),
    ({"dataset": {"train": "d/train", "shards": "s"}, "training": "unet_stage1", "extra": 1}, "unknown key 'extra'"),
    ({"dataset": {"train": "d/train", "shards": "s"}, "training": {"recipe": "unet_stage1", "lossx": 1}},
     "unknown key 'lossx'"),
    ({"dataset": {"train": "elsewhere/train", "shards": "s"}, "training": "unet_stage1"}, "no such folder"),
])
def test_train_py_config_errors(tmp_path, edit, message):
    """A config that cannot run fails at once, naming the file, before any preprocessing."""
    import yaml

    (tmp_path / "d" / "train").mkdir(parents=True)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(edit))
    proc, _ = _run([str(ROOT / "train.py"), "--config", str(cfg)], tmp_path, 120)
    assert proc.returncode == 1 and message in proc.stderr and str(cfg) in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()
