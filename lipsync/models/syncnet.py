"""SyncNet: does this mouth move with this speech? Two encoders, one shared embedding space.

:class:`SyncNet` is our StableSyncNet-style model (see docs/developer_guide.md, "LatentSync facts"): the lower half of the
aligned face crops of ``num_frames`` consecutive frames (stacked as channels) and the log-mel
window covering the same frames (``4 * num_frames`` steps of 10 ms) are each encoded by a small
2-D conv stack into an L2-normalised embedding. It serves (a) as a frozen supervisor of the
UNet's stage-2 training and (b) as the evaluator's LSE model (5-frame windows).

Training signal: binary cross-entropy on the cosine similarity of the two embeddings, mapped into
(0, 1) by ``p = (cos + 1) / 2`` (clamped to [1e-6, 1 - 1e-6]). StableSyncNet / Wav2Lip take
``relu(cos)`` instead; with that, a positive pair whose cosine starts negative gets no gradient at
all, so we use the affine map, which keeps a gradient everywhere and sends negatives towards
``cos = -1``. Batches are balanced (half positives, half negatives); negatives are the same video
window with the audio of the same clip shifted by ``min_shift``..``max_shift`` frames (the hard
ones, which teach timing) or audio from another clip (see :func:`make_pairs`).

Time convention: video frame ``i`` (25 fps) spans mel steps ``4i .. 4i + 3`` of :func:`log_mel`
(16 kHz, hop 160, centred frames), so the window starting at frame ``i`` pairs with mel columns
``4i .. 4i + 4 * num_frames - 1``.

:class:`SyncNetV2` is Joon Son Chung's public SyncNet (``syncnet_v2.model``, the model of the
``syncnet_python`` repository and of every published LSE-C / LSE-D figure), for users who have
that file: 5 colour face crops of 224 x 224 (BGR, 0..255) through a 3-D conv lip encoder, 13 x 20
MFCC (:func:`mfcc_v2`) through a 2-D conv audio encoder, 1024-d unnormalised outputs.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.errors import CheckpointError
from lipsync.media.formats import FPS, SAMPLE_RATE

HOP_LENGTH = 160  # 10 ms
N_FFT = 400
N_MELS = 80
MEL_STEPS_PER_FRAME = SAMPLE_RATE // HOP_LENGTH // FPS  # 4
MODEL_TYPE = "lipsync_syncnet"
_EPS = 1e-6


# ------------------------------------------------------------------------------------ features


def log_mel(samples: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, 1 + n // 160) float32 log-mel of mono speech, normalised to [-1, 1] against the
    file's own maximum (Whisper's recipe: log10 power floored 8 decades below the maximum, so the
    recording level does not matter). Step ``t`` is centred on sample ``160 t``. THE audio front
    end of :class:`SyncNet`, for training and evaluation alike."""
    import librosa

    x = samples.detach().cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples)
    scale = 1.0 / 32768.0 if np.issubdtype(x.dtype, np.integer) else 1.0  # int16 PCM
    if x.ndim == 2:  # (channels, n)
        x = x.mean(axis=0)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"audio must be a non-empty mono signal shaped (n,) or (channels, n), got {x.shape}")
    x = x.astype(np.float32) * scale
    if int(sample_rate) != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, int(sample_rate), SAMPLE_RATE, quality="HQ").astype(np.float32)
    power = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                           win_length=N_FFT, n_mels=n_mels, fmin=0.0, fmax=SAMPLE_RATE / 2,
                                           center=True, pad_mode="reflect", power=2.0)
    logp = np.log10(np.maximum(power, 1e-10))
    top = float(logp.max())
    logp = np.maximum(logp, top - 8.0)
    return ((logp - top) / 4.0 + 1.0).astype(np.float32)


def lower_half(crops: np.ndarray | torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Aligned face crops (..., S, S, 3) uint8 RGB -> their lower half, (..., 3, h, w) float32 in
    [-1, 1], resized (area) to ``image_size`` = (h, w) when given (default: S/2 x S)."""
    x = torch.as_tensor(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else crops)
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"crops must be shaped (..., S, S, 3), got {tuple(x.shape)}")
    lead = x.shape[:-3]
    s = x.shape[-3]
    x = x[..., s // 2:, :, :].reshape(-1, s - s // 2, x.shape[-2], 3).permute(0, 3, 1, 2).float()
    if image_size is not None and tuple(x.shape[-2:]) != tuple(image_size):
        x = F.interpolate(x, size=tuple(int(v) for v in image_size), mode="area")
    x = x / 127.5 - 1.0
    return x.reshape(*lead, 3, *x.shape[-2:])


# ------------------------------------------------------------------------------------ our model


@dataclass
class SyncNetConfig:
    """Configuration of :class:`SyncNet` (stored in ``config.json``)."""

    num_frames: int = 5  # 5 for LSE evaluation; up to 16 for a training supervisor
    crop_size: int = 96  # the aligned crop the lower half is taken from (tiny profile: 96)
    image_size: tuple[int, int] = (32, 64)  # (h, w) the lower half is resized to
    n_mels: int = N_MELS
    mel_steps_per_frame: int = MEL_STEPS_PER_FRAME
    visual_channels: tuple[int, ...] = (32, 64, 96, 128)  # one stride-2 3x3 conv each
    audio_channels: tuple[int, ...] = (32, 64, 96, 128)  # stride 2 in frequency; 2 in time for 2 of them
    visual_pool: tuple[int, int] = (2, 4)
    audio_pool_freq: int = 1  # the audio map is pooled to (audio_pool_freq, num_frames)
    hidden_dim: int = 256
    embed_dim: int = 128

    @property
    def mel_steps(self) -> int:
        return self.num_frames * self.mel_steps_per_frame

    def validate(self) -> None:
        if not 1 <= self.num_frames <= 32:
            raise ValueError(f"num_frames must be in 1..32, got {self.num_frames}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size must be (h, w) with both >= 8, got {self.image_size}")
        if self.mel_steps_per_frame % 4:
            raise ValueError("mel_steps_per_frame must be a multiple of 4 (two stride-2 time convs)")
        if len(self.visual_channels) < 2 or len(self.audio_channels) < 2:
            raise ValueError("visual_channels and audio_channels need at least two stages each")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"model_type": MODEL_TYPE, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "SyncNetConfig":
        d = {k: v for k, v in dict(d).items() if k != "model_type"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SyncNet config keys {unknown}")
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        cfg = cls(**d)
        cfg.validate()
        return cfg


def _conv_stack(in_ch: int, channels: Sequence[int], strides: Sequence) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_ch
    for ch, st in zip(channels, strides):
        layers += [nn.Conv2d(c, ch, 3, stride=st, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        c = ch
    return nn.Sequential(*layers)


class SyncNet(nn.Module):
    """Visual and audio encoders into one L2-normalised embedding space (see the module doc).

    ``forward(frames, mel)``: frames (B, F, 3, h, w) in [-1, 1], the lower half of the aligned
    crops (:func:`lower_half` makes them from uint8 crops; any h x w is resized, differentiably, to
    ``image_size``), mel (B, 1, n_mels, 4F) (columns of :func:`log_mel`) -> (v_emb, a_emb), each
    (B, embed_dim). As a frozen supervisor keep it in ``eval()`` mode (BatchNorm statistics fixed)
    with ``requires_grad_(False)``; gradients still flow into ``frames``.
    """

    def __init__(self, config: SyncNetConfig | None = None):
        super().__init__()
        cfg = config or SyncNetConfig()
        cfg.validate()
        self.config = cfg
        nv, na = len(cfg.visual_channels), len(cfg.audio_channels)
        self.visual = _conv_stack(3 * cfg.num_frames, cfg.visual_channels, [1] + [2] * (nv - 1))
        self.visual_pool = nn.AdaptiveAvgPool2d(tuple(cfg.visual_pool))
        self.visual_head = nn.Sequential(
            nn.Flatten(), nn.Linear(cfg.visual_channels[-1] * cfg.visual_pool[0] * cfg.visual_pool[1], cfg.hidden_dim),
            nn.ReLU(inplace=True), nn.Linear(cfg.hidden_dim, cfg.embed_dim))
        # Every stage halves the mel axis; the last two also halve time, leaving 4F / 4 = F columns
        # (one per video frame), which the pool keeps apart: the embedding knows the order of events.
        t_strides = [1] * (na - 2) + [2, 2]
        self.audio = _conv_stack(1, cfg.audio_channels, [(2, t) for t in t_strides])
        self.audio_pool = nn.AdaptiveAvgPool2d((cfg.audio_pool_freq, cfg.num_frames))
        self.audio_head = nn.Sequential(
            nn.Flatten(), nn.Linear(cfg.audio_channels[-1] * cfg.audio_pool_freq * cfg.num_frames, cfg.hidden_dim),
            nn.ReLU(inplace=True), nn.Linear(cfg.hidden_dim, cfg.embed_dim))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if frames.ndim != 5 or frames.shape[1] != cfg.num_frames or frames.shape[2] != 3:
            raise ValueError(f"frames must be shaped (B, {cfg.num_frames}, 3, h, w), got {tuple(frames.shape)}")
        x = frames.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != tuple(cfg.image_size):
            b, f = x.shape[:2]
            x = F.interpolate(x.reshape(b * f, 3, *x.shape[-2:]), size=tuple(cfg.image_size), mode="area")
            x = x.reshape(b, f, 3, *cfg.image_size)
        x = x.flatten(1, 2)
        return F.normalize(self.visual_head(self.visual_pool(self.visual(x))), dim=-1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if mel.ndim == 3:
            mel = mel[:, None]
        if mel.ndim != 4 or mel.shape[1] != 1 or mel.shape[2] != cfg.n_mels or mel.shape[3] != cfg.mel_steps:
            raise ValueError(f"mel must be shaped (B, 1, {cfg.n_mels}, {cfg.mel_steps}), got {tuple(mel.shape)}")
        x = self.audio(mel.to(self.device, torch.float32))
        return F.normalize(self.audio_head(self.audio_pool(x)), dim=-1)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_video(frames), self.embed_audio(mel)

    # ---- files

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` in ``folder`` (each written atomically)."""
        from lipsync.models.weights import save_config_and_weights

        save_config_and_weights(folder, self.config.to_dict(), self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> "SyncNet":
        from lipsync.models.weights import load_strict, read_config, read_state_dict

        folder = Path(folder)
        config_path = folder / "config.json"
        raw = read_config(folder, "SyncNet")
        if raw.get("model_type") != MODEL_TYPE:
            raise CheckpointError(str(config_path), f"not a SyncNet config (model_type must be {MODEL_TYPE!r})")
        try:
            model = cls(SyncNetConfig.from_dict(raw))
        except (TypeError, ValueError) as err:
            raise CheckpointError(str(config_path), f"invalid config: {err}") from err
        weights = folder / "model.safetensors"
        load_strict(model, read_state_dict(weights), weights, what="SyncNet")
        return model.to(map_location).eval()


# ------------------------------------------------------------------------------------ training


def sync_probability(v_emb: torch.Tensor, a_emb: torch.Tensor) -> torch.Tensor:
    """P(in sync) = (cos + 1) / 2, clamped into (0, 1) (see the module doc for why not relu)."""
    cos = F.cosine_similarity(v_emb, a_emb, dim=-1)
    return ((cos + 1.0) / 2.0).clamp(_EPS, 1.0 - _EPS)


def sync_loss(model: SyncNet, frames: torch.Tensor, mel: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE of :func:`sync_probability` against ``labels`` (1 = in sync, 0 = not). As a frozen
    supervisor (stage 2): ``sync_loss(syncnet, generated_lower_halves, mel, torch.ones(B))``;
    gradients flow into ``frames``."""
    v, a = model(frames, mel)
    p = sync_probability(v, a)
    return F.binary_cross_entropy(p, labels.to(p.device, p.dtype).reshape(p.shape))


@dataclass
class SyncClip:
    """One clip for :func:`make_pairs`: per-frame images and the clip's log-mel.

    ``frames``: (N, S, S, 3) uint8 aligned crops, or (N, 3, h, w) float already through
    :func:`lower_half`; ``mel``: (n_mels, T) from :func:`log_mel`; ``valid``: optional (N,) bool,
    False where a frame has no face (windows never include it)."""

    frames: np.ndarray | torch.Tensor
    mel: np.ndarray | torch.Tensor
    valid: np.ndarray | None = None

    def starts(self, num_frames: int, steps_per_frame: int = MEL_STEPS_PER_FRAME) -> np.ndarray:
        """Window starts i whose frames i .. i+F-1 are valid and whose mel window fits."""
        n = min(len(self.frames), int(self.mel.shape[-1]) // steps_per_frame)
        if n < num_frames:
            return np.zeros(0, np.int64)
        ok = np.ones(len(self.frames), bool) if self.valid is None else np.asarray(self.valid, bool)
        good = np.convolve(ok[:n].astype(np.int64), np.ones(num_frames, np.int64), mode="valid") == num_frames
        return np.nonzero(good)[0].astype(np.int64)


def _as_clip(c) -> SyncClip:
    if isinstance(c, SyncClip):
        return c
    return SyncClip(*c)


def _window_frames(clip: SyncClip, start: int, num_frames: int, image_size) -> torch.Tensor:
    fr = clip.frames[start:start + num_frames]
    if isinstance(fr, torch.Tensor) and fr.is_floating_point():
        return fr.float()
    if isinstance(fr, np.ndarray) and fr.dtype != np.uint8 and fr.ndim == 4 and fr.shape[1] == 3:
        return torch.from_numpy(fr).float()
    return lower_half(fr, image_size)


def make_pairs(clips: Sequence, batch_size: int, config: SyncNetConfig | None = None,
               rng: np.random.Generator | None = None, *, min_shift: int = 2, max_shift: int | None = 15,
               other_clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A balanced batch: ``batch_size // 2`` in-sync pairs, the rest out of sync.

    ``clips``: :class:`SyncClip` objects or (frames, mel[, valid]) tuples (see SyncClip).
    Each pair takes a random valid window of a random clip. A negative keeps the window's frames
    and takes the audio of the same clip shifted by ``min_shift .. max_shift`` frames either way
    (any shift >= ``min_shift`` when ``max_shift`` is None), or, with probability ``other_clip``
    (and always when the clip has no room to shift), a random audio window of another clip.
    Returns frames (B, F, 3, h, w) float in [-1, 1], mel (B, 1, n_mels, 4F), labels (B,) float
    (1 = in sync). Pure numpy / torch: callable from any data loader or training loop.
    """
    cfg = config or SyncNetConfig()
    rng = rng if rng is not None else np.random.default_rng()
    clips = [_as_clip(c) for c in clips]
    nf, spf = cfg.num_frames, cfg.mel_steps_per_frame
    starts = [c.starts(nf, spf) for c in clips]
    usable = [k for k, s in enumerate(starts) if len(s)]
    if not usable:
        raise ValueError(f"no clip holds a valid {nf}-frame window with audio")
    # Audio windows: any start whose mel window fits (the frames need no face).
    audio_max = [int(c.mel.shape[-1]) // spf - nf for c in clips]
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2 (one positive, one negative)")
    n_pos = batch_size // 2
    frames, mels, labels = [], [], []

    def mel_window(c: SyncClip, j: int) -> torch.Tensor:
        m = torch.as_tensor(c.mel[:, j * spf:(j + nf) * spf], dtype=torch.float32)
        return m[None]

    for b in range(batch_size):
        k = usable[int(rng.integers(len(usable)))]
        clip = clips[k]
        i = int(starts[k][int(rng.integers(len(starts[k])))])
        frames.append(_window_frames(clip, i, nf, cfg.image_size))
        if b < n_pos:
            mels.append(mel_window(clip, i))
            labels.append(1.0)
            continue
        labels.append(0.0)
        hi = audio_max[k] if max_shift is None else min(audio_max[k], i + max_shift)
        lo = 0 if max_shift is None else max(0, i - max_shift)
        shifts = [j for j in range(lo, hi + 1) if abs(j - i) >= min_shift]
        others = [m for m in range(len(clips)) if m != k and audio_max[m] >= 0]
        if others and (not shifts or rng.random() < other_clip):
            m = others[int(rng.integers(len(others)))]
            mels.append(mel_window(clips[m], int(rng.integers(audio_max[m] + 1))))
        elif shifts:
            mels.append(mel_window(clip, shifts[int(rng.integers(len(shifts)))]))
        else:
            raise ValueError(f"cannot make a negative: a single clip shorter than {nf + min_shift} frames")
    return torch.stack(frames), torch.stack(mels), torch.tensor(labels, dtype=torch.float32)


def fit_quick(clips: Sequence, config: SyncNetConfig | None = None, *, seconds: float = 30.0,
              max_steps: int | None = None, batch_size: int = 32, lr: float = 5e-4, seed: int = 0,
              min_shift: int = 2, max_shift: int | None = 15, other_clip: float = 0.2,
              log: Callable[[int, float, float], None] | None = None) -> tuple[SyncNet, dict]:
    """Train a SyncNet from scratch on ``clips`` for ``seconds`` of wall time (or ``max_steps``):
    Adam, balanced batches from :func:`make_pairs`, one process. For tests, demos and small
    corpora; the distributed trainer does the real runs. Returns (model in eval mode, history)
    with history = {"steps", "seconds", "loss" (per step), "accuracy" (per step, threshold 0.5)}."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = config or SyncNetConfig()
    model = SyncNet(cfg)
    # Convert every clip's crops once (lower half, resized): batches then only gather.
    prepared = []
    for c in (_as_clip(c) for c in clips):
        fr = c.frames
        if not (isinstance(fr, torch.Tensor) and fr.is_floating_point()):
            fr = lower_half(fr, cfg.image_size)
        prepared.append(SyncClip(fr, torch.as_tensor(np.asarray(c.mel), dtype=torch.float32), c.valid))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    hist = {"loss": [], "accuracy": []}
    t0 = time.perf_counter()
    step = 0
    while True:
        if max_steps is not None and step >= max_steps:
            break
        if max_steps is None and time.perf_counter() - t0 >= seconds:
            break
        frames, mel, labels = make_pairs(prepared, batch_size, cfg, rng, min_shift=min_shift,
                                         max_shift=max_shift, other_clip=other_clip)
        v, a = model(frames, mel)
        p = sync_probability(v, a)
        loss = F.binary_cross_entropy(p, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float(((p.detach() > 0.5).float() == labels).float().mean())
        hist["loss"].append(float(loss.detach()))
        hist["accuracy"].append(acc)
        step += 1
        if log is not None:
            log(step, float(loss), acc)
    hist["steps"] = step
    hist["seconds"] = time.perf_counter() - t0
    return model.eval(), hist


# ------------------------------------------------------------------------------------ SyncNet v2


def _mfcc_filterbank(nfilt: int, nfft: int, sample_rate: int) -> np.ndarray:
    def hz2mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel2hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    points = np.linspace(hz2mel(0.0), hz2mel(sample_rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(points) / sample_rate).astype(np.int64)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(bins[j], bins[j + 1]):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(bins[j + 1], bins[j + 2]):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fbank


def mfcc_v2(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(13, steps) MFCC exactly as ``python_speech_features.mfcc(audio, 16000)`` computes it on
    int16-scaled audio (what syncnet_python feeds SyncNet v2): 25 ms rectangular frames every
    10 ms, pre-emphasis 0.97, 512-point FFT, 26 mel filters, log, DCT-II (ortho), lifter 22,
    c0 replaced by the log frame energy. ``steps = 1 + ceil((n - 400) / 160)``."""
    from scipy.fft import dct

    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"audio must be a non-empty mono signal, got shape {x.shape}")
    if int(sample_rate) != SAMPLE_RATE:
        raise ValueError("mfcc_v2 expects 16 kHz audio")
    if np.abs(x).max() <= 1.0 + 1e-6:  # float audio in [-1, 1]: scale to int16 like wavfile.read
        x = x * 32768.0
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    frame_len, step, nfft = 400, 160, 512
    n = len(x)
    num = 1 if n <= frame_len else 1 + int(math.ceil((n - frame_len) / step))
    pad = np.concatenate([x, np.zeros((num - 1) * step + frame_len - n)])
    idx = np.arange(frame_len)[None, :] + step * np.arange(num)[:, None]
    frames = pad[idx]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = power @ _mfcc_filterbank(26, nfft, SAMPLE_RATE).T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :13]
    lift = 1.0 + (22 / 2.0) * np.sin(np.pi * np.arange(13) / 22)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat.T.astype(np.float32)


class SyncNetV2(nn.Module):
    """The architecture of syncnet_python's ``SyncNetModel.S`` (Chung & Zisserman, "Out of time",
    2016), so the public ``syncnet_v2.model`` state dict loads with its own key names.

    ``forward_lip``: (B, 3, 5, 224, 224) BGR face crops, 0..255 -> (B, 1024);
    ``forward_aud``: (B, 1, 13, 20) MFCC (:func:`mfcc_v2`) -> (B, 1024). Compare with Euclidean
    distance (the embeddings are not normalised)."""

    num_frames = 5
    image_size = 224

    def __init__(self, embed_dim: int = 1024):
        super().__init__()

        def c2(i, o):
            return [nn.Conv2d(i, o, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1)), nn.BatchNorm2d(o),
                    nn.ReLU(inplace=True)]

        self.netcnnaud = nn.Sequential(
            *c2(1, 64), nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *c2(64, 192), nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *c2(192, 384), *c2(384, 256), *c2(256, 256), nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=(0, 0)), nn.BatchNorm2d(512), nn.ReLU())
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))

        def c3(i, o, k, s=(1, 1, 1), p=(0, 1, 1)):
            return [nn.Conv3d(i, o, kernel_size=k, stride=s, padding=p), nn.BatchNorm3d(o), nn.ReLU(inplace=True)]

        self.netcnnlip = nn.Sequential(
            *c3(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *c3(256, 256, (1, 3, 3)), *c3(256, 256, (1, 3, 3)), *c3(256, 256, (1, 3, 3)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *c3(256, 512, (1, 6, 6), p=0))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(x.to(self.device, torch.float32))
        return self.netfcaud(mid.reshape(mid.shape[0], -1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(x.to(self.device, torch.float32))
        return self.netfclip(mid.reshape(mid.shape[0], -1))

    def forward(self, lips: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_lip(lips), self.forward_aud(mfcc)

    @classmethod
    def from_file(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "SyncNetV2":
        """Load ``syncnet_v2.model`` (or any torch / safetensors file of the same state dict)
        strictly; read with ``weights_only=True``, so the file cannot run code. BatchNorm
        ``num_batches_tracked`` counters (absent from files of old PyTorch versions) may be missing."""
        from lipsync.models.weights import describe_mismatch

        path = Path(path)
        state = _read_any_state_dict(path)
        state = {k.removeprefix("module.").removeprefix("__S__."): v for k, v in state.items()}
        model = cls()
        own = model.state_dict()
        for k, v in own.items():
            if k.endswith("num_batches_tracked") and k not in state:
                state[k] = v.clone()
        report = describe_mismatch({k: v.shape for k, v in own.items()}, state)
        if report:
            raise CheckpointError(str(path), f"does not fit SyncNet v2 (syncnet_python's SyncNetModel.S): {report}")
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()


def _read_any_state_dict(path: Path) -> dict:
    """A flat tensor dict from a torch file of any suffix (``.model`` included) or safetensors."""
    from lipsync.models.weights import TORCH_SUFFIXES, read_state_dict

    if path.suffix.lower() in (".safetensors",) + TORCH_SUFFIXES:
        return read_state_dict(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(str(path), "file is empty (0 bytes): the download did not complete")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(str(path), "refused: the file contains pickled code or objects beyond plain tensors "
                                         "(only weights_only=True files are loaded)") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(str(path), f"corrupt or truncated torch file ({type(err).__name__}: "
                                         f"{str(err).splitlines()[0][:200] if str(err) else ''})") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(str(path), "no state dict found (expected a dict of tensors)")
    return dict(obj)


def load_syncnet(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SyncNet | SyncNetV2:
    """A folder in our format -> :class:`SyncNet`; a file (``syncnet_v2.model``) -> :class:`SyncNetV2`."""
    p = Path(path)
    if p.is_dir():
        return SyncNet.from_pretrained(p, map_location)
    if p.is_file():
        return SyncNetV2.from_file(p, map_location)
    raise CheckpointError(str(p), "not found: give a SyncNet folder (config.json + model.safetensors) "
                                  "or the syncnet_v2.model file")


__all__ = ["SyncClip", "SyncNet", "SyncNetConfig", "SyncNetV2", "fit_quick", "load_syncnet", "log_mel",
           "lower_half", "make_pairs", "mfcc_v2", "sync_loss", "sync_probability"]
