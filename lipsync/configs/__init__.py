"""The configuration files that ship inside the package, so an installed wheel has them too:
model profiles (``profiles/``), training recipes (``train/``), and the defaults of the batch job
(``dub.yaml``) and of the server (``serve.yaml``)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

CONFIG_DIR = Path(str(files(__name__)))
PROFILE_DIR = CONFIG_DIR / "profiles"
RECIPE_DIR = CONFIG_DIR / "train"


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A training recipe: an existing file as given, else a shipped recipe by name (``unet_stage1``
    or ``train/unet_stage1.yaml``); an unknown name is returned as given for the loader to report."""
    given = Path(name_or_path)
    if given.is_file():
        return given
    shipped = RECIPE_DIR / (given.name if given.suffix in (".yaml", ".yml") else f"{given.name}.yaml")
    return shipped if shipped.is_file() else given


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
