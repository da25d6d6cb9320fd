"""What every training recipe provides to the loop (:mod:`lipsync.train.loop`).

A recipe builds the module that trains (one ``nn.Module``, so DDP wraps one thing; frozen helpers
such as a VAE or a SyncNet stay outside it), computes its loss on a batch, and exports the trained
weights to the inference folder format. It never touches Ray.
"""

from __future__ import annotations

import abc
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipsync.train.data import Segment, WindowSampler, WindowSpec, fixed_batches


class Recipe(abc.ABC):
    name = ""

    def __init__(self, cfg: dict, device: torch.device | str = "cpu"):
        from lipsync.profiles import load_profile

        self.cfg = cfg
        self.device = torch.device(device)
        self.profile = load_profile(cfg["profile"])
        self.notes: list[str] = []  # said once in the training log (e.g. a loss that is skipped)
        self._components = None

    # -- model -------------------------------------------------------------------------------
    def components(self):
        """The starting weights: ``init_from`` (a model folder) or the profile's random init."""
        if self._components is None:
            from lipsync.pipeline.components import load_folder, random_components

            if self.cfg["init_from"]:
                self._components = load_folder(self.cfg["init_from"])
                if self._components.profile.name != self.profile.name:
                    self.notes.append(f"init_from holds profile {self._components.profile.name!r}; "
                                      f"the config says {self.profile.name!r}: using the folder's")
                    self.profile = self._components.profile
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._components = random_components(self.profile, seed=int(self.cfg["train"]["seed"]))
        return self._components

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """The trainable module (on ``self.device``); frozen helpers are set up here too."""

    def window_spec(self) -> WindowSpec:
        return WindowSpec.from_config(self.cfg["data"])

    def sampler(self, source, seed: int) -> WindowSampler:
        d = self.cfg["data"]
        return WindowSampler(source, self.window_spec(), seed, bool(d["cache"]), int(d["buffer_segments"]))

    def next_batch(self, sampler: WindowSampler) -> dict:
        return sampler.next()

    def val_batches(self, segments: list[Segment], count: int) -> list[dict]:
        return fixed_batches(segments, self.window_spec(), count)

    # -- loss --------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: dict, generator: torch.Generator,
             train: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        ...

    def extra_state(self, model: nn.Module, sampler: WindowSampler) -> dict:
        """Extra facts saved with a checkpoint (e.g. the VAE's latent scale)."""
        return {}

    # -- export ------------------------------------------------------------------------------
    @abc.abstractmethod
    def export(self, state: dict, extra: dict, folder: str | Path) -> Path:
        """Write the trained weights (``state``: the trainable module's state dict) as a model folder."""

    def default_export_dir(self, run_dir: str) -> str:
        return f"{run_dir.rstrip('/')}/model"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def rng_for(seed: int, rank: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(rank), int(step)])
