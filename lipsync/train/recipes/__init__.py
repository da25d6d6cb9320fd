"""Training recipes (one file each, driven by a YAML config): ``vae``, ``syncnet``,
``unet_stage1``, ``unet_stage2``, ``distill`` (step distillation of a trained UNet).
See :class:`lipsync.train.recipes.base.Recipe`."""

from __future__ import annotations


def recipe_for(cfg: dict, device="cpu"):
    name = cfg["recipe"]
    if name == "vae":
        from lipsync.train.recipes.vae import VAERecipe as cls
    elif name == "syncnet":
        from lipsync.train.recipes.syncnet import SyncNetRecipe as cls
    elif name == "unet_stage1":
        from lipsync.train.recipes.unet import UNetRecipe as cls
    elif name == "unet_stage2":
        from lipsync.train.recipes.unet import UNetStage2Recipe as cls
    elif name == "distill":
        from lipsync.train.recipes.distill import DistillRecipe as cls
    else:
        raise ValueError(f"unknown recipe {name!r}")
    return cls(cfg, device)
