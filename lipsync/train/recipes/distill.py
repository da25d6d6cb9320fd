"""Recipe ``distill``: step distillation of a trained lip-sync UNet, classifier-free guidance folded in.

Method: progressive distillation of a guided sampler (Salimans & Ho 2022, "Progressive distillation
for fast sampling of diffusion models"; with the guidance in the teacher's steps as in Meng et al.
2023, "On distillation of guided diffusion models", without their guidance-scale embedding: one fixed
scale, so the architecture stays the teacher's). The teacher is the frozen UNet run as its profile
samples: DDIM with audio classifier-free guidance (all-zero tokens are the unconditional branch, as
at inference) at the profile's ``guidance_scale`` on the steps its ``guidance_interval`` guides. The
student (initialised from the teacher, same architecture) learns to land with ONE conditional DDIM
step where the teacher lands with ``k = teacher_steps / num_steps`` guided DDIM steps:

* the student's steps are DDIM's "trailing" grid of ``num_steps`` (t = 999, 999 - 1000/N, ...; its
  first step starts from pure noise at t = 999, the last goes to alphas_cumprod[0] as the DDIM
  scheduler's final step does), and the teacher's are the same grid at ``teacher_steps``, so every
  student step is exactly ``k`` consecutive teacher steps (the bundled teacher's own DDIM-20 uses the
  "leading" grid, 951 ... 1; here its 20 steps are 999 ... 49, and always DDIM whatever its profile's
  sampler);
* z_t is drawn from q(z_t | z_0) on the training data (z_0 from the frozen VAE, "mixed" noise as the
  UNet recipe draws it) at a student timestep; the teacher's k steps give z~_{t'} (no_grad); the
  target is the x~ for which one student DDIM step from z_t gives exactly z~_{t'},
  ``x~ = (z~_t' - (s_t'/s_t) z_t) / (a_t' - (s_t'/s_t) a_t)`` (a = sqrt(alphas_cumprod), s = sqrt(1 - a^2)),
  expressed in the student's prediction type (v for ``tiny``); the loss is the MSE against it in that
  space (for v: x-space MSE weighted SNR + 1, one of Salimans & Ho's weightings), with the UNet
  recipe's optional ``loss.mouth_weight``;
* the student never sees an unconditional input: its export says ``guidance_scale: 1`` (one UNet pass
  a step), ``num_steps: N``, ``scheduler: ddim`` in model_index.json's profile, and its scheduler
  folder says ``timestep_spacing: trailing``, so ``LipSyncPipeline.from_pretrained`` /
  ``--checkpoint_dir`` sample it as it was trained with no flag.

Rounds chain: the next round's teacher is this export (``--set teacher=<export>
distill.num_steps=N/2``; ``distill.teacher_steps`` and the guidance default to the teacher's own
profile, i.e. N and 1). The bundled model: 20 guided steps -> 4 (k = 5) -> 2 (k = 2), see
``lipsync/configs/train/tiny_distill.yaml``. Progressive rather than consistency distillation: its
target is a deterministic function of the teacher's ODE steps (no EMA target network, no
skipping-step schedule to tune), each round's target is nearly fitted by the student's initial
weights (a good start for a small model trained briefly on CPU), and the guided teacher's CFG
combination is simply part of the teacher step.

Batches, conditioning (masked-face, reference and mask latents from the frozen VAE, audio tokens)
and the latent cache are the UNet recipe's own (:class:`~lipsync.train.recipes.unet.UNetRecipe`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from lipsync.pipeline.denoise import guided_steps, training_target, unet_input
from lipsync.train.recipes.unet import DiffusionTrainer, UNetRecipe, mixed_noise_like

NUM_TRAIN_TIMESTEPS = 1000


def ddim_step(prediction_type: str, z: torch.Tensor, out: torch.Tensor, ab: torch.Tensor,
              ab_prev: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) from ``z`` (alphas_cumprod ``ab``) to ``ab_prev``, as
    diffusers' ``DDIMScheduler.step`` computes it (no clipping, no thresholding)."""
    if prediction_type == "v_prediction":
        x0 = ab.sqrt() * z - (1 - ab).sqrt() * out
        eps = ab.sqrt() * out + (1 - ab).sqrt() * z
    elif prediction_type == "epsilon":
        x0 = (z - (1 - ab).sqrt() * out) / ab.sqrt()
        eps = out
    else:
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def one_step_target(prediction_type: str, zt: torch.Tensor, z_end: torch.Tensor, ab: torch.Tensor,
                    ab_end: torch.Tensor) -> torch.Tensor:
    """The output (in ``prediction_type``) whose DDIM step from ``zt`` (``ab``) to ``ab_end`` is ``z_end``."""
    ratio = ((1 - ab_end) / (1 - ab)).sqrt()
    x0 = (z_end - ratio * zt) / (ab_end.sqrt() - ratio * ab.sqrt())
    eps = (zt - ab.sqrt() * x0) / (1 - ab).sqrt()
    return training_target(prediction_type, x0, eps, ab)


def trailing_timesteps(num_steps: int, num_train: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """DDIM's "trailing" grid (diffusers' ``timestep_spacing="trailing"``), for step counts dividing ``num_train``."""
    stride = num_train // num_steps
    return [num_train - 1 - i * stride for i in range(num_steps)]


class DistillRecipe(UNetRecipe):
    name = "distill"
    stage = 1

    def __init__(self, cfg: dict, device="cpu"):
        super().__init__(cfg, device)
        self._teacher_components = None

    # -- teacher / student ---------------------------------------------------------------------
    def teacher_folder(self) -> Path:
        """``teacher`` (a model folder), else the profile's weights (the bundled model for ``tiny``)."""
        from lipsync.pipeline.components import locate_weights
        from lipsync.train.config import TrainConfigError

        if self.cfg["teacher"]:
            return Path(self.cfg["teacher"])
        loc = locate_weights(self.profile, None)
        if loc.kind != "folder":
            raise TrainConfigError(f"distill: no trained weights for profile {self.profile.name!r} to distil; "
                                   "set teacher to a model folder")
        return loc.folder

    def teacher_components(self):
        if self._teacher_components is None:
            from lipsync.pipeline.components import load_folder

            self._teacher_components = load_folder(self.teacher_folder())
        return self._teacher_components

    def components(self):
        """The student's start: ``init_from``, else the teacher (loaded again: the teacher stays apart).
        The profile is always the folder's (the student keeps the teacher's architecture and settings)."""
        if self._components is None:
            from lipsync.pipeline.components import load_folder

            self._components = load_folder(self.cfg["init_from"] or self.teacher_folder())
            if self._components.profile.name != self.profile.name:
                self.notes.append(f"the student's start holds profile {self._components.profile.name!r}; "
                                  f"the config says {self.profile.name!r}: using the folder's")
            self.profile = self._components.profile
        return self._components

    def plan(self) -> dict:
        """The student's and the teacher's samplers: step counts, guidance, prediction types."""
        from lipsync.train.config import TrainConfigError

        d = self.cfg["distill"]
        tp = self.teacher_components().profile
        n = int(d["num_steps"])
        tn = int(d["teacher_steps"] or tp.num_steps)
        if n < 1 or tn < n or tn % n or NUM_TRAIN_TIMESTEPS % tn:
            raise TrainConfigError(f"distill: teacher_steps ({tn}) must be a multiple of num_steps ({n}) and divide "
                                   f"{NUM_TRAIN_TIMESTEPS} (each student step is k whole teacher steps)")
        g = float(tp.guidance_scale if d["guidance_scale"] is None else d["guidance_scale"])
        return {"num_steps": n, "teacher_steps": tn, "k": tn // n, "guidance_scale": g,
                "guidance_interval": tuple(float(v) for v in tp.guidance_interval),
                "teacher_prediction": tp.prediction_type}

    # -- model ---------------------------------------------------------------------------------
    def build(self):
        from lipsync.train.config import TrainConfigError

        model = super().build()  # the student (+ frozen VAE, mask, mouth map, latent cache): the UNet recipe's
        tc = self.teacher_components()
        self.teacher = DiffusionTrainer(tc.unet, tc.audio_encoder).to(self.device).eval().requires_grad_(False)
        student = self.components()
        same_vae = float(tc.scaling_factor) == float(student.scaling_factor) and all(
            torch.equal(a, b) for a, b in zip(tc.vae.state_dict().values(), student.vae.state_dict().values()))
        if not same_vae:
            raise TrainConfigError("distill: the teacher and the student's start have different VAEs (latent spaces)")
        ac = tc.scheduler.alphas_cumprod.to(torch.float64)
        if not torch.allclose(ac.to(self.alphas_cumprod), self.alphas_cumprod):
            raise TrainConfigError("distill: the teacher's noise schedule is not the student's")
        self.sched_alphas = ac.to(self.device)
        self.final_alpha = float(tc.scheduler.final_alpha_cumprod)
        self.p = self.plan()
        p = self.p
        self.teacher_guided = guided_steps(p["teacher_steps"], p["guidance_interval"])
        guided = p["guidance_scale"] > 1 and any(self.teacher_guided)
        cfg_note = f"guidance {p['guidance_scale']:g} folded in" if guided else "no guidance"
        self.notes.append(f"distill: teacher {self.teacher_folder()} ({p['teacher_steps']} DDIM steps, {cfg_note}) -> "
                          f"student {p['num_steps']} steps, {p['k']} teacher steps per student step")
        return model

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at integer timesteps ``t`` (B,), DDIM's final alpha where t < 0; (B, 1, 1, 1, 1) float32."""
        final = torch.tensor(self.final_alpha, dtype=self.sched_alphas.dtype, device=self.sched_alphas.device)
        a = torch.where(t >= 0, self.sched_alphas[t.clamp(min=0)], final)
        return a.float().view(-1, 1, 1, 1, 1)

    # -- loss ----------------------------------------------------------------------------------
    def prepare(self, model, batch: dict, generator: torch.Generator, t: torch.Tensor | None = None) -> dict:
        """A noisy sample at a student timestep with the UNet recipe's conditioning: zt (B, 4, F, h, w),
        t (B,), the conditioning latents, both models' audio features, the audio margin."""
        x = batch["frames"].to(self.device)
        b, f = x.shape[:2]
        z0, mask_lat, masked, ref_lat = self.conditioning(batch, x)
        noise = mixed_noise_like(z0, float(self.cfg["loss"]["mixed_noise_alpha"]), generator)
        n = self.p["num_steps"]
        if t is None:
            idx = torch.randint(0, n, (b,), generator=generator, device=generator.device).to(self.device)
            t = (NUM_TRAIN_TIMESTEPS - 1) - idx * (NUM_TRAIN_TIMESTEPS // n)
        t = t.to(self.device, torch.long)
        ab = self.alpha(t)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        return {"zt": zt, "t": t, "ab": ab, "mask": mask_lat, "masked": masked, "ref": ref_lat, "frames": f,
                "margin": int(batch["audio_margin"]), "feats": self.audio_features(model, batch["audio"]),
                "teacher_feats": self.audio_features(self.teacher, batch["audio"])}

    @torch.no_grad()
    def teacher_solve(self, prep: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's k guided DDIM steps from ``prep['zt']``: (z at the student's next timestep, its t)."""
        p = self.p
        stride = NUM_TRAIN_TIMESTEPS // p["teacher_steps"]
        m, f, g = prep["margin"], prep["frames"], p["guidance_scale"]
        teacher = self.teacher
        tokens = teacher.tokens(prep["teacher_feats"], m, m + f)
        null = torch.zeros_like(tokens)  # the unconditional branch, as at inference
        guided_table = torch.tensor(self.teacher_guided, device=self.device)
        z, t = prep["zt"].float(), prep["t"]
        for _ in range(p["k"]):
            t_next = t - stride
            inp = unet_input(z, prep["mask"], prep["masked"], prep["ref"])
            guided = guided_table[(NUM_TRAIN_TIMESTEPS - 1 - t) // stride] if g > 1 else None
            if guided is not None and bool(guided.any()):
                uncond, cond = teacher.unet(torch.cat([inp, inp]), torch.cat([t, t]),
                                            torch.cat([null, tokens]).to(inp.dtype)).float().chunk(2)
                out = torch.where(guided.view(-1, 1, 1, 1, 1), uncond + g * (cond - uncond), cond)
            else:
                out = teacher.unet(inp, t, tokens.to(inp.dtype)).float()
            z = ddim_step(p["teacher_prediction"], z, out, self.alpha(t), self.alpha(t_next))
            t = t_next
        return z, t

    def target(self, prep: dict) -> torch.Tensor:
        """What the student outputs so that its one DDIM step lands where the teacher's k steps do."""
        z_end, t_end = self.teacher_solve(prep)
        return one_step_target(self.prediction, prep["zt"].float(), z_end, prep["ab"], self.alpha(t_end))

    def loss(self, model, batch, generator, train=True):
        prep = self.prepare(model, batch, generator)
        target = self.target(prep)
        b, m, f = prep["zt"].shape[0], prep["margin"], prep["frames"]
        keep_audio = torch.ones(b, device=self.device)  # the student has no unconditional branch
        out = model(unet_input(prep["zt"], prep["mask"], prep["masked"], prep["ref"]), prep["t"], prep["feats"],
                    m, m + f, keep_audio).float()
        err = (out - target) ** 2
        mse = err.mean()
        mouth = self.mouth_map(err.shape[-2:])
        per_cell = err.mean(dim=(0, 1, 2))
        logs = {"distill_mse": mse.item(), "mouth_mse": ((per_cell * mouth).sum() / mouth.sum()).item()}
        mw = float(self.cfg["loss"]["mouth_weight"])
        if mw > 0:
            weight = 1.0 + mw * mouth
            mse = (err * weight).mean() / weight.mean()
            logs["weighted_mse"] = mse.item()
        return mse, logs

    # -- export --------------------------------------------------------------------------------
    def student_profile(self):
        """The student's profile: the teacher's (architecture, crops, mask ...) with its own sampler."""
        profile = copy.deepcopy(self.components().profile)
        profile.num_steps = int(self.cfg["distill"]["num_steps"])
        profile.guidance_scale = 1.0  # guidance is in the weights: one conditional pass a step
        profile.guidance_interval = [0.0, 1.0]
        profile.scheduler = "ddim"
        return profile

    def student_scheduler(self):
        from diffusers import DDIMScheduler

        base = self.components().scheduler
        return DDIMScheduler.from_config({**base.config, "timestep_spacing": "trailing"})

    def export(self, state, extra, folder) -> Path:
        from lipsync.pipeline.components import save_folder

        comps = self.components()
        DiffusionTrainer(comps.unet, comps.audio_encoder).load_state_dict(state)
        comps.profile = self.student_profile()
        comps.scheduler = self.student_scheduler()
        return save_folder(comps, folder)
