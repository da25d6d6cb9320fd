"""Recipe ``vae``: the tiny profile's AutoencoderKL on single aligned face crops.

Loss: ``l1 * |x' - x| + mse * (x' - x)^2 + kl * KL(q(z|x) || N(0, 1))`` (KL per latent element),
with z sampled from the posterior. ``train.trainable`` (name patterns, e.g. ``[decoder.]``) trains
part of it: a decoder-only run sharpens reconstructions of new data without moving the latent space
a trained UNet denoises in. With each checkpoint the latents' standard deviation over a few
training batches is measured; the export writes ``1 / std`` as the scaling factor of
``model_index.json``, so the UNet recipes see latents of unit variance. The other components of
the exported folder (UNet, audio encoder) come from ``init_from`` or the profile's random init.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.train.data import WindowSpec
from lipsync.train.recipes.base import Recipe, unwrap


class VAETrainer(nn.Module):
    """DDP sees one forward: images -> (reconstruction, KL per latent element)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        post = self.vae.encode(x).latent_dist
        z = post.sample(generator=generator) if sample else post.mode()
        rec = self.vae.decode(z).sample
        kl = post.kl().mean() / float(z[0].numel())
        return rec, kl


class VAERecipe(Recipe):
    name = "vae"

    def window_spec(self) -> WindowSpec:
        d = self.cfg["data"]
        return WindowSpec(frames=int(d["window"]), batch_size=int(d["batch_size"]), reference=False, audio_margin=0)

    def build(self) -> nn.Module:
        vae = self.components().vae
        for name, p in vae.named_parameters():
            p.requires_grad_(self._trains(name))
        if self._encoder_frozen():
            self.notes.append("the encoder is frozen: the latent space and its scale stay the init's")
        return VAETrainer(vae).to(self.device).train()

    def _trains(self, name: str) -> bool:
        patterns = self.cfg["train"].get("trainable")
        if patterns is None:
            return True
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        return any(s in name for s in patterns)

    def _encoder_frozen(self) -> bool:
        # A frozen encoder keeps the latent space a trained UNet works in: then the export keeps the
        # init's latent scale too, rather than a new estimate from other data.
        return not any(self._trains(n) for n, _ in self.components().vae.named_parameters()
                       if n.startswith(("encoder.", "quant_conv.")))

    def loss(self, model, batch, generator, train=True):
        w = self.cfg["loss"]
        x = batch["frames"].flatten(0, 1).to(self.device)
        rec, kl = model(x, generator, train)  # validation decodes the posterior's mean
        l1 = (rec - x).abs().mean()
        mse = F.mse_loss(rec, x)
        total = float(w["l1"]) * l1 + float(w["mse"]) * mse + float(w["kl"]) * kl
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))
        return total, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item(), "psnr": psnr.item()}

    @torch.no_grad()
    def extra_state(self, model, sampler) -> dict:
        vae = unwrap(model).vae
        was = vae.training
        vae.eval()
        zs = []
        for _ in range(4):
            x = sampler.next()["frames"].flatten(0, 1).to(self.device)
            zs.append(vae.encode(x).latent_dist.mode().float().flatten())
        vae.train(was)
        std = float(torch.cat(zs).std())
        return {"latent_std": std}

    def export(self, state, extra, folder) -> Path:
        from lipsync.pipeline.components import save_folder

        comps = self.components()
        comps.vae.load_state_dict({k.removeprefix("vae."): v for k, v in state.items()})
        std = float(extra.get("latent_std") or 0.0)
        if std > 0 and not self._encoder_frozen():
            comps.scaling_factor = round(1.0 / std, 5)
            comps.shift_factor = 0.0
        return save_folder(comps, folder)
