"""Whisper audio features for LatentSync: OpenAI's log-mel and our own copy of the Whisper encoder.

Nothing here imports OpenAI's ``whisper`` package or ``transformers``; the code is small enough to
read in one sitting and is tested for exact parity with ``transformers``' ``WhisperEncoder``.

* :func:`log_mel_spectrogram` computes the log-mel exactly as OpenAI Whisper does (n_fft 400,
  hop 160, periodic Hann window, centre reflect padding, ``|STFT|^2`` without the last frame, slaney
  mel filters, ``log10(max(x, 1e-10))``, ``max(x, max - 8)``, ``(x + 4) / 4``) **normalised against
  the whole file's maximum**, as LatentSync computes it once per file (not per 30 s window).
* :class:`WhisperEncoder` is Whisper's audio encoder with OpenAI's parameter names (``conv1``,
  ``conv2``, ``positional_embedding``, ``blocks.N.{attn_ln, attn.{query,key,value,out}, mlp_ln,
  mlp.0, mlp.2}``, ``ln_post``). Its :meth:`WhisperEncoder.forward` returns every hidden state
  before ``ln_post``: the input embedding and each block's output, which LatentSync uses.
* :meth:`WhisperEncoder.encode_long` runs a whole file through 30 s windows: either exactly like
  LatentSync (consecutive windows, the last one padded) or with overlapping windows cross-faded in
  their centres so the features have no seam every 30 s.
* :func:`load_whisper_encoder` reads OpenAI's ``tiny.pt`` (``dims`` + ``model_state_dict``) or a
  transformers-style folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.errors import CheckpointError
from lipsync.media.formats import SAMPLE_RATE
from lipsync.models.weights import read_state_dict, rename_keys, load_strict

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
WINDOW_SECONDS = 30
#: mel frames (100 Hz) in one Whisper window; the encoder turns them into half as many steps (50 Hz)
WINDOW_MEL_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP_LENGTH  # 3000
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum (80 dB)
#: every released Whisper model has 64-dimensional heads; used only when a file carries no ``dims``
HEAD_DIM = 64


# --------------------------------------------------------------------------------------------- mel


@functools.lru_cache(maxsize=8)
def _mel_filters_np(n_mels: int) -> np.ndarray:
    # OpenAI's assets/mel_filters.npz was saved as librosa.filters.mel(sr=16000, n_fft=400, n_mels=n)
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


_FILTERS: dict[tuple[int, str], torch.Tensor] = {}


def mel_filters(n_mels: int = N_MELS, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (n_mels, 201) slaney mel filter bank Whisper uses, on ``device`` (cached)."""
    key = (n_mels, str(torch.device(device)))
    if key not in _FILTERS:
        _FILTERS[key] = torch.from_numpy(_mel_filters_np(n_mels)).to(device)
    return _FILTERS[key]


def _as_audio_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(audio):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D array of 16 kHz mono samples, got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise ValueError("audio is empty (0 samples): there is nothing to compute features from")
    return audio.float()


def log_mel_power(audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """``log10(max(mel power, 1e-10))`` shaped (n_mels, n // 160), computed on ``audio``'s device.

    Whisper's front end before any normalisation. Audio shorter than one STFT window (400 samples)
    is zero-padded to 400 samples so that it still yields 2 mel frames (one encoder step).
    """
    audio = _as_audio_tensor(audio)
    if audio.numel() < N_FFT:
        audio = F.pad(audio, (0, N_FFT - audio.numel()))
    window = torch.hann_window(N_FFT, device=audio.device)  # periodic, like Whisper
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels, audio.device) @ magnitudes
    return torch.clamp(mel, min=LOG_FLOOR).log10()


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """Whisper's normalised log-mel of a whole file, (n_mels, n // 160), on ``audio``'s device.

    ``max(log_mel, file_max - 8)`` then ``(x + 4) / 4``, with the maximum taken over the whole
    file (LatentSync's convention) rather than per 30 s window.
    """
    log_spec = log_mel_power(audio, n_mels)
    log_spec = torch.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


# ------------------------------------------------------------------------------------------- model


@dataclass
class WhisperDims:
    """The audio half of OpenAI's ``ModelDimensions`` (``n_audio_mlp`` is ours: None = 4 x state)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_audio_mlp: int | None = None

    def __post_init__(self):
        if self.n_audio_mlp is not None and self.n_audio_mlp == 4 * self.n_audio_state:
            self.n_audio_mlp = None  # Whisper's own width: keep dims comparable with OpenAI's

    @property
    def mlp_dim(self) -> int:
        return self.n_audio_mlp or 4 * self.n_audio_state

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"Whisper dims: {f.name} must be a positive integer, got {value!r}")
        if self.n_audio_state % self.n_audio_head or (self.n_audio_state // 2) < 2:
            raise ValueError(f"Whisper dims: n_audio_state {self.n_audio_state} must be divisible by "
                             f"n_audio_head {self.n_audio_head} and at least 4")


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    """Whisper's sinusoidal position table (length, channels), computed exactly as OpenAI does."""
    assert channels % 2 == 0
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (proj(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        # softmax(q k^T / sqrt(d_head)) v; OpenAI scales q and k by d_head^-0.25 each (same value)
        wv = F.scaled_dot_product_attention(q, k, v)
        return self.out(wv.transpose(1, 2).reshape(b, t, c))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder; the state dict has OpenAI's names without the ``encoder.`` prefix."""

    def __init__(self, dims: WhisperDims):
        super().__init__()
        dims.validate()
        self.dims = dims
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(d, dims.n_audio_head, dims.mlp_dim) for _ in range(dims.n_audio_layer)])
        self.ln_post = nn.LayerNorm(d)

    @property
    def window_mel_frames(self) -> int:
        """Mel frames the encoder takes at once (3000 = 30 s for every released model)."""
        return 2 * self.dims.n_audio_ctx

    @property
    def num_hidden_states(self) -> int:
        return self.dims.n_audio_layer + 1

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, 2 * n_audio_ctx) -> (batch, n_audio_ctx, n_audio_layer + 1, n_audio_state).

        Hidden state 0 is the input embedding (convs + positions), hidden state j the output of
        block j, all before ``ln_post`` (apply :attr:`ln_post` to the last one for Whisper's output).
        """
        if mel.ndim != 3 or mel.shape[1] != self.dims.n_mels or mel.shape[2] != self.window_mel_frames:
            raise ValueError(f"Whisper encoder expects mel shaped (batch, {self.dims.n_mels}, "
                             f"{self.window_mel_frames}), got {tuple(mel.shape)}")
        x = mel.to(self.conv1.weight.dtype)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = x.permute(0, 2, 1) + self.positional_embedding.to(x.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return torch.stack(states, dim=2)

    @torch.no_grad()
    def encode_long(self, mel: torch.Tensor, *, windowing: Literal["overlap", "latentsync"] = "overlap",
                    context_steps: int = 250, blend_steps: int = 50,
                    pad_mode: Literal["zeros", "silence"] = "zeros", batch_windows: int = 4) -> torch.Tensor:
        """Hidden states of a whole file's mel (n_mels, M) -> (M // 2, n_audio_layer + 1, state).

        Every window holds ``2 * n_audio_ctx`` mel frames (30 s). A file no longer than one window
        is one window padded at the end exactly like LatentSync (``pad_mode="zeros"``: the mel is
        padded with 0.0, as its ``pad_or_trim`` of the mel does; ``"silence"``: with the file's
        floor value, i.e. the log-mel of digital silence, as current OpenAI Whisper does).

        Longer files:

        * ``windowing="latentsync"``: consecutive windows (0-30 s, 30-60 s, ...), each encoded on
          its own, the last one padded. The features jump at every window boundary.
        * ``windowing="overlap"`` (default): windows overlap so that every step is taken from a
          window where it has at least ``context_steps`` (5 s) of real audio on both sides (or the
          file's own start / end); neighbouring windows are cross-faded linearly over
          ``blend_steps`` (1 s) in the middle of their overlap, so the features are continuous.
          The last window is aligned with the end of the file, so no padding is ever encoded.
        """
        if mel.ndim != 2 or mel.shape[0] != self.dims.n_mels:
            raise ValueError(f"mel must be shaped ({self.dims.n_mels}, frames), got {tuple(mel.shape)}")
        if windowing not in ("overlap", "latentsync"):
            raise ValueError(f"windowing must be 'overlap' or 'latentsync', got {windowing!r}")
        if pad_mode not in ("zeros", "silence"):
            raise ValueError(f"pad_mode must be 'zeros' or 'silence', got {pad_mode!r}")
        device = self.positional_embedding.device
        mel = mel.to(device=device, dtype=torch.float32)
        steps = mel.shape[1] // 2
        if steps == 0:
            raise ValueError(f"mel has {mel.shape[1]} frame(s); the encoder needs at least 2")
        win = self.dims.n_audio_ctx
        # "silence": what digital zeros become after the file's normalisation (its floor value)
        silence = max(float(mel.max()) - DYNAMIC_RANGE / 4.0, (math.log10(LOG_FLOOR) + 4.0) / 4.0)
        pad_value = 0.0 if pad_mode == "zeros" else silence
        out = torch.zeros(steps, self.num_hidden_states, self.dims.n_audio_state, device=device,
                          dtype=self.conv1.weight.dtype)

        if windowing == "latentsync" or steps <= win:
            starts = list(range(0, steps, win))
            weights = [None] * len(starts)
        else:
            if context_steps < 0 or blend_steps < 0 or 2 * context_steps + 3 * max(blend_steps, 1) > win:
                raise ValueError(f"need 2 * context_steps + 3 * blend_steps <= the window ({win} steps), "
                                 f"got context {context_steps}, blend {blend_steps}")
            hop = win - 2 * context_steps - max(blend_steps, 1)
            starts = list(range(0, steps - win, hop)) + [steps - win]
            weights = _crossfade_weights(starts, win, blend_steps, device)

        for first in range(0, len(starts), max(1, batch_windows)):
            group = starts[first:first + max(1, batch_windows)]
            batch = torch.full((len(group), mel.shape[0], 2 * win), pad_value, device=device)
            for row, start in enumerate(group):
                piece = mel[:, 2 * start: 2 * (start + win)]
                batch[row, :, :piece.shape[1]] = piece
            states = self(batch)
            for row, start in enumerate(group):
                keep = min(win, steps - start)
                w = weights[first + row]
                if w is None:
                    out[start:start + keep] = states[row, :keep]
                else:
                    out[start:start + keep] += w[:keep, None, None] * states[row, :keep]
        return out


def _crossfade_weights(starts: list[int], win: int, blend: int, device) -> list[torch.Tensor]:
    """Per-window weights (win,) that sum to 1 at every step: 1 in a window's own zone, linear
    ramps of ``blend`` steps centred in the middle of the overlap with each neighbour."""
    pos = torch.arange(win, device=device, dtype=torch.float32)
    out = []
    for k, start in enumerate(starts):
        w = torch.ones(win, device=device)
        t = pos + start
        for other, rising in ((k - 1, True), (k + 1, False)):
            if 0 <= other < len(starts):
                a, b = sorted((start, starts[other]))
                middle = (b + a + win) / 2.0  # centre of the overlap [b, a + win)
                ramp = ((t - middle) / max(blend, 1) + 0.5).clamp(0.0, 1.0)  # 0 -> 1 across the seam
                w = w * (ramp if rising else 1.0 - ramp)
        out.append(w)
    return out


# --------------------------------------------------------------------------------------- loading


_HF_RENAMES = [
    ("layers.", "blocks."),
    (".self_attn.q_proj.", ".attn.query."),
    (".self_attn.k_proj.", ".attn.key."),
    (".self_attn.v_proj.", ".attn.value."),
    (".self_attn.out_proj.", ".attn.out."),
    (".self_attn_layer_norm.", ".attn_ln."),
    (".final_layer_norm.", ".mlp_ln."),
    (".fc1.", ".mlp.0."),
    (".fc2.", ".mlp.2."),
    ("embed_positions.weight", "positional_embedding"),
    ("layer_norm.", "ln_post."),  # only the encoder's final norm is left with this name
]
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _encoder_part(state: dict, path, prefixes: tuple[str, ...]) -> dict:
    """The encoder's tensors with their prefix removed (decoder and other keys are ignored)."""
    for prefix in prefixes:
        if f"{prefix}conv1.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    shown = ", ".join(list(state)[:8]) or "(none)"
    raise CheckpointError(str(path), "no Whisper encoder weights found (looked for "
                                     f"{' or '.join(p + 'conv1.weight' for p in prefixes if p) or 'conv1.weight'}"
                                     f"); the file has keys: {shown}")


def _openai_dims(path: Path, state: dict) -> WhisperDims:
    """``dims`` of an OpenAI checkpoint. ``read_state_dict`` returns only the tensors, so the small
    ``dims`` dict is read with the same safe ``torch.load(weights_only=True)``, memory-mapped so
    the tensors are not read a second time. A bare state dict without ``dims`` gets them from the
    tensor shapes (heads: 64 dimensions each, as in every released Whisper model)."""
    raw = None
    if path.suffix.lower() != ".safetensors":
        try:
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except (RuntimeError, ValueError):  # legacy (non-zip) serialisation cannot be memory-mapped
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            raw = obj.get("dims") if isinstance(obj, dict) else None
        except Exception as err:  # read_state_dict has already accepted this file
            raise CheckpointError(str(path), f"cannot read the 'dims' entry ({type(err).__name__}: {err})") from err
    d = state["conv1.weight"].shape[0]
    if raw is None:
        return WhisperDims(n_mels=state["conv1.weight"].shape[1], n_audio_ctx=state["positional_embedding"].shape[0]
                           if "positional_embedding" in state else 1500, n_audio_state=d,
                           n_audio_head=max(1, d // HEAD_DIM),
                           n_audio_layer=len({k.split(".")[1] for k in state if k.startswith("blocks.")}))
    if not isinstance(raw, dict):
        raise CheckpointError(str(path), f"'dims' must be a dict, got {type(raw).__name__}")
    mlp = state.get("blocks.0.mlp.0.weight")
    try:
        dims = WhisperDims(**{f.name: int(raw[f.name]) for f in fields(WhisperDims) if f.name != "n_audio_mlp"},
                           n_audio_mlp=None if mlp is None else int(mlp.shape[0]))
        dims.validate()
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(str(path), f"invalid 'dims' {raw}: {err}") from err
    return dims


def load_openai_checkpoint(path: str | os.PathLike) -> WhisperEncoder:
    """Whisper encoder from OpenAI's format (``tiny.pt``: ``dims`` + ``model_state_dict`` with
    ``encoder.*`` and ``decoder.*`` keys; the decoder is ignored). fp16 weights become float32."""
    path = Path(path)
    state = _encoder_part(read_state_dict(path), path, ("encoder.", ""))
    dims = _openai_dims(path, state)
    encoder = WhisperEncoder(dims)
    load_strict(encoder, state, path, what=f"Whisper encoder {asdict(dims)}")
    return encoder.eval()


def _hf_dims(config_path: Path) -> WhisperDims:
    if not config_path.is_file():
        raise CheckpointError(str(config_path), "file not found (a transformers Whisper folder needs config.json)")
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(str(config_path), f"unreadable JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise CheckpointError(str(config_path), "not a JSON object")
    if cfg.get("model_type", "whisper") != "whisper":
        raise CheckpointError(str(config_path), f"model_type is {cfg.get('model_type')!r}, expected 'whisper'")
    act = cfg.get("activation_function", "gelu")
    if act != "gelu":
        raise CheckpointError(str(config_path), f"activation_function {act!r} is not supported (only 'gelu')")
    if cfg.get("scale_embedding"):
        raise CheckpointError(str(config_path), "scale_embedding=true is not supported by Whisper's encoder")
    names = {"n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions", "n_audio_state": "d_model",
             "n_audio_head": "encoder_attention_heads", "n_audio_layer": "encoder_layers",
             "n_audio_mlp": "encoder_ffn_dim"}
    missing = [v for k, v in names.items() if v not in cfg and k != "n_audio_mlp"]
    if missing:
        raise CheckpointError(str(config_path), f"missing Whisper settings: {missing}")
    try:
        dims = WhisperDims(**{k: (int(cfg[v]) if cfg.get(v) is not None else None) for k, v in names.items()})
        dims.validate()
    except (TypeError, ValueError) as err:
        raise CheckpointError(str(config_path), f"invalid Whisper settings: {err}") from err
    return dims


def _hf_state(folder: Path) -> tuple[dict, Path]:
    for name in _HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name), folder / name
    for name in _HF_INDEX_FILES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(str(index), f"invalid shard index ({err})") from err
            state = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state, index
    raise CheckpointError(str(folder / _HF_WEIGHT_FILES[0]),
                          f"file not found (also looked for {', '.join(_HF_WEIGHT_FILES[1:] + _HF_INDEX_FILES)} "
                          f"in {folder})")


def load_hf_folder(folder: str | os.PathLike) -> WhisperEncoder:
    """Whisper encoder from a transformers folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``, possibly sharded). Keys ``model.encoder.*`` (WhisperForConditionalGeneration),
    ``encoder.*`` (WhisperModel) or bare (WhisperEncoder) are mapped to OpenAI's names."""
    folder = Path(folder)
    dims = _hf_dims(folder / "config.json")
    raw, weight_path = _hf_state(folder)
    state = _encoder_part(raw, weight_path, ("model.encoder.", "encoder.", ""))
    encoder = WhisperEncoder(dims)
    load_strict(encoder, state, weight_path, what=f"Whisper encoder {asdict(dims)}",
                transform=lambda s: rename_keys(s, _HF_RENAMES))
    return encoder.eval()


def load_whisper_encoder(path: str | os.PathLike) -> WhisperEncoder:
    """OpenAI file (``tiny.pt``) or transformers folder, whichever ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return load_hf_folder(path)
    if path.name in _HF_WEIGHT_FILES and (path.parent / "config.json").is_file():
        return load_hf_folder(path.parent)
    if not path.exists():
        raise CheckpointError(str(path), "file not found (expected OpenAI's whisper tiny.pt or a transformers "
                                         "whisper folder with config.json and model.safetensors)")
    return load_openai_checkpoint(path)


__all__ = [
    "HOP_LENGTH", "N_FFT", "N_MELS", "SAMPLE_RATE", "WINDOW_MEL_FRAMES", "WhisperDims", "WhisperEncoder",
    "load_hf_folder", "load_openai_checkpoint", "load_whisper_encoder", "log_mel_power",
    "log_mel_spectrogram", "mel_filters", "sinusoids",
]
