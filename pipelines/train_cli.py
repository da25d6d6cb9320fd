"""``lipsync train``: a training recipe on Ray Train. Registered with ``lipsync`` through the
``lipsync.commands`` entry point ``train = pipelines.train_cli:add_parsers`` (pyproject.toml);
nothing here imports Ray until the command runs."""

from __future__ import annotations

import argparse

from lipsync.options import bool_flag

DESCRIPTION = """\
Train one recipe (lipsync/configs/train/*.yaml, by name or path) with Ray Train:
TorchTrainer workers (DDP: gloo on CPU, NCCL on GPU) read the Parquet shards that
`lipsync preprocess` wrote (data.shards in the config). Checkpoints go to <save_dir>/<name>/
(kept: train.keep_checkpoints); a killed worker is recovered from the latest checkpoint
(train.max_failures); --resume continues an existing run where it stopped. TensorBoard scalars go
to <log_dir>/<name>/. At the end the model is exported to <save_dir>/<name>/model (a folder that
`lipsync generate --checkpoint_dir` loads; the SyncNet recipe writes <save_dir>/<name>/syncnet).

Order for a new model: vae -> syncnet -> unet_stage1 (init_from: the vae export) ->
unet_stage2 (init_from: the stage-1 export, syncnet: the SyncNet export). Then, for speed, distill
(a 2-4 step student of a trained UNet: teacher = its export; chain rounds with
--set teacher=<student export> --set distill.num_steps=N/2).
"""


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe: a shipped one by name (e.g. unet_stage1, see lipsync/configs/train/) or a YAML file")
    p.add_argument("--log_dir", default="logs", help="TensorBoard logs go to <log_dir>/<name>/ (default logs/)")
    p.add_argument("--save_dir", default="checkpoints",
                   help="checkpoints and the export go to <save_dir>/<name>/ (local or s3://; default checkpoints/)")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=bool_flag, metavar="True|False",
                   help="continue the run <save_dir>/<name> from its latest checkpoint (--resume, --resume True); "
                        "without it an existing run is an error")
    p.add_argument("--num_workers", type=int, default=1, help="training workers (DDP processes; default 1)")
    p.add_argument("--use_gpu", action="store_true", help="one GPU per worker (NCCL); default CPU (gloo)")
    p.add_argument("--data", default=None, nargs="+",
                   help="override data.shards: the folder `lipsync preprocess` wrote, or several (a mix: read "
                        "together; a folder given twice counts twice)")
    p.add_argument("--name", default=None, help="run name (default: the config's name, else its file name)")
    p.add_argument("--export_dir", default=None, help="where the final model goes (default <save_dir>/<name>/model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=200 (repeatable)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://...); default: the local Ray instance if one "
                        "runs, else start one")
    p.set_defaults(func=cmd_train)


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a recipe (VAE, SyncNet, UNet stage 1/2, step distillation) on Ray Train",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_arguments(p)


def data_override(folders: list[str]) -> str:
    """The ``--set`` form of ``--data``: one folder, or a YAML list for several (JSON strings are YAML
    scalars, so any path survives the override parser)."""
    import json

    if len(folders) == 1:
        return f"data.shards={folders[0]}"
    return "data.shards=[" + ", ".join(json.dumps(str(f)) for f in folders) + "]"


def cmd_train(args) -> int:
    from lipsync.train.config import load_config

    overrides = list(args.set)
    if args.data:
        overrides.append(data_override(args.data))
    if args.name:
        overrides.append(f"name={args.name}")
    cfg = load_config(args.config, overrides)
    if args.num_workers < 1:
        raise ValueError("--num_workers must be >= 1")
    from pipelines.cluster import connect
    from pipelines.train import fit

    connect(args.address)
    out = fit(cfg, args.save_dir, args.log_dir, bool(args.resume), args.num_workers, args.use_gpu, args.export_dir)
    m = out["metrics"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float) and k in
                      ("loss", "val_loss", "s_per_step"))
    print(f"train: done at step {m.get('step')} ({shown}) in {out['seconds']:.0f} s; checkpoint {out['checkpoint']}; "
          f"model {out['export']}")
    return 0


def main_train(argv: list[str] | None = None) -> int:
    """``jobs/train.py``: the same command, for ``ray job submit``."""
    from lipsync.cli import job_main

    return job_main("jobs/train.py", DESCRIPTION, train_arguments, argv)
