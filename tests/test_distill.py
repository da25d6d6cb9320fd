"""Recipe ``distill`` (lipsync/train/recipes/distill.py): step distillation of the bundled tiny UNet with
its audio guidance folded in, on shards the test makes (2 s synthetic clips, one 48-frame segment each).
The teacher is a copy of the bundled model; the student's target is checked against diffusers' own
DDIM steps (two guided teacher steps, one student step), the loss falls on a fixed batch, the teacher
stays as it was, and the export loads with ``LipSyncPipeline.from_pretrained`` and samples with its
own step count and no unconditional pass."""

from __future__ import annotations

import glob
import json
import shutil

import numpy as np
import pytest
import torch

from shard_helpers import make_shards

STUDENT_STEPS, TEACHER_STEPS = 2, 4  # k = 2: each student step is two guided teacher steps


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("distill"), 2, seed=300)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A guided teacher: a copy of the bundled model (the tests never write next to the package's
    weights) whose profile samples as the student's real teacher does (DDIM-20, guidance 3.5), so the
    guided path of the target is what is checked. The bundled model itself is a distilled student
    (4 steps, guidance 1)."""
    from lipsync.profiles import BUNDLED_MODELS

    dest = tmp_path_factory.mktemp("teacher") / "tiny"
    shutil.copytree(BUNDLED_MODELS / "tiny", dest, ignore=shutil.ignore_patterns("syncnet", "MODEL_CARD.md"))
    index = json.loads((dest / "model_index.json").read_text())
    index["profile"].update(num_steps=20, guidance_scale=3.5)
    (dest / "model_index.json").write_text(json.dumps(index))
    return dest


def _cfg(shards, teacher, **over):
    from lipsync.train.config import from_dict

    data = {"shards": str(shards), "batch_size": 1, "window": 8, "val_batches": 1, **over.pop("data", {})}
    train = {"max_steps": 2, "log_every": 1, "checkpoint_every": 2, "lr": 1e-4, "train_audio_encoder": False,
             **over.pop("train", {})}
    distill = {"num_steps": STUDENT_STEPS, "teacher_steps": TEACHER_STEPS, **over.pop("distill", {})}
    return from_dict({"recipe": "distill", "name": "distill", "teacher": str(teacher), "data": data, "train": train,
                      "distill": distill, **over})


def _batch(shards, n=1, seed=3):
    from lipsync.train.data import WindowSpec, read_segments, sample_batch

    return sample_batch(read_segments(str(shards / "train")), WindowSpec(8, n, True, 12), np.random.default_rng(seed))


def test_shipped_recipe_and_round_chaining(teacher):
    from lipsync.train.config import TrainConfigError, load_config
    from lipsync.train.recipes import recipe_for

    cfg = load_config("tiny_distill")
    assert cfg["recipe"] == "distill" and cfg["name"] == "tiny-distill"
    assert cfg["teacher"] == "out/train/ckpt/tiny-unet-reg2/model"  # make tiny-model-teacher's export
    plan = recipe_for(load_config("tiny_distill", [f"teacher={teacher}"])).plan()
    assert (plan["teacher_steps"], plan["num_steps"], plan["k"], plan["guidance_scale"]) == (20, 4, 5, 3.5)
    # Without a teacher the bundled model is one: it is the 4-step student, so its round is 4 -> 2.
    bundled = recipe_for(load_config("tiny_distill", ["teacher=null", "distill.num_steps=2"]))
    assert bundled.teacher_folder().name == "tiny"
    plan = bundled.plan()
    assert (plan["teacher_steps"], plan["num_steps"], plan["k"], plan["guidance_scale"]) == (4, 2, 2, 1.0)
    nxt = load_config("tiny_distill", ["name=tiny-distill2", f"teacher={teacher}", "distill.num_steps=2"])
    assert nxt["teacher"] == str(teacher) and nxt["distill"]["num_steps"] == 2
    with pytest.raises(TrainConfigError, match="multiple of num_steps"):
        recipe_for(load_config("tiny_distill", [f"teacher={teacher}", "distill.num_steps=3"])).plan()
    with pytest.raises(TrainConfigError, match="distill.num_steps"):
        load_config("tiny_distill", ["distill.num_steps=0"])


def test_target_is_two_guided_teacher_ddim_steps(shards, teacher):
    """For z_t at each student timestep (999 and 499 of the 2-step trailing grid), one student DDIM step
    with the recipe's target lands where two teacher DDIM steps (diffusers' scheduler, CFG 3.5 with
    all-zero audio tokens as the unconditional branch) land; the last one ends at DDIM's final alpha."""
    from diffusers import DDIMScheduler

    from lipsync.pipeline.components import load_folder
    from lipsync.pipeline.denoise import unet_input
    from lipsync.train.recipes import recipe_for

    recipe = recipe_for(_cfg(shards, teacher))
    model = recipe.build()
    batch = _batch(shards, n=2)
    prep = recipe.prepare(model, batch, torch.Generator().manual_seed(0), t=torch.tensor([999, 499]))
    target = recipe.target(prep)

    ref = load_folder(teacher)  # the teacher again, apart from the recipe's copy
    unet, enc = ref.unet.eval(), ref.audio_encoder.eval()
    g = ref.profile.guidance_scale
    assert g == 3.5
    m, f = prep["margin"], prep["frames"]
    base = ref.scheduler.config
    t_sched = DDIMScheduler.from_config({**base, "timestep_spacing": "trailing"})
    t_sched.set_timesteps(TEACHER_STEPS)
    s_sched = DDIMScheduler.from_config({**base, "timestep_spacing": "trailing"})
    s_sched.set_timesteps(STUDENT_STEPS)
    assert s_sched.timesteps.tolist() == [999, 499] and t_sched.timesteps.tolist() == [999, 749, 499, 249]
    with torch.no_grad():
        for i, t0 in enumerate((999, 499)):
            feats = torch.stack([enc.input_features(a) for a in batch["audio"][i:i + 1]])
            tokens = enc(feats, m, m + f)
            z = prep["zt"][i:i + 1].clone()
            cond_parts = [prep[k][i:i + 1] for k in ("mask", "masked", "ref")]
            for t in (t0, t0 - 250):
                inp = unet_input(z, *cond_parts)
                cond = unet(inp, torch.tensor([t]), tokens)
                uncond = unet(inp, torch.tensor([t]), torch.zeros_like(tokens))
                z = t_sched.step(uncond + g * (cond - uncond), t, z).prev_sample
            student = s_sched.step(target[i:i + 1], t0, prep["zt"][i:i + 1]).prev_sample
            assert torch.allclose(student, z, atol=2e-4, rtol=1e-4), (t0, (student - z).abs().max())
            assert (z - prep["zt"][i:i + 1]).abs().mean() > 1e-2  # the teacher moved: the check is not vacuous


def test_loss_falls_on_a_fixed_batch_and_the_teacher_stays(shards, teacher):
    from lipsync.train.recipes import recipe_for

    recipe = recipe_for(_cfg(shards, teacher))
    torch.manual_seed(0)
    model = recipe.build()
    before = {k: v.clone() for k, v in recipe.teacher.state_dict().items()}
    assert not any(p.requires_grad for p in recipe.teacher.parameters()) and not recipe.teacher.training
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and not any(p is q for p in params for q in recipe.teacher.parameters())
    opt = torch.optim.AdamW(params, lr=3e-5)
    batch = _batch(shards, n=1, seed=5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss, logs = recipe.loss(model, batch, torch.Generator().manual_seed(11))  # same t and noise each step
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert np.isfinite(logs["distill_mse"])
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in recipe.teacher.parameters())
    after = recipe.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The student moved away from its (teacher's) start.
    start = recipe.teacher.unet.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in model.unet.state_dict().items())


def test_export_loads_and_samples_with_its_own_steps(shards, teacher, tmp_path):
    """Two steps of the per-worker loop, export, ``LipSyncPipeline.from_pretrained``: the student samples
    with 2 DDIM steps on its trailing grid (t = 999, 499), one conditional pass each, no flag given."""
    from lipsync.models.weights import sha256_file
    from lipsync.pipeline import LipSyncPipeline
    from lipsync.train.export import export_checkpoint
    from lipsync.train.loop import LocalSession, run

    index = json.loads((teacher / "model_index.json").read_text())
    session = LocalSession({"train": str(shards / "train"), "val": str(shards / "val")},
                           checkpoint_root=str(tmp_path / "ckpt"))
    m = run(_cfg(shards, teacher), session, say=lambda msg: None)
    assert m["step"] == 2 and np.isfinite(m["distill_mse"]) and "val_loss" in m
    ckpt = sorted(glob.glob(str(tmp_path / "ckpt" / "checkpoint_*")))[-1]
    out = export_checkpoint(ckpt, str(tmp_path / "student"))
    for rel, digest in index["sha256"].items():  # the teacher's files are untouched
        assert sha256_file(teacher / rel) == digest

    saved = json.loads((tmp_path / "student" / "model_index.json").read_text())
    p = saved["profile"]
    assert (p["num_steps"], p["guidance_scale"], p["scheduler"]) == (STUDENT_STEPS, 1.0, "ddim")
    same = ("name", "resolution", "unet", "vae", "audio", "mask", "window", "overlap", "prediction_type",
            "reference_shift", "weights")
    assert {k: p[k] for k in same} == {k: index["profile"][k] for k in same}  # the teacher's model, its own sampler
    assert json.loads((tmp_path / "student" / "scheduler" / "scheduler_config.json").read_text())[
        "timestep_spacing"] == "trailing"
    state = torch.load(f"{ckpt}/state.pt", weights_only=False)["model"]

    pipe = LipSyncPipeline.from_pretrained(out, device="cpu")
    assert torch.equal(pipe.components.unet.state_dict()["conv_in.weight"], state["unet.conv_in.weight"])
    calls = []
    forward = pipe.components.unet.forward

    def counted(sample, timestep, tokens, **kw):
        t = int(torch.as_tensor(timestep).reshape(-1)[0])
        calls.append((int(sample.shape[0]), t, bool(tokens.abs().sum() > 0)))
        return forward(sample, timestep, tokens, **kw)

    pipe.components.unet.forward = counted
    clip = shards.parent / "corpus" / "clip_00000"
    res = pipe(str(tmp_path / "dub.mp4"), video=str(clip / "video.mp4"), audio=str(clip / "audio.wav"))
    assert res.frames >= 40 and (tmp_path / "dub.mp4").stat().st_size > 0
    steps = [t for _, t, _ in calls]
    assert calls and len(steps) % STUDENT_STEPS == 0
    assert steps[:STUDENT_STEPS] == [999, 499] and set(steps) == {999, 499}
    assert all(has_audio for _, _, has_audio in calls)  # no unconditional (all-zero tokens) pass
