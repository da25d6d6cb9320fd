"""Window embeddings for the LSE metrics, from our SyncNet or from the public SyncNet v2.

A scorer turns (a) the analysed video (aligned crops, face boxes) into one embedding per
``window``-frame video window and (b) the speech into one embedding per audio window, both indexed
by the window's first video frame, so that :func:`lipsync.eval.metrics.sync_distances` can compare
video window ``i`` with audio window ``i + shift``.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from lipsync.errors import CheckpointError
from lipsync.models.syncnet import (MEL_STEPS_PER_FRAME, SyncNet, SyncNetV2, load_syncnet, log_mel, lower_half,
                                    mfcc_v2)
from lipsync.profiles import BUNDLED_MODELS

BUNDLED_SYNCNET = BUNDLED_MODELS / "tiny" / "syncnet"
_BATCH = 64


def default_syncnet_path() -> Path:
    """The SyncNet bundled with the package; a clear error while it does not exist yet."""
    if (BUNDLED_SYNCNET / "config.json").is_file():
        return BUNDLED_SYNCNET
    raise CheckpointError(str(BUNDLED_SYNCNET),
                          "no bundled SyncNet in this installation yet: pass --syncnet DIR (a folder written by "
                          "SyncNet.save_pretrained, e.g. a training export) or --syncnet FILE (the public "
                          "syncnet_v2.model)")


class SyncScorer(abc.ABC):
    """Common interface; see the module doc."""

    name: str
    window: int
    crop_size: int | None  # aligned crop size the scorer reads, None if it reads face boxes
    path: str

    @abc.abstractmethod
    def video_embeddings(self, analysis, starts: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def audio_embeddings(self, samples: np.ndarray) -> np.ndarray:
        ...


class OurScorer(SyncScorer):
    """:class:`SyncNet`: lower halves of the aligned crops vs :func:`log_mel` windows."""

    def __init__(self, model: SyncNet, path: str = ""):
        self.model = model.eval()
        self.name = "syncnet"
        self.window = model.config.num_frames
        self.crop_size = model.config.crop_size
        self.path = path

    @torch.no_grad()
    def video_embeddings(self, analysis, starts: np.ndarray) -> np.ndarray:
        cfg = self.model.config
        used = sorted({int(i) + k for i in starts for k in range(self.window)})
        halves = {}
        for k in range(0, len(used), 256):
            idx = used[k:k + 256]
            for j, t in zip(idx, lower_half(analysis.crops[idx], cfg.image_size)):
                halves[j] = t
        out = []
        for k in range(0, len(starts), _BATCH):
            batch = torch.stack([torch.stack([halves[int(i) + f] for f in range(self.window)])
                                 for i in starts[k:k + _BATCH]])
            out.append(self.model.embed_video(batch).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, cfg.embed_dim), np.float32)

    @torch.no_grad()
    def audio_embeddings(self, samples: np.ndarray) -> np.ndarray:
        cfg = self.model.config
        mel = torch.from_numpy(log_mel(samples, n_mels=cfg.n_mels))
        spf = cfg.mel_steps_per_frame
        n = mel.shape[1] // spf - self.window + 1
        out = []
        for k in range(0, max(0, n), _BATCH):
            batch = torch.stack([mel[None, :, j * spf:j * spf + cfg.mel_steps] for j in range(k, min(n, k + _BATCH))])
            out.append(self.model.embed_audio(batch).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, cfg.embed_dim), np.float32)


def v2_crop_boxes(boxes: np.ndarray, has_face: np.ndarray, kernel: int = 13) -> np.ndarray:
    """syncnet_python's crop boxes: per run of consecutive face frames, the box centre and half
    size (half the larger side) are median-filtered over ``kernel`` frames (edges held); the crop
    spans rows cy - s .. cy + 1.8 s and columns cx - 1.4 s .. cx + 1.4 s (crop_scale 0.4).
    Returns (N, 3) = (cx, cy, s), NaN where there is no face."""
    from scipy.ndimage import median_filter

    b = np.asarray(boxes, np.float64)
    raw = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                    np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2], axis=1)
    out = np.full_like(raw, np.nan)
    t = 0
    n = len(raw)
    while t < n:
        if not has_face[t]:
            t += 1
            continue
        u = t
        while u < n and has_face[u]:
            u += 1
        out[t:u] = median_filter(raw[t:u], size=(min(kernel, u - t), 1), mode="nearest")
        t = u
    return out


def v2_crop(image_rgb: np.ndarray, cx: float, cy: float, s: float, size: int = 224, cs: float = 0.4) -> np.ndarray:
    """The 224 x 224 BGR face crop syncnet_python feeds SyncNet v2 (padding value 110)."""
    side = 2.0 * s * (1.0 + cs)
    k = size / side
    x0, y0 = cx - s * (1.0 + cs), cy - s
    m = np.array([[k, 0.0, -x0 * k + 0.5 * k - 0.5], [0.0, k, -y0 * k + 0.5 * k - 0.5]])
    crop = cv2.warpAffine(image_rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(110, 110, 110))
    return np.ascontiguousarray(crop[:, :, ::-1])


class V2Scorer(SyncScorer):
    """The public SyncNet v2: face crops as syncnet_python makes them (with our face tracker's
    mesh boxes instead of S3FD boxes) vs :func:`mfcc_v2` windows of 20 steps."""

    def __init__(self, model: SyncNetV2, path: str = ""):
        self.model = model.eval()
        self.name = "syncnet_v2"
        self.window = SyncNetV2.num_frames
        self.crop_size = None
        self.path = path

    @torch.no_grad()
    def video_embeddings(self, analysis, starts: np.ndarray) -> np.ndarray:
        from lipsync.media.video import iter_frames

        used = sorted({int(i) + k for i in starts for k in range(self.window)})
        wanted = set(used)
        boxes = v2_crop_boxes(analysis.boxes, analysis.has_face)
        crops: dict[int, np.ndarray] = {}
        frames = iter_frames(analysis.video)
        try:
            for fr in frames:
                if fr.index in wanted:
                    cx, cy, s = boxes[fr.index]
                    crops[fr.index] = v2_crop(fr.image, cx, cy, s)
                if used and fr.index >= used[-1]:
                    break
        finally:
            frames.close()
        out = []
        for k in range(0, len(starts), 16):
            batch = np.stack([np.stack([crops[int(i) + f] for f in range(self.window)]) for i in starts[k:k + 16]])
            x = torch.from_numpy(batch).float().permute(0, 4, 1, 2, 3)  # (B, 3, 5, 224, 224)
            out.append(self.model.forward_lip(x).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1024), np.float32)

    @torch.no_grad()
    def audio_embeddings(self, samples: np.ndarray) -> np.ndarray:
        cc = torch.from_numpy(mfcc_v2(samples))
        n = (cc.shape[1] - 20) // MEL_STEPS_PER_FRAME + 1
        out = []
        for k in range(0, max(0, n), _BATCH):
            batch = torch.stack([cc[None, :, 4 * j:4 * j + 20] for j in range(k, min(n, k + _BATCH))])
            out.append(self.model.forward_aud(batch).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1024), np.float32)


def make_scorer(syncnet=None, device: str | torch.device = "cpu") -> SyncScorer:
    """``syncnet``: None (the bundled SyncNet), a folder, a ``syncnet_v2.model`` file, or a
    loaded :class:`SyncNet` / :class:`SyncNetV2`."""
    if isinstance(syncnet, SyncNet):
        return OurScorer(syncnet.to(device), "(in memory)")
    if isinstance(syncnet, SyncNetV2):
        return V2Scorer(syncnet.to(device), "(in memory)")
    path = default_syncnet_path() if syncnet is None else Path(os.fspath(syncnet))
    model = load_syncnet(path, device)
    return (OurScorer if isinstance(model, SyncNet) else V2Scorer)(model, str(path))
