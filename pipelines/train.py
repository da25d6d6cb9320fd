"""The driver of ``lipsync train``: Ray Train's ``TorchTrainer`` over the preprocessing shards.

``fit`` builds::

    TorchTrainer(train_loop_per_worker, train_loop_config={"cfg": ..., "log_dir": ..., "run_name": ...},
                 scaling_config=ScalingConfig(num_workers, use_gpu, resources_per_worker),
                 run_config=RunConfig(name, storage_path=save_dir,
                                      failure_config=FailureConfig(max_failures),
                                      checkpoint_config=CheckpointConfig(num_to_keep)),
                 datasets={"train": read_parquet(<shards>/train)},
                 dataset_config=DataConfig(datasets_to_split=["train"]))

Each worker reads its shard of ``train`` through ``ray.train.get_dataset_shard``; the validation
shards (``<shards>/val``, small) are read directly by rank 0 at the start (a Ray Data execution
more would cost worker processes and seconds for a few segments).

DDP comes from ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU). Resume: the same run
name under the same ``save_dir`` continues from its latest checkpoint (Ray Train restores it); a
run that exists is never overwritten silently (``resume=False`` on an existing run is an error).
After ``fit`` the latest checkpoint is exported to the inference folder format.

The per-worker loop itself is :func:`lipsync.train.loop.run`, which imports no Ray; this module
gives it a :class:`RaySession`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

from lipsync.media.uri import exists, join
from lipsync.train.config import TrainConfigError
from lipsync.train.loop import Session, run

SNAPSHOT = "checkpoint_manager_snapshot.json"


class RaySession(Session):
    """Ray Train (v2) inside a ``TorchTrainer`` worker."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def dataset(self, name: str):
        import ray.train

        try:
            return ray.train.get_dataset_shard(name)
        except (KeyError, AssertionError, ValueError):
            return None

    @contextlib.contextmanager
    def latest_checkpoint(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    def prepare(self, model):
        import ray.train.torch

        if self.world_size <= 1:
            return model.to(self.device)
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


def train_loop_per_worker(config: dict) -> None:
    """``TorchTrainer``'s per-worker function: ``config = {"cfg", "log_dir", "run_name", "val_files"}``."""
    run(config["cfg"], RaySession(), log_dir=config.get("log_dir"), run_name=config.get("run_name"),
        val_files=config.get("val_files"))


def _abs(uri: str) -> str:
    from lipsync.media.uri import is_remote, local_path

    return uri if is_remote(uri) else os.path.abspath(local_path(uri))


def _parquet_files(uri: str) -> list[str]:
    import fsspec

    from lipsync.media.uri import is_remote, storage_options

    if not is_remote(uri):
        if not os.path.isdir(uri):
            return []
        return sorted(os.path.join(uri, f) for f in os.listdir(uri) if f.endswith(".parquet"))
    fs, path = fsspec.core.url_to_fs(uri, **storage_options())
    if not fs.exists(path):
        return []
    proto = uri.split("://", 1)[0]
    return sorted(f"{proto}://{p}" for p in fs.ls(path, detail=False) if p.endswith(".parquet"))


def cpus_per_worker(cfg: dict, cluster_cpus: float, num_workers: int, use_gpu: bool) -> float:
    """'auto': 1 CPU per GPU worker; CPU workers share all but one CPU, in quarter CPUs, at most 1
    each. The CPU left is Ray Data's: its file-listing task takes a whole CPU and its budget is what
    the workers leave, so workers holding every CPU (or all but a fraction) hang the read forever
    (seen here with 2 x 0.75 CPU on a 2-CPU node; docs/developer_guide.md, "Ray traps"). A worker's torch threads are set
    separately (``train.torch_threads``), so a 0.5-CPU worker still computes on a whole core."""
    c = cfg["train"]["cpus_per_worker"]
    if c not in ("auto", None):
        return float(c)
    if use_gpu:
        return 1.0
    share = (cluster_cpus - 1.0) / max(num_workers, 1)
    return max(0.25, min(1.0, math.floor(share * 4) / 4))


def absolute_paths(cfg: dict) -> dict:
    """A copy of ``cfg`` whose local paths are absolute: workers do not share the driver's cwd."""
    import copy

    cfg = copy.deepcopy(cfg)
    fix = lambda v: _abs(str(v)) if v else v  # noqa: E731
    cfg["init_from"] = fix(cfg["init_from"])
    cfg["syncnet"] = [fix(v) for v in cfg["syncnet"]] if isinstance(cfg["syncnet"], list) else fix(cfg["syncnet"])
    shards = cfg["data"]["shards"]
    cfg["data"]["shards"] = [fix(v) for v in shards] if isinstance(shards, list) else fix(shards)
    for k in ("trepa_weights", "lpips_vgg_weights", "lpips_lin_weights"):
        cfg["loss"][k] = fix(cfg["loss"][k])
    cfg["debug"]["crash_marker"] = fix(cfg["debug"]["crash_marker"])
    return cfg


def shard_files(data: dict) -> tuple[list[str], list[str]]:
    """The train and val Parquet files of ``data.shards``: one folder, or a list of folders (a mix:
    read together; a folder listed twice counts twice in training, once in validation)."""
    folders = [_abs(str(v)) for v in (data["shards"] if isinstance(data["shards"], list) else [data["shards"]])]
    train_files, val_files = [], []
    for shards in folders:
        files = _parquet_files(join(shards, data["train_split"]))
        if not files:
            raise TrainConfigError(f"{join(shards, data['train_split'])}: no Parquet shards "
                                   "(run `lipsync preprocess` first)")
        train_files += files
        if data["val_split"]:
            val_files += [f for f in _parquet_files(join(shards, data["val_split"])) if f not in val_files]
    return train_files, val_files


def fit(cfg: dict, save_dir: str, log_dir: str | None = None, resume: bool = False, num_workers: int = 1,
        use_gpu: bool = False, export_dir: str | None = None, say=None) -> dict:
    """Train ``cfg`` on the Ray instance this process is connected to and export the result.
    Returns {"metrics", "checkpoint", "export", "seconds"}."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    say = say or (lambda msg: print(msg, flush=True))
    if not ray.is_initialized():
        raise RuntimeError("fit needs a Ray connection: call ray.init() first")
    t0 = time.perf_counter()
    cfg = absolute_paths(cfg)
    d = cfg["data"]
    if not d["shards"]:
        raise TrainConfigError("data.shards is not set: the folder `lipsync preprocess` wrote")
    train_files, val_files = shard_files(d)
    if not val_files:
        say(f"note: no validation shards for data.shards={d['shards']}: no validation loss")
    total = ray.cluster_resources()
    if use_gpu and float(total.get("GPU", 0)) < num_workers:
        raise TrainConfigError(f"--use_gpu with {num_workers} worker(s) but the cluster has "
                               f"{float(total.get('GPU', 0)):g} GPU(s)")
    name = cfg["name"]
    save_dir = _abs(save_dir)
    run_dir = join(save_dir, name)
    existing = exists(join(run_dir, SNAPSHOT))
    if existing and not resume:
        raise TrainConfigError(f"{run_dir}: a run named {name!r} already exists; pass --resume to continue it "
                               "from its latest checkpoint, or choose another --save_dir or name")
    if resume and not existing:
        say(f"note: nothing to resume in {run_dir}: starting a new run")
    cpw = cpus_per_worker(cfg, float(total.get("CPU", 0)), num_workers, use_gpu)
    resources = {"CPU": cpw, **({"GPU": 1} if use_gpu else {})}
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the datasets keep a copy of the context: no bars in the workers' logs
    try:
        datasets = {d["train_split"]: ray.data.read_parquet(train_files)}
    finally:
        ctx.enable_progress_bars = bars
    t = cfg["train"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "log_dir": _abs(log_dir) if log_dir else None, "run_name": name,
                           "val_files": val_files},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=save_dir,
                             failure_config=FailureConfig(max_failures=int(t["max_failures"])),
                             checkpoint_config=CheckpointConfig(num_to_keep=int(t["keep_checkpoints"]))),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[d["train_split"]]),
    )
    say(f"train: recipe {cfg['recipe']}, run {name!r} in {run_dir}, {num_workers} worker(s) x "
        f"{cpw:g} CPU{' + 1 GPU' if use_gpu else ''}, {len(train_files)} train shard file(s), "
        f"{len(val_files)} val")
    # A failed worker group's survivors sit in a collective that never completes, so closing their
    # process group waits out Ray's timeout (30 s by default) before the restart; the variable is
    # one Ray Train hands from the driver to its controller.
    env_key = "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"
    old_env = os.environ.get(env_key)
    if t["pg_shutdown_timeout_s"] is not None:
        os.environ[env_key] = str(int(t["pg_shutdown_timeout_s"]))
    try:
        result = trainer.fit()
    finally:
        if t["pg_shutdown_timeout_s"] is not None:
            if old_env is None:
                os.environ.pop(env_key, None)
            else:
                os.environ[env_key] = old_env
    if result.error is not None:
        raise result.error
    ckpt = result.checkpoint
    out = {"metrics": dict(result.metrics or {}), "checkpoint": ckpt.path if ckpt else None, "export": None}
    if ckpt is not None:
        from lipsync.train.export import export_checkpoint
        from lipsync.train.recipes import recipe_for

        target = export_dir or cfg["export_dir"] or recipe_for(cfg).default_export_dir(run_dir)
        with ckpt.as_directory() as local:
            out["export"] = export_checkpoint(local, target, cfg)
        say(f"exported -> {out['export']}")
    out["seconds"] = time.perf_counter() - t0
    return out
