"""The bundled model's training chain as shipped recipes (lipsync/configs/train/tiny_*.yaml): every stage
of `make tiny-model-teacher` (and `make tiny-model-real`) resolves to exactly the config the Makefile's
earlier `lipsync train` lines (a generic recipe + up to eleven ``--set`` overrides) gave, and `make
tiny-model` is that chain followed by the distillation of its last export. Config loading only:
nothing trains here."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The `lipsync train` lines of the Makefile before the recipes (commit bbc083f), verbatim but for the
# placeholders: {A} its $(TRAIN_ARGS), {R} the real-people lines' paths, {T} its TRAIN folder.
_ARGS = "--data {T}/shards --save_dir {T}/ckpt --log_dir {T}/logs"
OLD_TINY = [
    "--config lipsync/configs/train/vae.yaml {A} --set train.max_steps=500",
    "--config lipsync/configs/train/syncnet.yaml {A} --set syncnet_config.num_frames=5 --name tiny-syncnet5",
    "--config lipsync/configs/train/unet_stage1.yaml {A} "
    "--set init_from={T}/ckpt/tiny-vae/model --set train.grad_accum=1 --set train.warmup_steps=50 "
    "--set train.torch_threads=2 --set train.max_steps=4000",
    "--config lipsync/configs/train/unet_stage1.yaml {A} --name tiny-unet-mouth "
    "--set init_from={T}/ckpt/tiny-unet-stage1/model --set train.grad_accum=1 --set train.warmup_steps=50 "
    "--set train.torch_threads=2 --set train.checkpoint_every=500 --set train.max_steps=3500 --set loss.mouth_weight=9",
    "--config lipsync/configs/train/syncnet.yaml {A} --set train.torch_threads=2",
    "--config lipsync/configs/train/unet_stage2.yaml {A} "
    "--set init_from={T}/ckpt/tiny-unet-mouth/model --set syncnet=[{T}/ckpt/tiny-syncnet/syncnet] "
    "--set loss.sync_windows=[16] --set loss.sync=0.1 --set loss.mouth_weight=9 --set train.lr=1.0e-4 "
    "--set train.warmup_steps=50 --set train.torch_threads=2 --set train.max_steps=1500",
    "--config lipsync/configs/train/unet_stage2.yaml {A} --name tiny-unet-reg "
    "--set init_from={T}/ckpt/tiny-unet-stage2/model --set syncnet=[{T}/ckpt/tiny-syncnet/syncnet] "
    "--set loss.sync_windows=[16] --set loss.sync=0.1 --set loss.mouth_weight=9 --set train.lr=1.0e-4 "
    "--set train.warmup_steps=50 --set train.torch_threads=2 --set train.max_steps=900 --set train.trainable=[.]",
    "--config lipsync/configs/train/unet_stage2.yaml {A} --name tiny-unet-reg2 "
    "--set init_from={T}/ckpt/tiny-unet-reg/model --set syncnet=[{T}/ckpt/tiny-syncnet/syncnet] "
    "--set loss.sync_windows=[16] --set loss.sync=0.15 --set loss.mouth_weight=9 --set train.lr=1.0e-4 "
    "--set train.warmup_steps=50 --set train.torch_threads=2 --set train.max_steps=900 --set train.trainable=[.]",
]
_RARGS = "--save_dir {T}/ckpt --log_dir {T}/logs"
OLD_REAL = [
    "--config lipsync/configs/train/real_vae_decoder.yaml {R} "
    "--data {T}/shards_real {T}/shards_synreal --set init_from=lipsync/assets/models/tiny",
    "--config lipsync/configs/train/real_unet.yaml {R} "
    "--data {T}/shards_real {T}/shards_real {T}/shards_synreal {T}/shards_base --set init_from={T}/ckpt/tiny-vae-real/model",
    "--config lipsync/configs/train/real_syncnet5.yaml {R} --data {T}/shards_real {T}/shards_real {T}/shards_synreal",
]
TINY_RECIPES = ["tiny_vae", "tiny_syncnet5", "tiny_unet_stage1", "tiny_unet_mouth", "tiny_syncnet16",
                "tiny_unet_stage2", "tiny_unet_reg", "tiny_unet_reg2"]
RUN_NAMES = ["tiny-vae", "tiny-syncnet5", "tiny-unet-stage1", "tiny-unet-mouth", "tiny-syncnet",
             "tiny-unet-stage2", "tiny-unet-reg", "tiny-unet-reg2"]


def _parser() -> argparse.ArgumentParser:
    from pipelines.train_cli import train_arguments

    p = argparse.ArgumentParser()
    train_arguments(p)
    return p


def resolved(argv: list[str]) -> tuple[dict, str]:
    """(the config, save_dir) that `lipsync train ARGV` runs: the overrides built as cmd_train builds them."""
    from pipelines.train_cli import data_override
    from lipsync.train.config import load_config

    args = _parser().parse_args(argv)
    overrides = list(args.set)
    if args.data:
        overrides.append(data_override(args.data))
    if args.name:
        overrides.append(f"name={args.name}")
    return load_config(args.config, overrides), args.save_dir


def _old(lines: list[str], train: str) -> list[tuple[dict, str]]:
    return [resolved(shlex.split(line.replace("{A}", _ARGS).replace("{R}", _RARGS).replace("{T}", train)))
            for line in lines]


def _make_train_lines(target: str, *assignments: str) -> list[list[str]]:
    """The `lipsync train` commands `make -n TARGET` prints, as argv lists after `train`."""
    out = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), target, *assignments], capture_output=True,
                         text=True, check=True).stdout.replace("\\\n", " ")
    return [shlex.split(line)[2:] for line in out.splitlines() if "lipsync train " in line]


def test_every_stage_is_a_shipped_recipe():
    from lipsync.configs import recipe_path, shipped_recipes
    from lipsync.train.config import load_config

    assert set(TINY_RECIPES) <= set(shipped_recipes())
    for recipe, name in zip(TINY_RECIPES, RUN_NAMES):
        assert recipe_path(recipe).parent.name == "train"
        assert load_config(recipe)["name"] == name


@pytest.mark.parametrize("stage", range(len(TINY_RECIPES)), ids=TINY_RECIPES)
def test_recipe_alone_is_the_old_makefile_stage(stage):
    """A recipe with only the Makefile's --data / --save_dir (its paths are the Makefile's defaults)
    equals the old generic recipe + --set overrides, run name included."""
    old_cfg, old_save = _old([OLD_TINY[stage]], "out/train")[0]
    new_cfg, new_save = resolved(["--config", TINY_RECIPES[stage], "--data", "out/train/shards",
                                  "--save_dir", "out/train/ckpt"])
    assert new_cfg == old_cfg and new_save == old_save
    assert new_cfg["name"] == RUN_NAMES[stage]
    # The shipped file by itself needs no flag at all.
    from lipsync.train.config import load_config

    assert load_config(TINY_RECIPES[stage]) == old_cfg


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("train", ["out/train", "/data/elsewhere"])
def test_makefile_tiny_model_is_the_old_chain(train):
    """`make -n tiny-model-teacher` calls the eight recipes in order, and each resolves to the old
    line's config (also with TRAIN moved: the Makefile passes the earlier stages' exports)."""
    lines = _make_train_lines("tiny-model-teacher", f"TRAIN={train}")
    assert [argv[argv.index("--config") + 1] for argv in lines] == TINY_RECIPES
    assert all(len(argv) <= 14 for argv in lines)  # paths only: at most two --set, for init_from and syncnet
    new = [resolved(argv) for argv in lines]
    assert new == _old(OLD_TINY, train)
    assert [cfg["name"] for cfg, _ in new] == RUN_NAMES


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("train", ["out/train", "/data/elsewhere"])
def test_makefile_tiny_model_is_the_chain_then_its_distillation(train):
    """`make -n tiny-model`: the teacher's chain, then `tiny_distill` with that chain's last export as
    the teacher, on the faces-kit's talking clips fetched by the manifest; the student is bundled."""
    lines = _make_train_lines("tiny-model", f"TRAIN={train}")
    assert [argv[argv.index("--config") + 1] for argv in lines] == TINY_RECIPES + ["tiny_distill"]
    cfg, save = resolved(lines[-1])
    assert cfg["teacher"] == f"{train}/ckpt/tiny-unet-reg2/model" and save == f"{train}/ckpt"
    assert cfg["data"]["shards"] == f"{train}/shards_real" and cfg["name"] == "tiny-distill"
    if train == "out/train":  # the shipped recipe's own paths are the Makefile's
        from lipsync.train.config import load_config

        assert cfg == load_config("tiny_distill")
    out = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), "tiny-model", f"TRAIN={train}", "KIT_MIRROR=/kit"],
                         capture_output=True, text=True, check=True).stdout
    assert f"data fetch --mirror /kit -q --kind talking --split train --link {train}/kit/talking" in out
    assert f"cp -r {train}/ckpt/tiny-distill/model/* lipsync/assets/models/tiny/" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_tiny_model_real_unchanged():
    """As before, but started from the teacher's export: the bundled model is now its distilled student."""
    lines = _make_train_lines("tiny-model-real", "TRAIN=out/train")
    old = [line.replace("init_from=lipsync/assets/models/tiny", "init_from={T}/ckpt/tiny-unet-reg2/model")
           for line in OLD_REAL]
    assert [resolved(argv) for argv in lines] == _old(old, "out/train")
