"""Training: every recipe in one process (no Ray), and a 2-worker TorchTrainer run (CPU, gloo) that
lowers the loss, survives a killed worker (FailureConfig), checkpoints, resumes and exports."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_fixtures import ray_session  # noqa: F401
from shard_helpers import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards of 3 synthetic 2 s clips (48-frame segments): 2 train, 1 val."""
    return make_shards(tmp_path_factory.mktemp("train"), 3, seed=200)


def _cfg(recipe: str, shards, **over):
    from lipsync.train.config import from_dict

    data = {"shards": str(shards), "batch_size": 1, "window": 8, "val_batches": 1, **over.pop("data", {})}
    train = {"max_steps": 2, "log_every": 1, "checkpoint_every": 2, "lr": 1e-4, **over.pop("train", {})}
    return from_dict({"recipe": recipe, "name": recipe, "data": data, "train": train, **over})


def _local(cfg, shards, root):
    from lipsync.train.loop import LocalSession, run

    session = LocalSession({"train": str(shards / "train"), "val": str(shards / "val")},
                           checkpoint_root=str(root / "ckpt"))
    return run(cfg, session, say=lambda m: None), session


def test_batches(shards):
    from lipsync.train.data import WindowSpec, read_segments, reference_start, sample_batch

    segs = read_segments(str(shards / "train"))
    assert len(segs) == 2 and segs[0].num_frames == 48 and segs[0].margin_frames == 12
    b = sample_batch(segs, WindowSpec(frames=16, batch_size=3, reference=True, audio_margin=12),
                     np.random.default_rng(0))
    assert b["frames"].shape == (3, 16, 3, 96, 96) and b["ref"].shape == (3, 16, 3, 96, 96)
    assert b["audio"].shape == (3, (16 + 24) * 640)
    assert float(b["frames"].min()) >= -1 and float(b["frames"].max()) <= 1
    seg = next(x for x in segs if b["clip"][0] == f"{x.clip_id}#{x.index}")
    assert np.array_equal(b["audio"][0].numpy(), seg.audio_window(int(b["start"][0]), 16, 12))
    # The reference window never overlaps the target window when the segment allows it.
    rng = np.random.default_rng(0)
    assert all(abs(reference_start(rng, 48, 16, st) - st) >= 16 for st in range(0, 33))


def test_recipes_in_process(shards, tmp_path):
    """Each recipe trains two steps, checkpoints and exports to a folder the inference code loads."""
    from lipsync.pipeline.components import load_components
    from lipsync.profiles import load_profile
    from lipsync.train.export import export_checkpoint

    cfg = _cfg("vae", shards, data={"window": 1, "batch_size": 4}, train={"lr": 1e-3})
    m, s = _local(cfg, shards, tmp_path / "vae")
    assert m["step"] == 2 and np.isfinite(m["loss"]) and "val_loss" in m
    vae_dir = export_checkpoint(glob.glob(str(tmp_path / "vae/ckpt/checkpoint_*"))[-1], str(tmp_path / "vae_model"))
    comps = load_components(load_profile("tiny"), vae_dir)
    assert comps.scaling_factor != 1.0 and comps.vae is not None  # 1 / std of the latents

    m, s = _local(_cfg("unet_stage1", shards, init_from=vae_dir), shards, tmp_path / "s1")
    assert m["step"] == 2 and np.isfinite(m["noise_mse"])
    s1_dir = export_checkpoint(glob.glob(str(tmp_path / "s1/ckpt/checkpoint_*"))[-1], str(tmp_path / "s1_model"))
    state = torch.load(glob.glob(str(tmp_path / "s1/ckpt/checkpoint_*/state.pt"))[-1], weights_only=False)
    loaded = load_components(load_profile("tiny"), s1_dir)
    key = "unet.conv_in.weight"
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], state["model"][key])
    assert loaded.scaling_factor == comps.scaling_factor  # the VAE (and its scale) came from init_from

    syncnet = pytest.importorskip("lipsync.models.syncnet")
    nets = []
    for n in (5, 8):  # a short and a whole-window SyncNet: the multi-scale sync loss
        net = syncnet.SyncNet(syncnet.SyncNetConfig(num_frames=n))
        net.save_pretrained(tmp_path / f"syncnet{n}")
        nets.append(str(tmp_path / f"syncnet{n}"))
    m, s = _local(_cfg("unet_stage2", shards, init_from=s1_dir, syncnet=nets,
                       loss={"sync_windows": [5, 8]}), shards, tmp_path / "s2")
    assert m["step"] == 2 and all(np.isfinite(m[k]) for k in ("noise_mse", "sync", "temporal", "trepa"))
    assert "lpips" not in m  # no VGG weights: skipped
    export_checkpoint(glob.glob(str(tmp_path / "s2/ckpt/checkpoint_*"))[-1], str(tmp_path / "s2_model"))
    assert load_components(load_profile("tiny"), tmp_path / "s2_model").unet is not None

    m, s = _local(_cfg("syncnet", shards, syncnet_config={"num_frames": 5}, data={"batch_size": 8},
                       train={"lr": 1e-3}), shards, tmp_path / "sn")
    assert m["step"] == 2 and 0 <= m["accuracy"] <= 1
    out = export_checkpoint(glob.glob(str(tmp_path / "sn/ckpt/checkpoint_*"))[-1], str(tmp_path / "sn_model"))
    assert syncnet.SyncNet.from_pretrained(out).config.num_frames == 5


def test_cli_resume_flag():
    import argparse

    from pipelines.train_cli import train_arguments

    p = argparse.ArgumentParser()
    train_arguments(p)
    assert p.parse_args(["--config", "x.yaml"]).resume is False
    assert p.parse_args(["--config", "x.yaml", "--resume"]).resume is True
    assert p.parse_args(["--config", "x.yaml", "--resume", "False"]).resume is False  # the seed's spelling
    assert p.parse_args(["--config", "x.yaml", "--resume", "True"]).resume is True


def test_recipe_configs_load_and_bad_ones_say_why(tmp_path):
    from lipsync.train.config import TrainConfigError, load_config

    root = Path(__file__).resolve().parents[1] / "lipsync" / "configs" / "train"
    from lipsync.train.config import RECIPES

    for f in sorted(root.glob("*.yaml")):
        cfg = load_config(f, ["train.max_steps=7"])
        assert cfg["recipe"] in RECIPES and cfg["train"]["max_steps"] == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: vae\ntrain: {max_stepz: 3}\n")
    with pytest.raises(TrainConfigError, match=r"bad.yaml: unknown key 'train.max_stepz'"):
        load_config(bad)
    with pytest.raises(TrainConfigError, match="use key.sub=value"):
        load_config(root / "vae.yaml", ["train.max_steps"])
    with pytest.raises(TrainConfigError, match="recipe must be one of"):
        load_config(root / "vae.yaml", ["recipe=gan"])


def test_a_mix_of_shard_folders(shards, tmp_path):
    """--data with several folders: read together, a folder given twice counts twice in training."""
    from lipsync.train.config import TrainConfigError, load_config
    from pipelines.train import shard_files
    from pipelines.train_cli import data_override

    root = Path(__file__).resolve().parents[1] / "lipsync" / "configs" / "train"
    shards = str(shards)
    cfg = load_config(root / "vae.yaml", [data_override([shards, shards])])
    assert cfg["data"]["shards"] == [shards, shards]
    one_train, one_val = shard_files({**cfg["data"], "shards": shards})
    train, val = shard_files(cfg["data"])
    assert train == one_train * 2 and val == one_val
    with pytest.raises(TrainConfigError, match="no Parquet shards"):
        shard_files({**cfg["data"], "shards": [shards, str(tmp_path / "empty")]})


def _states(run_dir) -> dict[int, dict]:
    out = {}
    for f in glob.glob(os.path.join(run_dir, "checkpoint_*", "train_state.json")):
        s = json.loads(open(f).read())
        out[int(s["step"])] = s["metrics"]
    return out


def test_two_workers_recover_and_resume(shards, tmp_path, ray_session):  # noqa: F811
    from lipsync.pipeline.components import load_components
    from lipsync.profiles import load_profile
    from lipsync.train.config import TrainConfigError
    from pipelines.train import fit

    marker = tmp_path / "crashed"
    cfg = _cfg("vae", shards, name="vae-ddp", data={"window": 1, "batch_size": 2, "val_batches": 4},
               train={"max_steps": 6, "checkpoint_every": 2, "lr": 1e-3, "max_failures": 2, "keep_checkpoints": 5,
                      "pg_shutdown_timeout_s": 3},
               debug={"crash_at_step": 3, "crash_rank": 1, "crash_marker": str(marker)})
    logs: list[str] = []
    out = fit(cfg, str(tmp_path / "runs"), str(tmp_path / "logs"), resume=False, num_workers=2, say=logs.append)
    assert marker.exists()  # rank 1 died at step 3 ...
    states = _states(tmp_path / "runs" / "vae-ddp")
    assert sorted(states) == [2, 4, 6]
    assert states[4]["start_step"] == 2  # ... and the new worker group went on from the checkpoint of step 2
    assert states[6]["val_loss"] < states[2]["val_loss"]  # training lowers the (fixed-window) validation loss
    assert states[6]["loss"] < states[2]["loss"]
    assert out["metrics"]["step"] == 6 and os.listdir(tmp_path / "logs" / "vae-ddp")  # TensorBoard events
    comps = load_components(load_profile("tiny"), out["export"])
    assert comps.vae is not None and comps.unet is not None

    with pytest.raises(TrainConfigError, match="--resume"):  # an existing run is never restarted silently
        fit(cfg, str(tmp_path / "runs"), None, resume=False, num_workers=2, say=logs.append)
    cfg["train"]["max_steps"] = 8
    cfg["debug"]["crash_at_step"] = None
    out = fit(cfg, str(tmp_path / "runs"), None, resume=True, num_workers=2, say=logs.append)
    states = _states(tmp_path / "runs" / "vae-ddp")
    assert out["metrics"]["step"] == 8 and states[8]["start_step"] == 6  # the step counter continues


def test_cached_latents_equal_window_encoding(shards):
    """The UNet recipe's per-segment latent cache gives exactly what encoding the window gives
    (the inference code's conditioning), so caching changes no number."""
    from lipsync.train.config import from_dict
    from lipsync.train.data import WindowSpec, read_segments, sample_batch
    from lipsync.train.recipes import recipe_for

    cfg = from_dict({"recipe": "unet_stage1", "data": {"shards": str(shards), "window": 8}})
    recipe = recipe_for(cfg)
    recipe.build()
    batch = sample_batch(read_segments(str(shards / "train")), WindowSpec(8, 2, True, 12), np.random.default_rng(3))
    cached = recipe.conditioning(batch, batch["frames"])
    recipe.cfg["data"]["latent_cache_segments"] = 0
    direct = recipe.conditioning(batch, batch["frames"])
    assert cached[0].shape == (2, 4, 8, 24, 24) and cached[1].shape == (2, 1, 8, 24, 24)
    for a, b in zip(cached, direct):
        assert torch.allclose(a, b, atol=1e-5)


def test_mouth_weight_puts_the_noise_mse_on_the_mouth(shards):
    """loss.mouth_weight adds weight on the latents over the template's mouth; 0 keeps plain MSE."""
    from lipsync.face.align import TEMPLATE, TEMPLATE_INDICES
    from lipsync.face.mask import mouth_region
    from lipsync.train.config import from_dict
    from lipsync.train.data import WindowSpec, read_segments, sample_batch
    from lipsync.train.recipes import recipe_for

    m = mouth_region(96)
    corners = TEMPLATE[np.isin(TEMPLATE_INDICES, [61, 291])] * 96
    assert all(m[int(v), int(u)] == 1 for u, v in corners)  # the lips are inside
    eyes_chin = TEMPLATE[np.isin(TEMPLATE_INDICES, [33, 263, 152])] * 96
    assert all(m[int(v), int(u)] == 0 for u, v in eyes_chin)  # the eyes and the chin are not

    batch = sample_batch(read_segments(str(shards / "train")), WindowSpec(8, 1, True, 12), np.random.default_rng(3))
    logs = {}
    for mw in (0.0, 9.0):
        cfg = from_dict({"recipe": "unet_stage1", "data": {"shards": str(shards), "window": 8},
                         "loss": {"mouth_weight": mw}})
        recipe = recipe_for(cfg)
        torch.manual_seed(0)
        model = recipe.build()
        total, logs[mw] = recipe.loss(model, batch, torch.Generator().manual_seed(5))
        assert torch.isfinite(total)
    plain, weighted = logs[0.0], logs[9.0]
    assert "weighted_mse" not in plain and plain["noise_mse"] == pytest.approx(weighted["noise_mse"], rel=1e-5)
    share = float(recipe.mouth_map((24, 24)).mean())
    assert 0.05 < share < 0.25
    expect = (weighted["noise_mse"] + 9.0 * weighted["mouth_mse"] * share) / (1.0 + 9.0 * share)
    assert weighted["weighted_mse"] == pytest.approx(expect, rel=1e-4)
