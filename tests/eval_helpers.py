"""Helpers for the SyncNet and evaluation tests: rendering small synthetic clips, a SyncNet trained
on a few of them in seconds, and single-threaded torch (on a shared 2-core machine, two OpenMP
threads fighting other processes run ~4x slower than one)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch

# A SyncNet small enough to learn the synthetic corpus in ~20 s of one CPU core.
TEST_SYNCNET = dict(image_size=(24, 48), visual_channels=(16, 32, 64, 64), audio_channels=(16, 32, 64, 64),
                    hidden_dim=128, embed_dim=64)
FIT_STEPS = 400
SAMPLE_RATE = 16000


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render(root: Path, name: str, seed: int, seconds: float = 4.0, size: int = 128) -> Path:
    from lipsync.synth.corpus import make_clip

    d = Path(root) / name
    if not (d / "meta.json").exists():
        make_clip(d, seed=seed, seconds=seconds, size=size, langs=["en"])
    return d


def train_clips(clip_dirs: list[Path]):
    """(SyncClip list, analyses): crops from the evaluator's own face path, mel from log_mel."""
    from lipsync.eval.evaluator import analyze_video
    from lipsync.media.audio import load_audio
    from lipsync.models.syncnet import SyncClip, log_mel

    clips, analyses = [], []
    for d in clip_dirs:
        an = analyze_video(str(d / "video.mp4"))
        clips.append(SyncClip(an.crops, log_mel(load_audio(str(d / "audio.wav"))), an.has_face))
        analyses.append(an)
    return clips, analyses


def fit_test_syncnet(clips, steps: int = FIT_STEPS, seed: int = 0):
    from lipsync.models.syncnet import SyncNetConfig, fit_quick

    t0 = time.perf_counter()
    model, hist = fit_quick(clips, SyncNetConfig(**TEST_SYNCNET), max_steps=steps, batch_size=32, lr=5e-4, seed=seed)
    hist["wall_seconds"] = time.perf_counter() - t0
    return model, hist


def delayed(samples: np.ndarray, frames: int) -> np.ndarray:
    """The speech moved ``frames`` video frames later (negative: earlier), same length."""
    k = int(round(abs(frames) * SAMPLE_RATE / 25))
    if frames >= 0:
        return np.concatenate([np.zeros(k, samples.dtype), samples])[:len(samples)]
    return np.concatenate([samples[k:], np.zeros(k, samples.dtype)])
