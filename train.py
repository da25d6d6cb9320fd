"""Compatibility entry point of the original documentation: prepare a dataset and train on it, in one go,
on Ray::

    python train.py --config configs/model_config.yaml --log_dir logs/ --save_dir checkpoints/ --resume False

The config (``configs/model_config.yaml`` documents it) names the dataset, laid out as
``dataset/{train,val}/{videos,audios}/`` (videos and audios paired by file stem), the shards folder, the
``lipsync preprocess`` options and a training recipe. This runs ``lipsync preprocess`` (Ray Data; a rerun
skips finished clips) and then ``lipsync train`` (Ray Train) with that recipe: the same code as those
commands (their ``jobs/`` entry points). Extra flags: ``--max_steps N`` and ``--set key=value`` override
the recipe, ``--skip_preprocess`` trains on the shards as they are, and ``--num_workers``, ``--use_gpu``,
``--address`` are those of ``lipsync train``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from lipsync.options import bool_flag

HERE = Path(__file__).resolve().parent
SECTIONS = {"dataset": ("train", "val", "shards"), "preprocess": None, "training": None}


class ConfigError(ValueError):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/model_config.yaml",
                   help="the dataset + recipe config (default configs/model_config.yaml)")
    p.add_argument("--log_dir", default="logs", help="TensorBoard logs go to <log_dir>/<name>/ (default logs/)")
    p.add_argument("--save_dir", default="checkpoints",
                   help="checkpoints and the exported model go to <save_dir>/<name>/ (default checkpoints/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=bool_flag, metavar="True|False",
                   help="continue the run <save_dir>/<name> from its latest checkpoint (default False: an "
                        "existing run is an error)")
    p.add_argument("--max_steps", type=int, default=None, help="override the recipe's train.max_steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one recipe value, e.g. --set train.lr=5e-5 (repeatable)")
    p.add_argument("--skip_preprocess", action="store_true",
                   help="train on the shards folder as it is (no lipsync preprocess pass)")
    p.add_argument("--num_workers", type=int, default=1, help="training workers (default 1)")
    p.add_argument("--use_gpu", action="store_true", help="one GPU per worker (default CPU)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    return p


def _path(value, field: str, source: str) -> str:
    """A path of the config: as given if it exists (relative to the working directory) or is a URI; a
    relative path missing there but present in this repository (lipsync/assets/models/tiny) from there."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {field} must be a path, got {value!r}")
    if "://" in value or os.path.isabs(value) or os.path.exists(value):
        return value
    in_repo = HERE / value
    return str(in_repo) if in_repo.exists() else value


def load(path: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({type(err).__name__})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with dataset, preprocess and training")
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(SECTIONS)})")
    ds = data.get("dataset") or {}
    for key in ds:
        if key not in SECTIONS["dataset"]:
            raise ConfigError(f"{path}: unknown key dataset.{key} (known: train, val, shards)")
    if not ds.get("train") or not ds.get("shards"):
        raise ConfigError(f"{path}: dataset.train and dataset.shards are required")
    if not isinstance(data.get("preprocess") or {}, dict):
        raise ConfigError(f"{path}: preprocess must be a mapping of lipsync preprocess flags")
    if not data.get("training"):
        raise ConfigError(f"{path}: training is required (a recipe mapping, or a shipped recipe's name)")
    return data


def dataset_root(ds: dict, source: str) -> str:
    """The folder preprocess reads: dataset.train and dataset.val are its train/ and val/ folders."""
    train = str(ds["train"]).rstrip("/")
    root, name = os.path.split(train)
    if name != "train":
        raise ConfigError(f"{source}: dataset.train must be a folder named train (<dataset>/train/videos, "
                          f"<dataset>/train/audios), got {train!r}")
    val = ds.get("val")
    if val and os.path.normpath(str(val).rstrip("/")) != os.path.normpath(os.path.join(root, "val")):
        raise ConfigError(f"{source}: dataset.val must be the val folder beside dataset.train "
                          f"({os.path.join(root, 'val')!r}), got {val!r}")
    return root or "."


def preprocess_argv(data: dict, source: str) -> list[str]:
    ds = data["dataset"]
    root = dataset_root(ds, source)
    train = str(ds["train"])
    if "://" not in train and not os.path.isdir(train):
        raise ConfigError(f"{train}: no such folder (from {source}: dataset.train). Lay the clips out as "
                          "<dataset>/train/videos/NAME.mp4 + <dataset>/train/audios/NAME.wav (and val/ likewise), "
                          "or point dataset.train and dataset.val at yours")
    argv = ["--input", root, "--output", str(ds["shards"])]
    for key, value in (data.get("preprocess") or {}).items():
        if key in ("input", "output"):
            raise ConfigError(f"{source}: preprocess.{key}: set dataset.train / dataset.shards instead")
        if value is True:
            argv.append(f"--{key}")
        elif value not in (False, None):
            argv += [f"--{key}", str(value)]
    return argv


def recipe_file(data: dict, source: str, folder: str) -> str:
    """The recipe for ``lipsync train --config``: a shipped one's name (or a file) as given, or the
    config's inline recipe checked here (errors name this config) and written to ``folder``."""
    import yaml

    from lipsync.train.config import from_dict

    training = data["training"]
    if isinstance(training, str):
        return training if "/" not in training else _path(training, "training", source)
    if not isinstance(training, dict):
        raise ConfigError(f"{source}: training must be a recipe mapping or a recipe name")
    recipe = dict(training)
    recipe.setdefault("name", Path(source).stem)
    for key in ("init_from", "trepa_weights"):
        if recipe.get(key):
            recipe[key] = _path(recipe[key], f"training.{key}", source)
    if recipe.get("syncnet"):
        s = recipe["syncnet"]
        recipe["syncnet"] = ([_path(v, "training.syncnet", source) for v in s] if isinstance(s, list)
                             else _path(s, "training.syncnet", source))
    from_dict(recipe, f"{source}: training")  # unknown keys and bad values are reported against this file
    out = os.path.join(folder, f"{recipe['name']}.yaml")
    Path(out).write_text(yaml.safe_dump(recipe, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from lipsync.train.config import TrainConfigError

    with tempfile.TemporaryDirectory(prefix="lipsync-recipe-") as tmp:
        try:  # the whole config is checked before any work starts
            data = load(args.config)
            pre = [] if args.skip_preprocess else preprocess_argv(data, args.config)
            config = recipe_file(data, args.config, tmp)
        except (ConfigError, TrainConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        from pipelines.preprocess_cli import main_preprocess
        from pipelines.train_cli import main_train

        if not args.skip_preprocess:
            print(f"train.py: lipsync preprocess {' '.join(pre)}", flush=True)
            rc = main_preprocess(pre)
            if rc == 3:
                print("train.py: some clips failed (see the shards' report.parquet); training on the rest",
                      file=sys.stderr)
            elif rc != 0:
                return rc
        cmd = ["--config", config, "--data", str(data["dataset"]["shards"]), "--log_dir", args.log_dir,
               "--save_dir", args.save_dir, "--resume", str(bool(args.resume)),
               "--num_workers", str(args.num_workers)]
        cmd += ["--use_gpu"] if args.use_gpu else []
        cmd += ["--address", args.address] if args.address else []
        for item in list(args.set) + ([f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []):
            cmd += ["--set", item]
        print(f"train.py: lipsync train {' '.join(cmd)}", flush=True)
        return main_train(cmd)


if __name__ == "__main__":
    sys.exit(main())
