"""The LatentSync-compatible 3-D UNet (AnimateDiff lineage) and its configuration.

``UNet3DConditionModel`` maps a noisy 13-channel latent video window ``(b, 13, f, h, w)``, a timestep
and per-frame audio tokens ``(b, f, n_tokens, dim)`` to the predicted noise ``(b, 4, f, h, w)``.

* Every convolution is per frame; the non-temporal parameters carry exactly the names and shapes of
  diffusers' ``UNet2DConditionModel`` with SD-1.5 block types (see :mod:`lipsync.models.blocks`).
* The GroupNorms inside resnets and ``conv_norm_out`` take statistics over the whole window of a
  sample; spatial transformers and motion modules normalise per frame.
* Each frame cross-attends (``attn2``) to its own audio tokens.
* Motion modules (:mod:`lipsync.models.motion`) follow every resnet/attention pair of every down and
  up block (20 in the LatentSync layout), none in the mid block.

Checkpoints: LatentSync ``.pt`` files (a dict with ``state_dict``; version-1.0 ``audio_cross_attn``
names are renamed), and our own ``save_pretrained`` folders (``config.json`` +
``diffusion_pytorch_model.safetensors``). Loading is strict unless asked otherwise.

DeepCache (optional, off by default): see :meth:`UNet3DConditionModel.forward` and
:func:`deep_cache_schedule`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from lipsync.errors import CheckpointError
from lipsync.models.blocks import (DOWN_TYPES, UP_TYPES, BlockSpec, DownBlock3D, MidBlock3D, UpBlock3D,
                                   set_gradient_checkpointing, window_group_norm)
from lipsync.models.weights import describe_mismatch, load_strict, read_state_dict, rename_keys

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# LatentSync 1.0 called the audio cross-attention of each spatial transformer block differently.
V10_RENAMES = [(".audio_cross_attn.norm.", ".norm2."), (".audio_cross_attn.attn.", ".attn2.")]
# Stage-2 training (LatentSync configs/unet/stage2.yaml ``trainable_modules``): the temporal modules and the
# spatial transformers train, the rest is frozen. stage2_efficient.yaml trains the temporal modules and
# the audio cross-attentions (attn2) only.
STAGE2_TRAINABLE = ("motion_modules.", "attentions.")
STAGE2_EFFICIENT_TRAINABLE = ("motion_modules.", "attn2.")
LATENTSYNC_MOTION_NORM_GROUPS = 32


@dataclass
class UNetConfig:
    """Architecture of :class:`UNet3DConditionModel`. Defaults are LatentSync 1.5/1.6."""

    in_channels: int = 13
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                         "DownBlock3D")
    up_block_types: tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    layers_per_block: int = 2
    cross_attention_dim: int = 384
    attention_head_dim: int = 8  # diffusers' naming for SD-1.5: the NUMBER of spatial attention heads
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    use_motion_module: bool = True
    motion_module_max_len: int = 24  # longest window (frames) the position table covers
    motion_num_attention_heads: int = 8
    motion_norm_num_groups: int = 32
    motion_num_transformer_blocks: int = 1
    motion_zero_init: bool = True

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.validate()

    def validate(self) -> None:
        levels = len(self.block_out_channels)
        if not (len(self.down_block_types) == len(self.up_block_types) == levels):
            raise ValueError(f"UNetConfig: {levels} block_out_channels but {len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types")
        for kind in self.down_block_types:
            if kind not in DOWN_TYPES:
                raise ValueError(f"UNetConfig: unknown down block type {kind!r} (use one of {sorted(DOWN_TYPES)})")
        for kind in self.up_block_types:
            if kind not in UP_TYPES:
                raise ValueError(f"UNetConfig: unknown up block type {kind!r} (use one of {sorted(UP_TYPES)})")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"UNetConfig: {c} channels are not divisible by norm_num_groups={self.norm_num_groups}")
            if c % self.attention_head_dim:
                raise ValueError(f"UNetConfig: {c} channels are not divisible by {self.attention_head_dim} heads")
            if self.use_motion_module:
                if c % self.motion_norm_num_groups or c % self.motion_num_attention_heads or c % 2:
                    raise ValueError(f"UNetConfig: {c} channels do not fit the motion modules "
                                     f"({self.motion_norm_num_groups} groups, {self.motion_num_attention_heads} "
                                     "heads, even width)")

    # -- presets ---------------------------------------------------------------------------------
    @classmethod
    def latentsync(cls) -> "UNetConfig":
        """LatentSync 1.5 (256 px) and 1.6 (512 px): the same architecture."""
        return cls()

    def for_latentsync_weights(self) -> "UNetConfig":
        """This config with the motion-module GroupNorms LatentSync's weights were trained with: their
        VanillaTemporalModule never receives norm_num_groups, so it is 32 whatever the UNet's own
        setting. Any other count loads the same tensor shapes and silently computes something else."""
        if self.motion_norm_num_groups == LATENTSYNC_MOTION_NORM_GROUPS:
            return self
        log.warning("motion_norm_num_groups=%s replaced by %s for LatentSync weights", self.motion_norm_num_groups,
                    LATENTSYNC_MOTION_NORM_GROUPS)
        return replace(self, motion_norm_num_groups=LATENTSYNC_MOTION_NORM_GROUPS)

    @classmethod
    def tiny(cls, block_out_channels: Iterable[int] = (32, 64, 128), **overrides) -> "UNetConfig":
        """A small model of the same design for the ``tiny`` profile (CPU-trainable).

        Down/up block types follow the SD pattern for the number of levels unless given;
        any field can be overridden (e.g. ``cross_attention_dim`` to the audio feature width)."""
        block_out_channels = tuple(block_out_channels)
        n = len(block_out_channels)
        values = dict(block_out_channels=block_out_channels,
                      down_block_types=("CrossAttnDownBlock3D",) * (n - 1) + ("DownBlock3D",),
                      up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (n - 1),
                      layers_per_block=1, cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
                      motion_num_attention_heads=4, motion_norm_num_groups=8)
        values.update(overrides)
        return cls(**values)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        """Build from a dict; keys starting with ``_`` are metadata and ignored, unknown keys refused."""
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"UNetConfig: unknown field(s) {unknown}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps({"_class_name": "UNet3DConditionModel", **self.to_dict()}, indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike) -> "UNetConfig":
        """Read a JSON file (a path) or parse JSON text (a string starting with ``{``)."""
        if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{"):
            return cls.from_dict(json.loads(path_or_text))
        return cls.from_dict(json.loads(Path(path_or_text).read_text()))


def deep_cache_schedule(num_steps: int, interval: int) -> list[bool]:
    """DeepCache's uniform schedule: ``reuse_deep`` flag per denoising step. Step 0 and every
    ``interval``-th step after it are full steps (refreshing the cache); the others reuse it.
    ``interval <= 1`` means no reuse at all."""
    return [interval > 1 and i % interval != 0 for i in range(num_steps)]


class UNet3DConditionModel(nn.Module):
    """LatentSync's UNet. ``forward(sample (b,c,f,h,w), timestep, encoder_hidden_states (b,f,T,D))``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.block_out_channels
        time_dim = ch[0] * 4
        motion = None
        if config.use_motion_module:
            motion = dict(heads=config.motion_num_attention_heads, num_blocks=config.motion_num_transformer_blocks,
                          num_attention_blocks=2, norm_num_groups=config.motion_norm_num_groups,
                          max_len=config.motion_module_max_len, zero_init=config.motion_zero_init)
        spec = BlockSpec(temb_channels=time_dim, eps=config.norm_eps, groups=config.norm_num_groups,
                         heads=config.attention_head_dim, cross_attention_dim=config.cross_attention_dim,
                         motion=motion, downsample_padding=config.downsample_padding)

        self.conv_in = nn.Conv2d(config.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(ch[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], time_dim, act_fn="silu")

        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, kind in enumerate(config.down_block_types):
            cin, out = out, ch[i]
            self.down_blocks.append(DownBlock3D(spec, cin, out, config.layers_per_block, DOWN_TYPES[kind],
                                                add_downsample=i < len(ch) - 1))
        self.mid_block = MidBlock3D(spec, ch[-1])
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        out = rev[0]
        for i, kind in enumerate(config.up_block_types):
            prev, out = out, rev[i]
            cin = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(UpBlock3D(spec, cin, prev, out, config.layers_per_block + 1, UP_TYPES[kind],
                                            add_upsample=i < len(ch) - 1))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, ch[0], eps=config.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, kernel_size=3, padding=1)

    # -- properties / training switches ---------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def max_frames(self) -> int | None:
        """Longest window the motion modules accept (None without motion modules)."""
        return self.config.motion_module_max_len if self.config.use_motion_module else None

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block layer (resnet -> attention -> motion module) in the backward pass."""
        set_gradient_checkpointing(self, True)

    def disable_gradient_checkpointing(self) -> None:
        set_gradient_checkpointing(self, False)

    @property
    def gradient_checkpointing(self) -> bool:
        return any(getattr(b, "gradient_checkpointing", False) for b in (*self.down_blocks, self.mid_block))

    def motion_module_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".motion_modules." in n]

    def set_motion_modules_trainable(self, trainable: bool = True) -> None:
        """Switch ``requires_grad`` of the motion modules only (other parameters are left as they are)."""
        for p in self.motion_module_parameters():
            p.requires_grad_(trainable)

    def set_trainable(self, patterns: Iterable[str] | None = None) -> list[str]:
        """Freeze every parameter whose name contains none of ``patterns``; unfreeze the others.

        ``None`` makes everything trainable (stage 1); :data:`STAGE2_TRAINABLE` selects the motion
        modules and the spatial transformers (``attentions.``, i.e. norm/proj_in/transformer_blocks/
        proj_out) as LatentSync's stage 2 does; :data:`STAGE2_EFFICIENT_TRAINABLE` the motion modules
        and the audio cross-attentions. Returns the names of the trainable parameters."""
        if isinstance(patterns, str):
            patterns = (patterns,)
        patterns = None if patterns is None else tuple(patterns)
        names = []
        for name, p in self.named_parameters():
            on = patterns is None or any(s in name for s in patterns)
            p.requires_grad_(on)
            if on:
                names.append(name)
        return names

    # -- forward --------------------------------------------------------------------------------
    def _time_embedding(self, timestep, batch: int, device, dtype) -> torch.Tensor:
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float32 if isinstance(t, float) else torch.int64, device=device)
        elif t.ndim == 0:
            t = t[None].to(device)
        else:
            t = t.to(device)
        if t.ndim != 1 or t.shape[0] not in (1, batch):
            raise ValueError(f"timestep must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        t = t.expand(batch)
        return self.time_embedding(self.time_proj(t).to(dtype=dtype))

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *,
                cache: dict | None = None, reuse_deep: bool = False) -> torch.Tensor:
        """Predict the noise of ``sample``.

        Args:
            sample: ``(b, in_channels, f, h, w)``: noisy latent, mask, masked latent, reference latent.
            timestep: a number, a 0-d tensor or a ``(b,)`` tensor.
            encoder_hidden_states: ``(b, f, n_tokens, cross_attention_dim)``; frame ``i`` of sample ``j``
                cross-attends to ``encoder_hidden_states[j, i]`` only. Classifier-free guidance batches
                the conditional and unconditional inputs along ``b``.
            cache: DeepCache state (a dict the caller keeps between denoising steps), or None (off).
                On a full step (``reuse_deep=False``) the feature that enters the last (shallowest)
                up block, i.e. the output of ``up_blocks[-2]`` after its upsampler, is stored in it.
            reuse_deep: a DeepCache "reuse" step: only ``conv_in``, the layers of ``down_blocks[0]``
                (its downsampler is skipped), ``up_blocks[-1]`` with the cached deep feature plus the
                fresh shallow skips, and the output head run; ``down_blocks[1:]``, the mid block and
                ``up_blocks[:-1]`` are skipped. Needs a ``cache`` filled by a full step on inputs of the
                same shape. The output approximates the full one; see :func:`deep_cache_schedule`.

        Returns:
            ``(b, out_channels, f, h, w)``.
        """
        cfg = self.config
        if sample.ndim != 5 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be (b, {cfg.in_channels}, f, h, w), got {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        if cfg.use_motion_module and f > cfg.motion_module_max_len:
            raise ValueError(f"a window of {f} frames exceeds the motion modules' maximum of "
                             f"{cfg.motion_module_max_len}; split the video into shorter windows")
        ehs = encoder_hidden_states
        if ehs.ndim != 4 or ehs.shape[0] != b or ehs.shape[1] != f or ehs.shape[3] != cfg.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states must be ({b}, {f}, n_tokens, {cfg.cross_attention_dim}), "
                             f"got {tuple(ehs.shape)}")
        if reuse_deep and (cache is None or "deep" not in cache):
            raise ValueError("reuse_deep=True needs a cache filled by a previous full step")

        context = ehs.reshape(b * f, ehs.shape[2], ehs.shape[3]).to(sample.dtype)
        temb = self._time_embedding(timestep, b, sample.device, sample.dtype)
        x = sample.transpose(1, 2).reshape(b * f, c, h, w)  # frames of a sample adjacent: ((b f), c, h, w)

        # Upsamplers must be told the skip size when h or w is not a multiple of the total down factor.
        factor = 2 ** (len(self.up_blocks) - 1)
        forward_upsample_size = h % factor != 0 or w % factor != 0

        x = self.conv_in(x)
        skips = [x]
        if reuse_deep:
            key = (b, f, h, w, str(sample.dtype))
            if cache.get("key") != key:
                raise ValueError(f"the DeepCache entry was made for (b, f, h, w, dtype) = {cache.get('key')}, "
                                 f"not {key}; run a full step first")
            x, res = self.down_blocks[0](x, temb, context, f, skip_downsample=True)
            skips.extend(res)
            x = cache["deep"]
            up_blocks = self.up_blocks[-1:]
        else:
            for block in self.down_blocks:
                x, res = block(x, temb, context, f)
                skips.extend(res)
            x = self.mid_block(x, temb, context, f)
            up_blocks = self.up_blocks

        for block in up_blocks:
            is_final = block is self.up_blocks[-1]
            if is_final and cache is not None and not reuse_deep:
                cache["deep"] = x.detach()
                cache["key"] = (b, f, h, w, str(sample.dtype))
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and not is_final) else None
            x = block(x, res, temb, context, f, upsample_size=upsample_size)

        x = self.conv_act(window_group_norm(self.conv_norm_out, x, f))
        x = self.conv_out(x)
        return x.reshape(b, f, -1, h, w).transpose(1, 2).contiguous()

    # -- loading / saving -----------------------------------------------------------------------
    @staticmethod
    def convert_checkpoint_keys(state: dict) -> dict:
        """Version-1.0 names (``audio_cross_attn.{norm,attn}``) -> ``norm2`` / ``attn2``."""
        if any(".audio_cross_attn." in k for k in state):
            return rename_keys(state, V10_RENAMES)
        return dict(state)

    @classmethod
    def from_state_dict(cls, state: dict, config: UNetConfig | None = None, *, source: str = "<state dict>",
                        strict: bool = True, dtype: torch.dtype | None = torch.float32,
                        device: str | torch.device = "cpu") -> "UNet3DConditionModel":
        """Build a model from tensors (keys in LatentSync/our layout; 1.0 names are converted).

        Strict: the model is built on the meta device and the tensors are assigned, so nothing is
        allocated twice; any missing/unexpected/wrongly-shaped key raises :class:`CheckpointError`
        naming ``source``. Non-strict: the fitting tensors are loaded into a randomly initialised
        model and the mismatch is logged as a warning. ``dtype=None`` keeps the file's dtypes."""
        config = config or UNetConfig.latentsync()
        state = cls.convert_checkpoint_keys(state)
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        if strict:
            with torch.device("meta"):
                model = cls(config)
            load_strict(model, state, source, what="UNet", assign=True)
            left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
            if left:  # cannot happen while every parameter and buffer is persistent; keep it loud
                raise CheckpointError(source, f"tensors not provided by the file: {left[:8]}")
        else:
            model = cls(config)
            if dtype is not None:
                model.to(dtype)
            expected = model.state_dict()
            report = describe_mismatch({k: v.shape for k, v in expected.items()}, state)
            if report:
                log.warning("%s: loading non-strictly into the UNet; %s", source, report)
            fitting = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
            model.load_state_dict(fitting, strict=False)
        return model.to(device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: UNetConfig | None = None, *, strict: bool = True,
                        dtype: torch.dtype | None = torch.float32,
                        device: str | torch.device = "cpu") -> "UNet3DConditionModel":
        """Load a LatentSync ``.pt`` (``{"state_dict": ...}``, ``module.`` prefixes removed), a
        ``.safetensors`` file, or a :meth:`save_pretrained` folder. ``config`` defaults to the folder's
        ``config.json``, else to :meth:`UNetConfig.latentsync`."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path, config=config, strict=strict, dtype=dtype, device=device)
        state = read_state_dict(path)
        return cls.from_state_dict(state, config, source=str(path), strict=strict, dtype=dtype, device=device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, config: UNetConfig | None = None, *, strict: bool = True,
                        dtype: torch.dtype | None = torch.float32,
                        device: str | torch.device = "cpu") -> "UNet3DConditionModel":
        """Load a folder written by :meth:`save_pretrained`."""
        folder = Path(folder)
        if config is None:
            cfg_path = folder / CONFIG_NAME
            if not cfg_path.is_file():
                raise CheckpointError(str(cfg_path), "file not found (a UNet folder needs config.json and "
                                                     f"{WEIGHTS_NAME})")
            try:
                config = UNetConfig.from_json(cfg_path)
            except (ValueError, TypeError) as err:
                raise CheckpointError(str(cfg_path), f"not a valid UNet config ({err})") from err
        weights = folder / WEIGHTS_NAME
        state = read_state_dict(weights)
        return cls.from_state_dict(state, config, source=str(weights), strict=strict, dtype=dtype, device=device)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / WEIGHTS_NAME)
        self.config.to_json(folder / CONFIG_NAME)
        return folder
