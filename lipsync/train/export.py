"""A training checkpoint -> the inference folder format (``lipsync generate --checkpoint_dir``).

UNet and VAE recipes write a complete model folder (``model_index.json``, ``unet/``, ``vae/``,
``audio_encoder/``, ``scheduler/``: :func:`lipsync.pipeline.components.save_folder`), the trained
part from the checkpoint and the others from the recipe's ``init_from`` (or the profile's random
initialisation); the SyncNet recipe writes a SyncNet folder. Remote destinations (``s3://``) are
written locally, then uploaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lipsync.train.loop import STATE_FILE


def export_checkpoint(checkpoint_dir: str | os.PathLike, folder: str, cfg: dict | None = None) -> str:
    """Export the checkpoint in ``checkpoint_dir`` (a local folder holding ``state.pt``) to
    ``folder`` (local or remote); ``cfg`` defaults to the config saved in the checkpoint."""
    from lipsync.media.uri import is_remote
    from lipsync.train.recipes import recipe_for

    state = torch.load(os.path.join(checkpoint_dir, STATE_FILE), map_location="cpu", weights_only=False)
    recipe = recipe_for(cfg or state["config"], "cpu")
    if not is_remote(folder):
        recipe.export(state["model"], state.get("extra") or {}, Path(folder))
        return str(folder)
    import fsspec

    from lipsync.media.uri import storage_options

    tmp = tempfile.mkdtemp(prefix="lipsync-export-")
    try:
        local = Path(tmp) / "model"
        recipe.export(state["model"], state.get("extra") or {}, local)
        fs, path = fsspec.core.url_to_fs(folder, **storage_options())
        fs.put(str(local) + "/", path.rstrip("/") + "/", recursive=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
