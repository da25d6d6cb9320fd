"""Training configuration: one YAML file per recipe (shipped in ``lipsync/configs/train/``), merged over the
defaults below; unknown keys are errors. ``key.sub=value`` overrides (``--set``) come last."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from lipsync.config_tree import load_tree, merge

from lipsync.errors import LipSyncError

RECIPES = ("vae", "syncnet", "unet_stage1", "unet_stage2", "distill")

DEFAULTS: dict = {
    "recipe": None,  # vae | syncnet | unet_stage1 | unet_stage2 | distill
    "name": None,  # run name (Ray Train's RunConfig name): default the config file's stem
    "profile": "tiny",  # model profile (architecture, crop size, mask)
    "init_from": None,  # a model folder (our format): weights of the parts this recipe does not train
    "syncnet": None,  # folder of a trained SyncNet (stage 2's supervisor; the SyncNet recipe's start)
    "syncnet_config": {},  # recipe syncnet: SyncNetConfig fields (num_frames, image_size, ...)
    "export_dir": None,  # default <save_dir>/<name>/model
    "teacher": None,  # recipe distill: the teacher model folder (None: the profile's weights, e.g. the bundled tiny)
    # recipe distill (lipsync/train/recipes/distill.py); the student starts from init_from, else the teacher
    "distill": {
        "num_steps": 4,  # the student's DDIM steps (trailing grid)
        "teacher_steps": None,  # the teacher's DDIM steps (None: its profile's num_steps); a multiple of num_steps
        "guidance_scale": None,  # the teacher's audio guidance (None: its profile's guidance_scale)
    },
    "data": {
        "shards": None,  # the folder `lipsync preprocess` wrote (local or s3://), or a list of them (a mix)
        "train_split": "train",
        "val_split": "val",
        "batch_size": 2,  # windows per worker per micro-step
        "window": 16,  # frames per window (1 for the VAE: single frames)
        "reference": False,  # also a reference window from other frames of the same segment
        "audio_margin": 12,  # frames of audio context kept on each side of a window
        "cache": True,  # hold the worker's shard in memory (else stream it, epoch after epoch)
        "buffer_segments": 256,  # streaming: segments sampled from at a time
        "latent_cache_segments": 512,  # UNet recipes: segments whose frozen-VAE latents are kept (~0.9 MB each)
        "val_batches": 4,  # batches per worker at each validation
    },
    "train": {
        "max_steps": 1000,
        "lr": 1.0e-4,
        "weight_decay": 1.0e-2,
        "betas": [0.9, 0.999],
        "warmup_steps": 0,
        "grad_clip": 1.0,
        "grad_accum": 1,  # micro-batches per optimizer step
        "amp": "auto",  # auto (bf16 on GPU, off on CPU) | off | bf16 | fp16 (GPU only)
        "seed": 0,
        "log_every": 10,
        "checkpoint_every": 200,
        "keep_checkpoints": 3,
        "max_failures": 3,  # worker failures recovered from the latest checkpoint
        "pg_shutdown_timeout_s": None,  # wait for a failed group's torch process group to close (Ray: 30 s)
        "torch_threads": "auto",  # per worker
        "cpus_per_worker": "auto",  # CPU workers: fractional allowed; auto leaves room for Ray Data
        "trainable": None,  # UNet: name patterns of the trainable parameters (None: all)
        "train_audio_encoder": True,  # UNet recipes: the learned mel encoder trains with the UNet
    },
    "loss": {
        # vae
        "l1": 1.0,
        "mse": 0.0,
        "kl": 1.0e-4,  # per latent element
        # unet
        "mixed_noise_alpha": 1.0,  # shared/per-frame noise ratio (LatentSync: 1); 0 = independent noise
        "audio_drop_prob": 0.05,  # tokens zeroed (classifier-free guidance's unconditional branch)
        "noise_mse": 1.0,
        # extra noise-MSE weight on the latents over the mouth (lipsync.face.mask.MOUTH_BOX); 0 =
        # LatentSync's plain MSE. The audio decides only those few latents, so unweighted their share
        # of the loss (~2 %) is lost in the noise of the timestep sampling and the audio is learnt slowly.
        "mouth_weight": 0.0,
        # unet stage 2 (pixel losses on the decoded one-step x0 estimate)
        "sync": 0.05,
        "sync_windows": [5, 16],  # multi-scale sync loss: window lengths the SyncNet accepts
        "trepa": 1.0,
        "trepa_weights": None,  # safetensors of lipsync.train.losses.VideoEncoder; None = random, fixed seed
        "temporal": 1.0,
        "lpips": 0.1,  # used only with lpips_vgg_weights
        "lpips_vgg_weights": None,  # VGG16 weights (torchvision key names); None = LPIPS skipped
        "lpips_lin_weights": None,  # LPIPS linear heads (lpips package's vgg.pth); None = equal weights
        "pixel_frames": None,  # decode only this many frames of the window for pixel losses (None: all)
        # syncnet
        "syncnet_shift_negatives": True,
    },
    "debug": {
        "crash_at_step": None,  # test only: rank `crash_rank` exits at this step, once (marker file)
        "crash_rank": 1,
        "crash_marker": None,
        "crash_delay_s": 3.0,  # wait before exiting (Ray Train registers reports every 2 s)
    },
}


class TrainConfigError(LipSyncError):
    """A training configuration that cannot run."""


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """A recipe file, or a shipped recipe by name (``unet_stage1``; see ``lipsync.configs``)."""
    from lipsync.configs import recipe_path

    source = str(recipe_path(path))
    cfg = load_tree(DEFAULTS, source, overrides, TrainConfigError, "train.max_steps=100")
    if not cfg["name"]:
        cfg["name"] = Path(source).stem
    validate(cfg, source)
    return cfg


def from_dict(data: dict, source: str = "<dict>") -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    merge(cfg, data, source, TrainConfigError)
    cfg["name"] = cfg["name"] or str(cfg["recipe"])
    validate(cfg, source)
    return cfg


def validate(cfg: dict, source: str) -> None:
    if cfg["recipe"] not in RECIPES:
        raise TrainConfigError(f"{source}: recipe must be one of {', '.join(RECIPES)}, got {cfg['recipe']!r}")
    t, d = cfg["train"], cfg["data"]
    for key, lo in (("max_steps", 0), ("grad_accum", 1), ("checkpoint_every", 1), ("log_every", 1),
                    ("keep_checkpoints", 1)):
        if not isinstance(t[key], int) or t[key] < lo:
            raise TrainConfigError(f"{source}: train.{key} must be an integer >= {lo}, got {t[key]!r}")
    for key, lo in (("batch_size", 1), ("window", 1), ("audio_margin", 0), ("val_batches", 0)):
        if not isinstance(d[key], int) or d[key] < lo:
            raise TrainConfigError(f"{source}: data.{key} must be an integer >= {lo}, got {d[key]!r}")
    if t["amp"] not in ("auto", "off", "bf16", "fp16"):
        raise TrainConfigError(f"{source}: train.amp must be auto, off, bf16 or fp16")
    if float(t["lr"]) <= 0:
        raise TrainConfigError(f"{source}: train.lr must be > 0")
    if cfg["recipe"] == "distill":
        n, tn = cfg["distill"]["num_steps"], cfg["distill"]["teacher_steps"]
        if not isinstance(n, int) or n < 1 or not (tn is None or (isinstance(tn, int) and tn >= n)):
            raise TrainConfigError(f"{source}: distill.num_steps must be an integer >= 1 and distill.teacher_steps "
                                   f"null or an integer >= it, got {n!r} and {tn!r}")
