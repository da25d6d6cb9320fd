"""The per-worker training loop, the same for every recipe.

:func:`run` knows nothing of Ray: ``pipelines/train.py`` calls it on each ``TorchTrainer`` worker
with a session that wraps Ray Train's per-worker API; a :class:`LocalSession` trains in one
process (tests, benchmarks).

Per step: ``grad_accum`` micro-batches (DDP gradient sync on the last only), AdamW, gradient
clipping (``grad_clip``), linear warm-up, AMP on GPU only (bf16 by default, fp16 with a grad
scaler). Every ``checkpoint_every`` steps and at the last step: a validation pass (the loss on
fixed windows of the ``val`` shards, on rank 0, which reads the whole val split), then ``report`` on every rank,
rank 0 with the checkpoint (``state.pt``: weights of the trainable module, optimizer, scheduler,
scaler, step; ``train_state.json``). A resumed or restarted run continues from the latest
checkpoint with the step counter where it was. TensorBoard scalars from rank 0 go to
``<log_dir>/<run name>/``.

Test hook: ``debug.crash_at_step`` makes rank ``debug.crash_rank`` exit abruptly after that step,
once (``debug.crash_marker`` records that it happened), to exercise ``FailureConfig``.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch

STATE_FILE = "state.pt"


class Session(abc.ABC):
    """What :func:`run` needs from its surroundings (``pipelines.train.RaySession`` / LocalSession)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def dataset(self, name: str):
        """The worker's shard of dataset ``name`` (or None)."""

    @contextlib.contextmanager
    def latest_checkpoint(self):
        """A local folder holding the checkpoint to resume from, or None."""
        yield None

    def prepare(self, model):
        return model

    @abc.abstractmethod
    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ...


@dataclass
class LocalSession(Session):
    """One process, no Ray: datasets are Parquet folders / tables / lists of segments; checkpoints
    are folders ``<checkpoint_root>/checkpoint_<step>``."""

    datasets: dict = field(default_factory=dict)
    checkpoint_root: str | None = None
    reports: list = field(default_factory=list)
    device: torch.device = torch.device("cpu")

    def dataset(self, name):
        return self.datasets.get(name)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        if not self.checkpoint_root or not os.path.isdir(self.checkpoint_root):
            yield None
            return
        found = sorted((d for d in os.listdir(self.checkpoint_root) if d.startswith("checkpoint_")),
                       key=lambda d: int(d.split("_")[-1]))
        yield os.path.join(self.checkpoint_root, found[-1]) if found else None

    def report(self, metrics, checkpoint_dir):
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.checkpoint_root:
            import shutil

            dest = os.path.join(self.checkpoint_root, f"checkpoint_{int(metrics['step']):08d}")
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)


def _amp(cfg: dict, device: torch.device):
    mode = cfg["train"]["amp"]
    if device.type != "cuda" or mode == "off":
        return None
    return torch.float16 if mode == "fp16" else torch.bfloat16


def _threads(cfg: dict) -> int:
    t = cfg["train"]["torch_threads"]
    if t != "auto":
        return max(1, int(t))
    c = cfg["train"]["cpus_per_worker"]
    return max(1, int(math.floor(float(c)))) if c not in ("auto", None) else 1


def run(cfg: dict, session: Session, log_dir: str | None = None, run_name: str | None = None,
        say=None, val_files: list[str] | None = None) -> dict:
    """Train ``cfg``'s recipe until ``train.max_steps``; returns the last metrics. Validation data:
    the session's ``val`` dataset, else ``val_files`` (Parquet files read directly by rank 0)."""
    from lipsync.train.data import read_segments
    from lipsync.train.recipes import recipe_for
    from lipsync.train.recipes.base import unwrap

    rank, world = session.rank, session.world_size
    say = say or (lambda msg: print(f"[train rank {rank} {time.strftime('%H:%M:%S')}] {msg}", flush=True))
    t_cfg = cfg["train"]
    if session.device.type == "cpu":
        torch.set_num_threads(_threads(cfg))
    seed = int(t_cfg["seed"])
    torch.manual_seed(seed)
    recipe = recipe_for(cfg, session.device)
    model = recipe.build()
    step = 0
    state = None
    with session.latest_checkpoint() as d:
        if d is not None:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        step = int(state["step"])
        if rank == 0:
            say(f"resuming from the checkpoint of step {step}")
    model = session.prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(t_cfg["lr"]), betas=tuple(float(b) for b in t_cfg["betas"]),
                            weight_decay=float(t_cfg["weight_decay"]))
    warm = int(t_cfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
    amp = _amp(cfg, session.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    sampler = recipe.sampler(session.dataset(cfg["data"]["train_split"]), seed=hash((seed, rank, step)) & 0x7FFFFFFF)
    val_source = session.dataset(cfg["data"]["val_split"]) or val_files
    val = []
    if rank == 0 and val_source is not None and int(cfg["data"]["val_batches"]) > 0:
        val = recipe.val_batches(read_segments(val_source), int(cfg["data"]["val_batches"]))
    writer = None
    if rank == 0 and log_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(log_dir, run_name or cfg["name"]), purge_step=step or None)
    if rank == 0:
        for note in recipe.notes:
            say(f"note: {note}")
        say(f"recipe {recipe.name}: {sum(p.numel() for p in params) / 1e6:.2f} M trainable parameters, "
            f"{world} worker(s), device {session.device}, from step {step} to {t_cfg['max_steps']}")
    start_step = step  # where this worker group started (> 0 after a resume or a recovered failure)
    accum = int(t_cfg["grad_accum"])
    dbg = cfg["debug"]
    metrics: dict = {"step": step}
    timer = time.perf_counter()
    timed = 0
    model.train()
    while step < int(t_cfg["max_steps"]):
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(accum):
            batch = recipe.next_batch(sampler)
            gen = _generator(session.device, seed, rank, step, micro)
            sync = contextlib.nullcontext() if micro == accum - 1 or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast(session.device.type, dtype=amp, enabled=amp is not None):
                    loss, logs = recipe.loss(model, batch, gen, train=True)
                scaler.scale(loss / accum).backward()
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / accum
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) / accum
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(params, float(t_cfg["grad_clip"])) if t_cfg["grad_clip"] else None
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        timed += 1
        if dbg["crash_at_step"] is not None and step == int(dbg["crash_at_step"]) and rank == int(dbg["crash_rank"]):
            marker = dbg["crash_marker"]
            if marker and not os.path.exists(marker):
                with open(marker, "w") as fh:
                    fh.write(str(step))
                # Ray Train's controller collects reports every 2 s: wait so the checkpoint reported
                # just before is registered, then die as a killed process would.
                time.sleep(float(dbg["crash_delay_s"] or 0))
                say(f"debug: exiting abruptly at step {step} (debug.crash_at_step)")
                os._exit(1)
        last = step >= int(t_cfg["max_steps"])
        metrics = {"step": step, **sums, "lr": float(sched.get_last_lr()[0]), "start_step": start_step}
        if gnorm is not None:
            metrics["grad_norm"] = float(gnorm)
        if step % int(t_cfg["log_every"]) == 0 or last:
            metrics["s_per_step"] = (time.perf_counter() - timer) / max(timed, 1)
            timer, timed = time.perf_counter(), 0
            if rank == 0:
                say(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                  if k not in ("step", "start_step")))
                if writer is not None:
                    for k, v in metrics.items():
                        if k not in ("step", "start_step"):
                            writer.add_scalar(f"train/{k}", v, step)
        if step % int(t_cfg["checkpoint_every"]) == 0 or last:
            metrics.update(_validate(recipe, model, val, session, seed))
            if rank == 0 and writer is not None:
                for k, v in metrics.items():
                    if k.startswith("val_"):
                        writer.add_scalar(f"val/{k[4:]}", v, step)
                writer.flush()
            _checkpoint(recipe, model, opt, sched, scaler, sampler, session, metrics, cfg, say)
            timer = time.perf_counter()
            timed = 0
    if writer is not None:
        writer.close()
    return metrics


def _generator(device: torch.device, seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed((seed * 1_000_003 + rank * 10_007 + step * 101 + micro) & 0x7FFFFFFFFFFF)
    return g


def _validate(recipe, model, batches: list[dict], session: Session, seed: int) -> dict:
    """Rank 0: mean loss (and logs) over the fixed validation windows ({} without val data). It runs
    the unwrapped module (a DDP forward on one rank alone could wait for the others)."""
    from lipsync.train.recipes.base import unwrap

    if session.rank != 0 or not batches:
        return {}
    net = unwrap(model)
    net.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i, batch in enumerate(batches):
            loss, logs = recipe.loss(net, batch, _generator(session.device, seed + 7, 0, i, 0), train=False)
            for k, v in {"loss": float(loss), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    net.train()
    return {f"val_{k}": v / len(batches) for k, v in sums.items()}


def _checkpoint(recipe, model, opt, sched, scaler, sampler, session: Session, metrics: dict, cfg: dict, say) -> None:
    from lipsync.train.recipes.base import unwrap

    if session.rank != 0:
        session.report(metrics, None)
        return
    extra = recipe.extra_state(unwrap(model), sampler)
    with tempfile.TemporaryDirectory(prefix="lipsync-ckpt-") as tmp:
        torch.save({"step": metrics["step"], "model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "extra": extra,
                    "recipe": recipe.name, "config": cfg}, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, "train_state.json"), "w") as fh:
            json.dump({"step": metrics["step"], "recipe": recipe.name, "metrics": metrics, "extra": extra}, fh,
                      indent=2, default=float)
        session.report(metrics, tmp)
    say(f"checkpoint at step {metrics['step']}" +
        (f" (val loss {metrics['val_loss']:.4g})" if "val_loss" in metrics else ""))
