"""Recipe ``syncnet``: our StableSyncNet-style SyncNet (:mod:`lipsync.models.syncnet`).

Each step takes ``max(2, batch_size // 4)`` random segments of the worker's shard, makes
``batch_size`` balanced pairs from them with :func:`lipsync.models.syncnet.make_pairs` (in-sync
windows; negatives with the same clip's audio shifted by 2..15 frames or another clip's audio) and
minimises BCE on the cosine similarity. ``syncnet_config`` sets the architecture (``num_frames``: 5
for LSE evaluation, 16 for the stage-2 supervisor); ``syncnet`` (a folder) continues a trained one.
The export is a SyncNet folder (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lipsync.train.data import WindowSpec, usable
from lipsync.train.recipes.base import Recipe


class SyncNetRecipe(Recipe):
    name = "syncnet"

    def config(self):
        from lipsync.models.syncnet import SyncNetConfig

        raw = {"crop_size": int(self.profile.resolution), **dict(self.cfg["syncnet_config"] or {})}
        return SyncNetConfig.from_dict(raw)

    def window_spec(self) -> WindowSpec:
        cfg = self.config()
        return WindowSpec(frames=cfg.num_frames, batch_size=int(self.cfg["data"]["batch_size"]),
                          reference=False, audio_margin=0)

    def build(self) -> nn.Module:
        from lipsync.models.syncnet import SyncNet

        torch.manual_seed(int(self.cfg["train"]["seed"]))
        if self.cfg["syncnet"] and not isinstance(self.cfg["syncnet"], list):
            net = SyncNet.from_pretrained(self.cfg["syncnet"])
        else:
            net = SyncNet(self.config())
        self.net_config = net.config
        return net.to(self.device).train()

    def _pairs(self, segments, rng):
        from lipsync.train import syncnet_adapter as sa

        clips = [sa.clip_of(s, self.net_config.image_size) for s in segments]
        return sa.make_pairs(clips, int(self.cfg["data"]["batch_size"]), self.net_config, rng)

    def next_batch(self, sampler) -> dict:
        k = max(2, int(self.cfg["data"]["batch_size"]) // 4)
        frames, mel, labels = self._pairs(sampler.random_segments(k), sampler.rng)
        return {"frames": frames, "mel": mel, "labels": labels}

    def val_batches(self, segments, count):
        segs = usable(segments, self.window_spec())
        if len(segs) < 1:
            return []
        rng = np.random.default_rng(1234)
        k = max(2, int(self.cfg["data"]["batch_size"]) // 4)
        out = []
        for _ in range(count):
            idx = rng.choice(len(segs), size=min(k, len(segs)), replace=False)
            frames, mel, labels = self._pairs([segs[int(i)] for i in idx], rng)
            out.append({"frames": frames, "mel": mel, "labels": labels})
        return out

    def loss(self, model, batch, generator, train=True):
        from lipsync.train.syncnet_adapter import pair_loss

        labels = batch["labels"].to(self.device)
        loss, p = pair_loss(model, batch["frames"].to(self.device), batch["mel"].to(self.device), labels)
        acc = float(((p.detach() > 0.5).float() == labels).float().mean())
        return loss, {"bce": loss.item(), "accuracy": acc}

    def default_export_dir(self, run_dir: str) -> str:
        return f"{run_dir.rstrip('/')}/syncnet"

    def export(self, state, extra, folder) -> Path:
        from lipsync.models.syncnet import SyncNet, SyncNetConfig

        cfg = SyncNetConfig.from_dict(extra["syncnet_config"]) if extra.get("syncnet_config") else self.config()
        net = SyncNet(cfg)
        net.load_state_dict(state)
        folder = Path(folder)
        net.save_pretrained(folder)
        return folder

    def extra_state(self, model, sampler) -> dict:
        return {"syncnet_config": self.net_config.to_dict()}
