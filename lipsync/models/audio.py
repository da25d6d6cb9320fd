"""Audio encoders: 16 kHz speech -> per-video-frame audio tokens for the UNet's cross-attention.

Two steps, so long files stream:

1. ``features = encoder.features(samples)`` once per file: a small tensor at the encoder's native
   step rate (Whisper: (L, 5, 384) at 50 Hz, 7.5 KiB per step; mel profile: (T, token_dim) at 25 Hz).
2. ``encoder.frame_tokens(features, start, stop)`` for the video frames ``start .. stop - 1`` only:
   (stop - start, tokens_per_frame, token_dim). Frames past the audio's end are allowed; their
   windows are clamped to the last step (``num_frames`` says how many frames the audio covers).

Implementations:

* :class:`WhisperAudioEncoder` - LatentSync's audio path: Whisper log-mel + our Whisper encoder,
  the 5 hidden states of whisper-tiny, and for video frame ``i`` the Whisper steps
  ``2i-4 .. 2i+5`` (clamped to ``[0, L-1]``). Token order (LatentSync's): **steps-major, then
  layers**: token ``t = 5 * k + j`` is hidden state ``j`` (0 = input embedding, 1..4 = blocks)
  of step ``2i - 4 + k``.
* :class:`MelAudioEncoder` - the ``tiny`` profile's small learned encoder over log-mel + MFCC.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.errors import CheckpointError
from lipsync.models.weights import load_strict, read_config, read_state_dict
from lipsync.models.whisper import (HOP_LENGTH, SAMPLE_RATE, WhisperDims, WhisperEncoder, load_whisper_encoder,
                                    log_mel_power, log_mel_spectrogram)

MAX_CHANNELS = 64


def prepare_samples(samples: np.ndarray | torch.Tensor, sample_rate: int | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """float32 1-D 16 kHz tensor on ``device`` from mono ``(n,)`` or ``(channels, n)`` samples.

    Integer PCM is scaled like Whisper's loader (int16 / 32768, int32 / 2**31, uint8 centred on
    128); float64 becomes float32; channels are averaged; ``sample_rate`` other than 16 kHz is
    resampled with soxr (HQ). Empty or non-finite audio raises ValueError.
    """
    if isinstance(samples, (list, tuple)):
        samples = np.asarray(samples)
    if not isinstance(samples, (np.ndarray, torch.Tensor)):
        raise TypeError(f"audio must be a numpy array or a torch tensor, got {type(samples).__name__}")
    x = samples if torch.is_tensor(samples) else torch.from_numpy(np.ascontiguousarray(samples))
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"audio samples must be real numbers, got dtype {x.dtype}")
    if x.dtype == torch.uint8:
        x = (x.float() - 128.0) / 128.0
    elif not x.is_floating_point():
        bits = {torch.int8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}.get(x.dtype, 16)
        x = x.to(torch.float64) / float(2 ** (bits - 1)) if bits > 16 else x.float() / float(2 ** (bits - 1))
    x = x.float()
    if x.ndim == 2:
        if x.shape[0] > MAX_CHANNELS:
            raise ValueError(f"audio shaped {tuple(x.shape)} looks like (n, channels); pass (n,) or (channels, n)")
        x = x.mean(dim=0)
    if x.ndim != 1:
        raise ValueError(f"audio must be shaped (n,) or (channels, n), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("audio is empty (0 samples): there is nothing to compute audio features from")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("audio contains NaN or infinite samples")
    if sample_rate is not None and int(sample_rate) != SAMPLE_RATE:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        import soxr

        x = torch.from_numpy(np.ascontiguousarray(
            soxr.resample(x.cpu().numpy(), int(sample_rate), SAMPLE_RATE, quality="HQ"), dtype=np.float32))
        if x.numel() == 0:
            raise ValueError(f"audio is too short to resample from {sample_rate} Hz: no samples left")
    return x.to(device) if device is not None else x


def frame_step_indices(num_steps: int, start: int, stop: int, steps_per_frame: int,
                       offsets: tuple[int, ...] | list[int], device=None) -> torch.Tensor:
    """(stop - start, len(offsets)) feature-step indices ``steps_per_frame * i + offset`` for video
    frames ``i`` in ``[start, stop)``, clamped to ``[0, num_steps - 1]``."""
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if start < 0 or stop < start:
        raise ValueError(f"frame range must satisfy 0 <= start <= stop, got start={start}, stop={stop}")
    if num_steps < 1:
        raise ValueError("features hold no steps")
    frames = torch.arange(int(start), int(stop), device=device)
    idx = frames[:, None] * steps_per_frame + torch.as_tensor(list(offsets), device=device)[None, :]
    return idx.clamp_(0, num_steps - 1)


class AudioEncoder(nn.Module, abc.ABC):
    """Common interface of the audio encoders (see the module docstring).

    Subclasses set ``tokens_per_frame``, ``token_dim``, ``steps_per_frame`` (feature steps per
    video frame), ``step_offsets`` (the steps gathered around ``steps_per_frame * i``) and
    ``feature_ndim`` (dims of one file's features, time first; a leading batch dim is accepted).
    """

    sample_rate: int = SAMPLE_RATE
    fps: int = 25
    tokens_per_frame: int
    token_dim: int
    steps_per_frame: int
    step_offsets: tuple[int, ...]
    feature_ndim: int

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def prepare_samples(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        return prepare_samples(samples, sample_rate, self.device)

    @abc.abstractmethod
    def features(self, samples: np.ndarray | torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """File-level features at the encoder's native step rate (time first)."""

    @abc.abstractmethod
    def num_frames(self, features: torch.Tensor) -> int:
        """Video frames (at ``fps``) the audio covers."""

    def num_steps(self, features: torch.Tensor) -> int:
        return int(features.shape[self._time_axis(features)])

    def _time_axis(self, features: torch.Tensor) -> int:
        if features.ndim not in (self.feature_ndim, self.feature_ndim + 1):
            raise ValueError(f"{type(self).__name__} features must have {self.feature_ndim} dims "
                             f"(or a leading batch dim), got shape {tuple(features.shape)}")
        return features.ndim - self.feature_ndim

    def frame_indices(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The feature steps each frame in ``[start, stop)`` reads: (stop - start, window)."""
        return frame_step_indices(self.num_steps(features), start, stop, self.steps_per_frame,
                                  self.step_offsets, features.device)

    def _gather(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        axis = self._time_axis(features)
        idx = self.frame_indices(features, start, stop)
        picked = features.index_select(axis, idx.reshape(-1))
        return picked.reshape(*features.shape[:axis], *idx.shape, *features.shape[axis + 1:])

    @abc.abstractmethod
    def frame_tokens(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(stop - start, tokens_per_frame, token_dim) for video frames ``start .. stop - 1``
        (with a leading batch dim if ``features`` has one). Only that slice is materialised."""


# ------------------------------------------------------------------------------------- Whisper


class WhisperAudioEncoder(AudioEncoder):
    """LatentSync's audio features: Whisper hidden states at 50 Hz, 10 steps x 5 layers per frame.

    ``windowing="overlap"`` (default) encodes long files with overlapping, cross-faded 30 s
    windows (``context_s`` of real audio kept on both sides of every step, ``blend_s`` of
    cross-fade); ``"latentsync"`` reproduces LatentSync's consecutive windows exactly. Files up to
    30 s are one window either way, padded like LatentSync (``pad_mode``, see
    :meth:`WhisperEncoder.encode_long`). The Whisper weights are frozen.
    """

    steps_per_frame = 2  # 50 Hz steps per 25 fps frame
    step_offsets = tuple(range(-4, 6))  # steps 2i-4 .. 2i+5, as LatentSync's audio_feat_length [2, 2]
    feature_ndim = 3

    def __init__(self, encoder: WhisperEncoder, *, windowing: Literal["overlap", "latentsync"] = "overlap",
                 context_s: float = 5.0, blend_s: float = 1.0, pad_mode: Literal["zeros", "silence"] = "zeros",
                 batch_windows: int = 4):
        super().__init__()
        if windowing not in ("overlap", "latentsync"):
            raise ValueError(f"windowing must be 'overlap' or 'latentsync', got {windowing!r}")
        if pad_mode not in ("zeros", "silence"):
            raise ValueError(f"pad_mode must be 'zeros' or 'silence', got {pad_mode!r}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.windowing = windowing
        self.pad_mode = pad_mode
        self.steps_per_second = SAMPLE_RATE // HOP_LENGTH // 2
        self.context_steps = int(round(context_s * self.steps_per_second))
        self.blend_steps = int(round(blend_s * self.steps_per_second))
        self.batch_windows = int(batch_windows)
        self.tokens_per_frame = len(self.step_offsets) * encoder.num_hidden_states
        self.token_dim = encoder.dims.n_audio_state

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "WhisperAudioEncoder":
        """From OpenAI's ``tiny.pt`` (LatentSync's ``checkpoints/whisper/tiny.pt``) or a
        transformers ``whisper-tiny`` folder. Missing / corrupt / mismatching -> CheckpointError."""
        return cls(load_whisper_encoder(path), **kwargs)

    def train(self, mode: bool = True):  # frozen: always in eval mode
        super().train(mode)
        self.encoder.eval()
        return self

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``config.json`` (dims + windowing) + ``model.safetensors`` (OpenAI key names), for our
        model folders; LatentSync's own ``tiny.pt`` is read by :meth:`from_file`."""
        from lipsync.models.weights import save_config_and_weights

        cfg = {"model_type": "lipsync_whisper_audio_encoder", "dims": asdict(self.encoder.dims),
               "windowing": self.windowing, "pad_mode": self.pad_mode,
               "context_s": self.context_steps / self.steps_per_second,
               "blend_s": self.blend_steps / self.steps_per_second}
        save_config_and_weights(folder, cfg, {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "WhisperAudioEncoder":
        folder = Path(folder)
        config_path = folder / "config.json"
        cfg = read_config(folder, "Whisper audio encoder")
        if cfg.get("model_type") != "lipsync_whisper_audio_encoder":
            raise CheckpointError(str(config_path), "not a Whisper audio encoder config")
        weights = folder / "model.safetensors"
        state = {k.removeprefix("encoder."): v for k, v in read_state_dict(weights).items()}
        encoder = WhisperEncoder(WhisperDims(**cfg["dims"]))
        load_strict(encoder, state, weights, what="Whisper encoder")
        return cls(encoder, windowing=cfg.get("windowing", "overlap"), pad_mode=cfg.get("pad_mode", "zeros"),
                   context_s=float(cfg.get("context_s", 5.0)), blend_s=float(cfg.get("blend_s", 1.0)))

    def mel(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        """Whisper log-mel of the whole file (n_mels, n // 160), normalised against its max."""
        return log_mel_spectrogram(self.prepare_samples(samples, sample_rate), self.encoder.dims.n_mels)

    @torch.no_grad()
    def features(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        """(L, n_layer + 1, d) float32 hidden states at 50 Hz, L = (n // 160) // 2."""
        return self.encode_mel(self.mel(samples, sample_rate))

    @torch.no_grad()
    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_long(mel, windowing=self.windowing, context_steps=self.context_steps,
                                        blend_steps=self.blend_steps, pad_mode=self.pad_mode,
                                        batch_windows=self.batch_windows).float()

    def forward(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        return self.features(samples, sample_rate)

    def num_frames(self, features: torch.Tensor) -> int:
        """LatentSync's count: floor(L / 2) + 2 frames for L Whisper steps."""
        return self.num_steps(features) // 2 + 2

    def frame_tokens(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        picked = self._gather(features, start, stop)  # (..., n, 10, layers, d)
        return picked.flatten(-3, -2)  # steps-major, then layers: token 5k + j


# ---------------------------------------------------------------------------------- mel / MFCC


@dataclass
class MelAudioEncoderConfig:
    """Configuration of :class:`MelAudioEncoder` (stored as ``config.json``)."""

    n_mels: int = 80
    n_mfcc: int = 13
    delta_orders: int = 2  # MFCC deltas: 0, 1 (delta) or 2 (delta + delta-delta)
    hidden_dim: int = 128
    token_dim: int = 128
    dilations: tuple[int, ...] = (1, 2, 4)  # residual conv blocks at 25 Hz
    context_before: int = 4  # tokens of frame i: steps i - context_before .. i + context_after
    context_after: int = 5
    # level normalisation: log10 mel power referenced to a robust file peak, 80 dB kept
    level_quantile: float = 0.99
    level_floor_log10: float = -4.0
    dynamic_range_log10: float = 8.0
    model_type: str = field(default="lipsync_mel_audio_encoder")

    @property
    def in_channels(self) -> int:
        return self.n_mels + self.n_mfcc * (1 + self.delta_orders)

    @property
    def tokens_per_frame(self) -> int:
        return self.context_before + 1 + self.context_after

    def validate(self) -> None:
        if self.model_type != "lipsync_mel_audio_encoder":
            raise ValueError(f"model_type {self.model_type!r} is not 'lipsync_mel_audio_encoder'")
        for name in ("n_mels", "hidden_dim", "token_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.n_mfcc <= self.n_mels or self.delta_orders not in (0, 1, 2):
            raise ValueError("need 0 <= n_mfcc <= n_mels and delta_orders in 0, 1, 2")
        if self.context_before < 0 or self.context_after < 0 or not all(int(d) >= 1 for d in self.dilations):
            raise ValueError("context_before/after must be >= 0 and dilations >= 1")
        if not 0.0 < self.level_quantile <= 1.0 or self.dynamic_range_log10 <= 0:
            raise ValueError("need 0 < level_quantile <= 1 and dynamic_range_log10 > 0")


def _dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Orthonormal DCT-II rows (scipy ``dct(type=2, norm='ortho')``, as librosa's MFCC uses)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


def _delta(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over the last axis (HTK formula, edges replicated; any length >= 1)."""
    padded = F.pad(x[None], (width, width), mode="replicate")[0] if x.shape[-1] > 0 else x
    t = x.shape[-1]
    num = sum(n * (padded[..., width + n: width + n + t] - padded[..., width - n: width - n + t])
              for n in range(1, width + 1))
    return num / (2 * sum(n * n for n in range(1, width + 1)))


class _ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel_size: int = 3):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(x.transpose(1, 2)).transpose(1, 2)  # per-step channel norm: no cross-time stats
        return x + self.proj(F.gelu(self.conv(y)))


class MelAudioEncoder(AudioEncoder):
    """The ``tiny`` profile's audio encoder: log-mel + MFCC (+ deltas) at 100 Hz -> a small 1-D
    conv net -> one ``token_dim`` vector per 40 ms step (25 Hz, aligned with the video frames) ->
    for frame ``i`` the steps ``i - 4 .. i + 5`` (0.4 s) plus a learned per-slot embedding.

    Input normalisation (:meth:`input_features`): log10 mel power referenced to a robust level of
    the file (the 99th percentile of the per-frame peak, but never below an absolute floor so
    silence stays silence), 80 dB kept, mapped to [-1, 1]; MFCCs are the DCT of that. This is
    gain-invariant like Whisper's max normalisation, depends on one scalar per file (not on the
    proportion of silence, as per-file mean/std would), is stable on 5 s training clips and 10 min
    inference files alike, and is the same in training and inference. Inside the net every
    normalisation is per step (LayerNorm over channels), so a step depends only on its receptive
    field: +-40 ms from the strided front end, +-280 ms from the dilated blocks (1, 2, 4), i.e.
    +-0.32 s per step and -0.48 .. +0.52 s per frame with the token window -4 .. +5.
    """

    steps_per_frame = 1
    feature_ndim = 2

    def __init__(self, config: MelAudioEncoderConfig | None = None):
        super().__init__()
        config = config or MelAudioEncoderConfig()
        config.dilations = tuple(int(d) for d in config.dilations)
        config.validate()
        self.config = config
        self.step_offsets = tuple(range(-config.context_before, config.context_after + 1))
        self.tokens_per_frame = config.tokens_per_frame
        self.token_dim = config.token_dim
        h = config.hidden_dim
        self.register_buffer("dct", _dct_matrix(config.n_mfcc, config.n_mels), persistent=False)
        # 100 Hz -> 50 Hz -> 25 Hz; step j is centred on mel frame 4j = the start of video frame j
        self.conv_in = nn.Conv1d(config.in_channels, h, 3, padding=1)
        self.down1 = nn.Conv1d(h, h, 3, stride=2, padding=1)
        self.down2 = nn.Conv1d(h, h, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([_ResBlock(h, d) for d in config.dilations])
        self.norm_out = nn.LayerNorm(h)
        self.proj_out = nn.Linear(h, config.token_dim)
        self.slot_embedding = nn.Parameter(torch.randn(config.tokens_per_frame, config.token_dim) * 0.02)

    # ---- numeric front end (no parameters)

    @torch.no_grad()
    def input_features(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        """(in_channels, M) float32 at 100 Hz, M = n // 160 (at least 2): normalised log-mel,
        then MFCC, delta, delta-delta (scaled to comparable ranges)."""
        cfg = self.config
        logp = log_mel_power(self.prepare_samples(samples, sample_rate), cfg.n_mels)  # (n_mels, M)
        peaks = logp.max(dim=0).values
        ref = max(float(torch.quantile(peaks, cfg.level_quantile)), cfg.level_floor_log10)
        half = cfg.dynamic_range_log10 / 2.0
        mel = (torch.clamp(logp, min=ref - cfg.dynamic_range_log10) - ref) / half + 1.0  # [-1, 1]
        parts = [mel]
        if cfg.n_mfcc:
            mfcc = (self.dct.to(mel.device) @ mel) * math.sqrt(2.0 / cfg.n_mels)  # c0 = sqrt(2) * mean
            parts.append(mfcc)
            d = mfcc
            for order in range(1, cfg.delta_orders + 1):
                d = _delta(d)
                parts.append(4.0 ** order * d)  # speech: std ~0.2-0.3 for both orders
        return torch.cat(parts, dim=0)

    # ---- learned part

    def encode(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, M) or (in_channels, M) -> (B, T, token_dim) / (T, token_dim) at 25 Hz,
        T = ceil(ceil(M / 2) / 2). Differentiable."""
        single = input_features.ndim == 2
        x = input_features[None] if single else input_features
        if x.ndim != 3 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"input features must be shaped (batch, {self.config.in_channels}, frames), "
                             f"got {tuple(input_features.shape)}")
        x = x.to(self.conv_in.weight.dtype)
        x = F.gelu(self.conv_in(x))
        x = F.gelu(self.down1(x))
        x = F.gelu(self.down2(x))
        for block in self.blocks:
            x = block(x)
        x = self.proj_out(self.norm_out(x.transpose(1, 2)))
        return x[0] if single else x

    def forward(self, input_features: torch.Tensor, start: int | None = None, stop: int | None = None):
        """Step features, or the frame tokens of ``[start, stop)`` when given (one call, so
        DistributedDataParallel sees every parameter used inside ``forward``)."""
        feats = self.encode(input_features)
        if start is None and stop is None:
            return feats
        if start is None or stop is None:
            raise ValueError("give both start and stop, or neither")
        return self.frame_tokens(feats, start, stop)

    def features(self, samples, sample_rate: int | None = None) -> torch.Tensor:
        """(T, token_dim) at 25 Hz. Keeps the autograd graph when grad is enabled (training);
        wrap in ``torch.no_grad()`` for inference."""
        return self.encode(self.input_features(samples, sample_rate))

    def num_frames(self, features: torch.Tensor) -> int:
        """One step per video frame: T = ceil(M / 4) ~= ceil(n / 640)."""
        return self.num_steps(features)

    def frame_tokens(self, features: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return self._gather(features, start, stop) + self.slot_embedding.to(features.dtype)

    # ---- files

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` in ``folder`` (written atomically)."""
        from lipsync.models.weights import save_config_and_weights

        cfg = asdict(self.config)
        cfg["dilations"] = list(cfg["dilations"])
        save_config_and_weights(folder, cfg, self.state_dict())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> "MelAudioEncoder":
        folder = Path(folder)
        config_path = folder / "config.json"
        raw = read_config(folder, "mel audio encoder")
        known = {f.name for f in fields(MelAudioEncoderConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(str(config_path), f"not a mel audio encoder config (unknown keys {unknown})")
        try:
            model = cls(MelAudioEncoderConfig(**raw))
        except (TypeError, ValueError) as err:
            raise CheckpointError(str(config_path), f"invalid config: {err}") from err
        weights = folder / "model.safetensors"
        load_strict(model, read_state_dict(weights), weights, what="mel audio encoder")
        return model.to(map_location)


__all__ = ["AudioEncoder", "MelAudioEncoder", "MelAudioEncoderConfig", "WhisperAudioEncoder",
           "frame_step_indices", "prepare_samples"]
