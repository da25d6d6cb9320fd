"""Batch dubbing on Ray Data: thousands of clips as one job, from the stages of ``lipsync generate``.

The wiring (the work itself is ``lipsync.pipeline.batch``, built from ``lipsync.pipeline.stages``)::

    manifest rows (driver; finished outputs skipped)
      -> ray.data.from_items: one row per video
      -> map_batches(PrepareUDF)   CPU actor pool, one video per call: speech + audio features, decode,
                                   face track + align; yields shards of consecutive 16-frame windows
                                   (aligned crops + audio tokens; the window overlap comes with them)
                                   as they fill, then the video's plan (alignment matrices, counts)
      -> map_batches(DenoiseUDF)   GPU actor pool (CPU when the cluster has no GPU): the windows of
                                   any shards of any videos, batched; VAE decode; regenerated crops
      -> driver: gathers each video's shards + plan (only crops and metadata travel; frames never
         do), then hands the video to an idle FinishWorker actor (CPU): decode the source again,
         cross-fade, paste back, encode + mux, atomic write, completion record (written last)
      -> results.parquet + a summary table

Rows between stages are ``{id, kind, index, count, error, payload}`` with ``kind`` in ``shard`` /
``plan`` / ``error``; ``payload`` is the pickled ``Shard`` / ``VideoPlan``. A failure inside a stage
becomes an ``error`` row for that video (the others go on); ``max_errored_blocks`` is not used.

Fault tolerance (set here, not left to Ray's defaults; every stage is an actor, there are no plain
tasks to retry: the rows come from ``from_items``, held by the driver):

* Every actor (prepare pool, denoise pool, finish workers) has ``max_restarts=-1``: a worker
  killed by a preempted node, the OOM killer or a crash is always replaced. Restarts are cheap
  (they load weights again) and a long job on spot GPUs may lose many, so no budget is put on them.
* A *call* is retried a bounded number of times when its worker dies under it:
  ``prepare.retries`` (2; one video per call: the video is prepared again from the start, the
  rows the dead attempt yielded never reach the next stage), ``denoise.retries`` (3; a batch of
  shards, denoised again) and ``finish.retries`` (3; the video is written again, atomically). Ray
  Data's default is ``max_task_retries=-1``: one input that kills its worker every time (a decoder
  crash, a frame too big for memory) would stop the job forever. Bounded, that input's call fails;
  ``max_errored_blocks=-1`` lets the job go on without it, and its videos become error rows
  ("lost: ..."), like a finish call past its retries ("finish failed: ...").
* Duplicates are harmless: the driver keys shards by (id, index) and hands each video to a finish
  worker once; a video closed (finished, failed) ignores later rows. A video already written is
  never denoised or written again in the same run, and not in a rerun (below).

Resume: a rerun skips every row whose completion record (``<output_dir>/_done/<id>.json``, written
after the output) names the same output, which still exists, made from the same inputs, options
and model (``batch.fingerprint``); ``overwrite=True`` recomputes everything. A driver killed mid-job
takes its actors with it: outputs in flight are not renamed into place, and the temporary files
they leave (``.<name>.<hex>.partial.mp4``) are deleted when the job starts again (and when it ends).

Sync score hook: ``evaluator: "package.module:function"`` in the config names a function
``fn(output_uri: str, task: DubTask) -> float | None`` run by the finish worker after the output is
written (e.g. a SyncNet LSE-C). The project has no evaluator yet, so by default none runs and the
``sync_score`` column stays null.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field


from lipsync.configs import CONFIG_DIR
from lipsync.errors import LipSyncError
from lipsync.media.uri import ray_runtime_env
from lipsync.pipeline.batch import (Result, VideoPlan, completed, describe_error, fingerprint, format_summary,
                                    sweep_partials, write_results)
from lipsync.pipeline.manifest import DubTask, JobInput

DEFAULT_CONFIG = CONFIG_DIR / "dub.yaml"
# The configuration's keys and defaults (lipsync/configs/dub.yaml documents each).
DEFAULTS: dict = {
    "prepare": {"actors": "auto", "num_cpus": "auto", "shard_windows": 4, "torch_threads": 1, "retries": 2},
    "denoise": {"actors": "auto", "num_gpus": "auto", "num_cpus": "auto", "batch_size": "auto",
                "shards_per_call": "auto", "torch_threads": "auto", "device": "auto", "dtype": "auto",
                "retries": 3},
    "finish": {"concurrency": "auto", "num_cpus": 0.25, "retries": 3},
    "gpu_wait_s": 0,
    "evaluator": None,
}


class ConfigError(LipSyncError):
    """The job's configuration cannot run on this cluster (said before anything starts)."""


class PipelineError(LipSyncError):
    """The Ray pipeline itself stopped (e.g. a pool's actors could not start): every row not
    finished by then is an error row of the results, and the job ends with this message."""


# -- configuration ------------------------------------------------------------------------------
def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, updated by the YAML file ``path`` (default lipsync/configs/dub.yaml when it exists) and by
    ``key.sub=value`` overrides."""
    from lipsync.config_tree import load_tree

    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return load_tree(DEFAULTS, path, overrides, ConfigError, "denoise.actors=2")


@dataclass
class Plan:
    """The pools of one job, with every 'auto' worked out for the cluster it runs on."""

    prepare_actors: int
    prepare_cpus: float
    shard_windows: int
    prepare_threads: int
    denoise_actors: int
    denoise_cpus: float
    denoise_gpus: float
    batch_size: int
    shards_per_call: int
    denoise_threads: int
    device: str
    dtype: str
    finish_concurrency: int
    finish_cpus: float
    finish_retries: int
    cluster_cpus: float
    cluster_gpus: float
    prepare_retries: int = 2
    denoise_retries: int = 3

    def describe(self) -> str:
        dev = f"{self.denoise_gpus:g} GPU" if self.denoise_gpus else f"CPU, {self.denoise_threads} threads"
        return (f"prepare {self.prepare_actors} x {self.prepare_cpus:g} CPU; denoise {self.denoise_actors} x "
                f"({self.denoise_cpus:g} CPU, {dev}), {self.batch_size} windows per pass; finish up to "
                f"{self.finish_concurrency} x {self.finish_cpus:g} CPU (cluster: {self.cluster_cpus:g} CPU, "
                f"{self.cluster_gpus:g} GPU)")


def _num(cfg: dict, section: str, key: str, lo: float, integer: bool = False):
    v = cfg[section][key] if section else cfg[key]
    name = f"{section}.{key}" if section else key
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v) or v < lo:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}: {v!r} must be {kind} >= {lo} (or auto where allowed)")
    return int(v) if integer else float(v)


def plan_pools(cfg: dict, cpus: float, gpus: float, node_cpus: list[float] | None = None,
               node_gpus: list[float] | None = None) -> Plan:
    """Resolve 'auto' for a cluster of ``cpus`` / ``gpus`` and refuse any layout that cannot run.

    The pools hold their CPUs for the whole job; finish tasks need theirs on top. If the sum exceeds
    the cluster, some stage waits for another forever (docs/developer_guide.md, "Ray traps"), so that is an error here,
    before anything starts. A GPU request on a cluster without (enough) GPUs is an error too (Ray
    would wait for one silently); with ``gpu_wait_s`` the driver first waits for an autoscaler to
    add GPU nodes (see :func:`requested_gpus`), then plans.

    'auto' on a GPU cluster: one denoise actor per GPU (1 CPU each, 4 windows per pass); prepare
    actors of 1 CPU (mediapipe keeps a core busy) and finish tasks share the other CPUs (about a
    third for finish, at most 2 finish tasks and 4 prepare actors per denoiser). On a CPU-only
    cluster the denoisers do nearly all the work: one prepare actor and one or two finish tasks
    take a quarter CPU each, and about 3 denoise actors per 4 CPUs (8 at most) share the rest, one
    window per pass (measured on 2 cores: two 1-thread denoisers beat one 2-thread denoiser by ~17 %,
    and batching windows on CPU is slower, not faster).
    """
    node_cpus = node_cpus or [cpus]
    node_gpus = node_gpus or [gpus]
    d, p, f = cfg["denoise"], cfg["prepare"], cfg["finish"]
    auto = lambda section, key: cfg[section][key] == "auto"  # noqa: E731
    # Denoise: GPUs, device, actors.
    d_gpus = (1.0 if gpus >= 1 else 0.0) if auto("denoise", "num_gpus") else _num(cfg, "denoise", "num_gpus", 0)
    if d_gpus > 0 and gpus <= 0:
        raise ConfigError(f"denoise.num_gpus is {d_gpus:g} but the cluster has no GPU: set denoise.num_gpus: 0 "
                          "(or auto) to denoise on CPU, or gpu_wait_s for a cluster that adds GPU nodes on demand")
    device = str(d["device"])
    if device == "auto":
        device = "cuda" if d_gpus > 0 else "cpu"
    elif device.startswith("cuda") and d_gpus <= 0:
        raise ConfigError(f"denoise.device is {device!r} but denoise.num_gpus is 0: give the actors a GPU")
    if auto("denoise", "actors"):
        d_actors = max(1, int(gpus // d_gpus)) if d_gpus > 0 else max(1, min(8, int(0.75 * cpus + 0.5)))
    else:
        d_actors = _num(cfg, "denoise", "actors", 1, integer=True)
    p_cpus = (1.0 if d_gpus > 0 else 0.25) if auto("prepare", "num_cpus") else _num(cfg, "prepare", "num_cpus", 0)
    f_cpus = _num(cfg, "finish", "num_cpus", 0)
    batch = (4 if d_gpus > 0 else 1) if auto("denoise", "batch_size") else _num(cfg, "denoise", "batch_size", 1, True)
    per_call = ((2 if d_gpus > 0 else 1) if auto("denoise", "shards_per_call")
                else _num(cfg, "denoise", "shards_per_call", 1, True))
    # CPUs: explicit values first, then 'auto' shares of what is left.
    d_cpus = None if auto("denoise", "num_cpus") else _num(cfg, "denoise", "num_cpus", 0)
    if d_gpus > 0 and d_cpus is None:
        d_cpus = 1.0
    rest = cpus - (d_actors * d_cpus if d_cpus is not None else 0.0)
    if not auto("finish", "concurrency"):
        f_conc = _num(cfg, "finish", "concurrency", 1, integer=True)
    elif d_gpus > 0 and f_cpus > 0:
        f_conc = max(1, min(2 * d_actors, int(rest / 3 / f_cpus)))
    else:
        f_conc = 2 if cpus > 2 else 1
    if not auto("prepare", "actors"):
        p_actors = _num(cfg, "prepare", "actors", 1, integer=True)
    elif d_cpus is None or p_cpus == 0:  # CPU-only cluster: the denoisers need the CPUs more
        p_actors = 1
    else:
        p_actors = max(1, min(4 * d_actors, int((rest - f_conc * f_cpus + 1e-9) // p_cpus)))
    if d_cpus is None:  # CPU denoisers share what prepare and finish leave, in quarter CPUs
        d_cpus = max(0.25, math.floor(4 * (cpus - p_actors * p_cpus - f_conc * f_cpus) / d_actors) / 4)
    need = p_actors * p_cpus + d_actors * d_cpus + f_conc * f_cpus
    if need > cpus + 1e-6:
        raise ConfigError(
            f"the pools need {need:g} CPUs (prepare {p_actors} x {p_cpus:g}, denoise {d_actors} x {d_cpus:g}, "
            f"finish {f_conc} x {f_cpus:g}) but the cluster has {cpus:g}: the stages would wait for each other "
            "forever; lower the actors / num_cpus / concurrency in the config")
    for name, c in (("prepare", p_cpus), ("denoise", d_cpus), ("finish", f_cpus)):
        if c > max(node_cpus) + 1e-6:
            raise ConfigError(f"{name}.num_cpus is {c:g} but no node has more than {max(node_cpus):g} CPUs")
    if d_gpus > 0 and d_gpus > max(node_gpus) + 1e-6:
        raise ConfigError(f"denoise.num_gpus is {d_gpus:g} but no node has more than {max(node_gpus):g} GPUs")
    if d_gpus > 0 and d_actors * d_gpus > gpus + 1e-6:
        raise ConfigError(f"denoise: {d_actors} actors x {d_gpus:g} GPU but the cluster has {gpus:g} GPUs")
    d_threads = (max(1, math.ceil(d_cpus)) if auto("denoise", "torch_threads")
                 else _num(cfg, "denoise", "torch_threads", 1, True))
    p_threads = (max(1, math.ceil(p_cpus)) if auto("prepare", "torch_threads")
                 else _num(cfg, "prepare", "torch_threads", 1, True))
    return Plan(p_actors, p_cpus, _num(cfg, "prepare", "shard_windows", 1, True), p_threads,
                d_actors, d_cpus, d_gpus, batch,
                per_call, d_threads, device, str(d["dtype"]),
                f_conc, f_cpus, _num(cfg, "finish", "retries", 0, integer=True), cpus, gpus,
                _num(cfg, "prepare", "retries", 0, integer=True), _num(cfg, "denoise", "retries", 0, integer=True))


def requested_gpus(cfg: dict) -> float:
    """GPUs the config asks for explicitly (denoise.actors x denoise.num_gpus; 0 for 'auto')."""
    d = cfg["denoise"]
    if d["num_gpus"] == "auto" or not d["num_gpus"]:
        return 0.0
    actors = 1 if d["actors"] == "auto" else int(d["actors"])
    return float(d["num_gpus"]) * actors


# -- rows between stages ------------------------------------------------------------------------
def _table(rows: list[dict]):
    import pyarrow as pa

    return pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "kind": pa.array([r["kind"] for r in rows], pa.string()),
        "index": pa.array([r.get("index", 0) for r in rows], pa.int64()),
        "count": pa.array([r.get("count", 0) for r in rows], pa.int64()),
        "error": pa.array([r.get("error", "") for r in rows], pa.string()),
        "payload": pa.array([r.get("payload", b"") for r in rows], pa.large_binary()),
    })


def _shard_row(shard) -> dict:
    return {"id": shard.id, "kind": "shard", "index": shard.index,
            "payload": pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL)}


def _plan_row(plan) -> dict:
    return {"id": plan.task.id, "kind": "plan", "count": plan.n_shards,
            "payload": pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)}


def _error_row(ident: str, message: str) -> dict:
    return {"id": ident, "kind": "error", "error": message}


def _node() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()[:12]
    except Exception:
        return ""


def _quiet_random_init_warning() -> None:
    import warnings

    # The driver says once that the weights are random; every actor need not say it again.
    warnings.filterwarnings("ignore", message="no trained weights", category=RuntimeWarning)


class PrepareUDF:
    """CPU pool: one video per call -> its shards as they fill, then its plan (or an error row)."""

    def __init__(self, profile: str, checkpoint_dir: str | None, shard_windows: int, torch_threads: int):
        import torch

        from lipsync.pipeline.batch import PrepareVideo
        from lipsync.pipeline.components import load_components
        from lipsync.pipeline.job import JobSetup
        from lipsync.profiles import load_profile

        from lipsync.face import FaceDetector

        _quiet_random_init_warning()
        torch.set_num_threads(int(torch_threads))
        comps = load_components(load_profile(profile), checkpoint_dir, parts={"audio"})
        comps.to("cpu")
        self.stage = PrepareVideo(JobSetup(comps.profile, comps.audio_encoder), shard_windows,
                                  detector=FaceDetector(max_faces=8))
        self.node = _node()

    def __call__(self, batch):
        for payload in batch.column("task").to_pylist():
            task: DubTask = pickle.loads(payload)
            try:
                for item in self.stage(task):
                    if isinstance(item, VideoPlan):
                        item.where = self.node
                        yield _table([_plan_row(item)])
                    else:
                        yield _table([_shard_row(item)])
            except Exception as err:  # this video fails; the job goes on
                yield _table([_error_row(task.id, describe_error(err, task))])


class DenoiseUDF:
    """GPU pool (or CPU): the windows of any shards, batched; other rows pass through."""

    def __init__(self, profile: str, checkpoint_dir: str | None, device: str, dtype: str, batch_size: int,
                 torch_threads: int):
        import torch

        from lipsync.pipeline.components import load_components
        from lipsync.pipeline.lipsync_pipeline import pick_device, pick_dtype
        from lipsync.pipeline.stages import Denoiser, regen_mask_of
        from lipsync.profiles import load_profile

        _quiet_random_init_warning()
        torch.set_num_threads(int(torch_threads))
        dev = pick_device(device)  # ValueError (clear) when cuda is asked for and absent
        dt = pick_dtype(dtype, dev)
        comps = load_components(load_profile(profile), checkpoint_dir, parts={"unet", "vae"})
        comps.to(dev, dt)
        self.denoiser = Denoiser(comps, dev, dt, regen_mask_of(comps.profile))
        self.batch_size = int(batch_size)
        self.node = _node()

    def __call__(self, batch):
        from lipsync.pipeline.batch import denoise_shards

        out, shards = [], []
        for row in batch.to_pylist():
            if row["kind"] == "shard":
                shards.append(pickle.loads(row["payload"]))
            else:
                out.append(row)
        try:
            done = denoise_shards(self.denoiser, shards, self.batch_size)
        except Exception:  # find the culprit: each shard alone, so one bad input fails one video
            done = []
            for sh in shards:
                try:
                    done += denoise_shards(self.denoiser, [sh], self.batch_size)
                except Exception as err:
                    out.append(_error_row(sh.id, f"{sh.source}: denoising failed ({describe_error(err)})"))
        for sh in done:
            sh.where = self.node
            out.append(_shard_row(sh))
        return _table(out)


def _load_evaluator(spec: str | None):
    if not spec:
        return None
    import importlib

    module, _, name = str(spec).partition(":")
    if not name:
        raise ConfigError(f"evaluator: {spec!r} must be 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"evaluator: cannot load {spec!r} ({err})") from err


class FinishWorker:
    """CPU actor (one per concurrent finish): a video's paste-back, encode, atomic write and
    completion record per call. An actor rather than a task: its process and imports stay warm
    for the whole job (a task's idle worker is reclaimed within a second on a small node, and a
    new one costs seconds of imports per video)."""

    def __init__(self, output_dir: str, evaluator: str | None):
        from lipsync.pipeline import batch  # noqa: F401  (imports now, not in the first video)

        self.output_dir = output_dir
        self.evaluator = _load_evaluator(evaluator)
        self.node = _node()

    def run(self, plan_payload: bytes, shard_refs: list) -> Result:
        import ray

        from lipsync.pipeline.batch import finish_video

        plan = pickle.loads(plan_payload)
        shards = [pickle.loads(p) for p in ray.get(shard_refs)]
        try:
            return finish_video(plan, shards, self.output_dir, self.evaluator, extra={"node": self.node})
        except Exception as err:
            return Result(plan.task.id, "error", plan.task.output, describe_error(err, plan.task))


# -- the driver -------------------------------------------------------------------------------
class _Gather:
    """Driver side: collects each video's shards and plan; hands a complete video to an idle
    FinishWorker."""

    def __init__(self, workers: list, on_result):
        self.idle = list(workers)
        self.workers = len(workers)
        self.on_result = on_result
        # Payloads wait in the object store (which can spill to disk), not in the driver's memory.
        self.shards: dict[str, dict[int, object]] = {}
        self.plans: dict[str, tuple[int, object]] = {}
        self.closed: set[str] = set()  # finished, failed or handed over: later rows are duplicates
        self.ready: list[str] = []
        self.running: dict = {}  # ObjectRef -> (id, worker)
        self.outputs: dict[str, str] = {}

    def add(self, row: dict) -> None:
        ident = row["id"]
        if ident in self.closed:
            return
        if row["kind"] == "error":
            self.closed.add(ident)
            self.shards.pop(ident, None)
            self.plans.pop(ident, None)
            self.on_result(Result(ident, "error", self.outputs.get(ident), row["error"]))
            return
        import ray

        if row["kind"] == "shard":
            self.shards.setdefault(ident, {})[int(row["index"])] = ray.put(row["payload"])
        else:
            self.plans[ident] = (int(row["count"]), ray.put(row["payload"]))
        if ident in self.plans and len(self.shards.get(ident, {})) >= self.plans[ident][0]:
            self.ready.append(ident)
            self.closed.add(ident)
        self.pump()
        while len(self.ready) > 2 * self.workers:  # finishing lags behind: hold the pipeline back
            self.pump(block=True)

    def pump(self, block: bool = False) -> None:
        import ray

        while self.ready and self.idle:
            ident = self.ready.pop(0)
            count, plan = self.plans.pop(ident)
            shards = self.shards.pop(ident, {})
            worker = self.idle.pop()
            self.running[worker.run.remote(plan, [shards[i] for i in range(count)])] = (ident, worker)
        if not self.running:
            return
        done, _ = ray.wait(list(self.running), num_returns=1 if block else len(self.running),
                           timeout=None if block else 0)
        for ref in done:
            ident, worker = self.running.pop(ref)
            self.idle.append(worker)
            try:
                result = ray.get(ref)
            except Exception as err:  # the worker died more often than retries allow
                result = Result(ident, "error", self.outputs.get(ident),
                                f"finish failed: {' '.join(str(err).split())[:300]}")
            self.on_result(result)
        if done and self.ready:
            self.pump()

    def drain(self) -> None:
        while self.ready or self.running:
            self.pump(block=True)


def cluster_resources() -> tuple[float, float, list[float], list[float]]:
    import ray

    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes] or [float(total.get("CPU", 0))]
    node_gpus = [float(n["Resources"].get("GPU", 0)) for n in nodes] or [float(total.get("GPU", 0))]
    return float(total.get("CPU", 0)), float(total.get("GPU", 0)), node_cpus, node_gpus


def _wait_for_gpus(need: float, timeout_s: float, say) -> None:
    """Ask an autoscaler for GPU nodes and wait for them (a fixed cluster never gets any)."""
    import ray

    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * max(1, int(math.ceil(need))))
    except Exception:
        pass
    say(f"waiting up to {timeout_s:g} s for {need:g} GPU(s) to join the cluster ...")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if float(ray.cluster_resources().get("GPU", 0)) >= need:
            return
        time.sleep(5)
    raise ConfigError(f"no GPU joined the cluster within gpu_wait_s={timeout_s:g} s "
                      "(denoise.num_gpus > 0): check the GPU worker group, or set denoise.num_gpus: 0")


@dataclass
class DubJob:
    output_dir: str
    profile: str = "tiny"
    checkpoint_dir: str | None = None
    config: dict = field(default_factory=lambda: copy.deepcopy(DEFAULTS))
    overwrite: bool = False
    # Input limits for every worker of the job (lipsync.input_limits.limit_env: LIPSYNC_MAX_PIXELS,
    # LIPSYNC_MAX_MEDIA_SECONDS); empty: the workers' own environment or the built-in limits.
    limits: dict = field(default_factory=dict)


def _remote_env(job: DubJob) -> dict:
    """``ray_remote_args`` for the job's workers: the S3 settings and the job's input limits."""
    env = dict(ray_runtime_env().get("runtime_env", {}).get("env_vars", {}))
    env.update({k: str(v) for k, v in (job.limits or {}).items()})
    return {"runtime_env": {"env_vars": env}} if env else {}


def run_dub(job_input: JobInput, job: DubJob, say=None) -> list[Result]:
    """Run the job on the Ray instance this process is connected to (``ray.init`` first). Returns
    one Result per manifest row, in manifest order, and writes ``<output_dir>/results.parquet``."""
    import ray

    say = say or (lambda msg: print(msg, flush=True))
    if not ray.is_initialized():
        raise RuntimeError("run_dub needs a Ray connection: call ray.init() first")
    t0 = time.perf_counter()
    order = job_input.order
    results: dict[str, Result] = {}
    total = len(order)

    def report(r: Result) -> None:
        results[r.id] = r
        if r.status == "error":
            line = f"error: {r.error}"
        elif r.status == "skipped":
            line = f"already done -> {r.output}"
        elif r.status == "no_face":
            line = (f"no face in any frame: the video ({r.frames} frames) with the new speech, untouched, "
                    f"in {r.processing_seconds:.1f} s -> {r.output}")
        else:
            line = (f"done, {r.frames} frames ({r.media_seconds:.2f} s) in {r.processing_seconds:.1f} s "
                    f"-> {r.output}")
        say(f"[{len(results)}/{total}] {r.id}: {line}")

    for e in job_input.errors:
        report(Result(e.id, "error", e.output, e.message))
    model = f"{job.profile}@{os.path.abspath(job.checkpoint_dir) if job.checkpoint_dir else ''}"
    todo: list[DubTask] = []
    for t in job_input.tasks:
        t.fingerprint = fingerprint(t, model)
        done = None if job.overwrite else completed(job.output_dir, t)
        if done is not None:
            report(done)
        else:
            todo.append(t)
    # Temporary files of writers killed with an earlier run (a lost driver takes its actors along).
    sweep_partials(job.output_dir, job_input.tasks)
    if todo:
        try:
            _execute(todo, job, report, say)
        finally:
            sweep_partials(job.output_dir, todo)  # a finish worker killed in this run
            # Whatever stopped the pipeline, every row gets a result and the table is written.
            for t in todo:
                if t.id not in results:
                    results[t.id] = Result(t.id, "error", t.output, "not processed: the job stopped before this video")
            final = [results[i] for i in order]
            uri = write_results(job.output_dir, final)
    else:
        final = [results[i] for i in order]
        uri = write_results(job.output_dir, final)
    say(format_summary(final, time.perf_counter() - t0, uri))
    return final


def _execute(todo: list[DubTask], job: DubJob, report, say) -> None:
    import ray

    from lipsync.pipeline.components import locate_weights
    from lipsync.profiles import load_profile

    cfg = job.config
    # Weights first: a missing file is one clear error now, not actors dying one after another.
    profile = load_profile(job.profile)
    where = locate_weights(profile, job.checkpoint_dir)
    if where.random_init:
        say(f"warning: no trained weights for profile '{profile.name}' (looked in {where.looked}): "
            "random initialisation, the lips will NOT follow the speech")
    evaluator = cfg["evaluator"]
    _load_evaluator(evaluator)  # a bad hook fails here, not in every finish task
    cpus, gpus, node_cpus, node_gpus = cluster_resources()
    want = requested_gpus(cfg)
    if want > gpus and float(cfg["gpu_wait_s"] or 0) > 0:  # an autoscaling GPU group starts at zero
        _wait_for_gpus(want, float(cfg["gpu_wait_s"]), say)
        cpus, gpus, node_cpus, node_gpus = cluster_resources()
    plan = plan_pools(cfg, cpus, gpus, node_cpus, node_gpus)
    say(f"dub: {len(todo)} video(s) to do; {plan.describe()}")
    ds = _dataset(todo, job, plan)
    # Finish workers start with the pools (their imports overlap the pools' start-up).
    finisher = ray.remote(FinishWorker).options(num_cpus=plan.finish_cpus, max_restarts=-1,
                                                max_task_retries=plan.finish_retries,
                                                scheduling_strategy="SPREAD", **_remote_env(job))
    workers = [finisher.remote(job.output_dir, evaluator) for _ in range(plan.finish_concurrency)]
    gather = _Gather(workers, report)
    for t in todo:
        gather.outputs[t.id] = t.output
    try:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
                for row in batch.to_pylist():
                    gather.add(row)
        except (LipSyncError, KeyboardInterrupt):
            raise
        except Exception as err:  # Ray's errors carry long tracebacks: keep the cause, in one line
            raise PipelineError(f"the pipeline stopped: {_root_cause(err)}") from err
    finally:
        try:
            gather.drain()  # outputs already on their way are finished and recorded
        finally:
            for w in workers:
                ray.kill(w)
    # The pipeline ran to its end: a video still open lost rows in a call whose worker died more
    # often than its retries allow (the block was dropped, max_errored_blocks=-1).
    for t in todo:
        if t.id not in gather.closed:
            stage = "denoising" if t.id in gather.plans else "preparing or denoising"  # prepared: its plan came
            report(Result(t.id, "error", t.output,
                          f"{t.source}: lost: the Ray worker {stage} it died more often than the retries allow "
                          f"(prepare.retries={plan.prepare_retries}, denoise.retries={plan.denoise_retries}): out "
                          "of memory, a crash, or killed? See the Ray logs; a rerun does it again"))


def _root_cause(err: BaseException) -> str:
    """One line saying what went wrong in a worker: Ray wraps the worker's exception (sometimes
    only as the text of its traceback, e.g. an actor that died in its constructor)."""
    import re

    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not c for c in chain) and len(chain) < 10:
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, LipSyncError):
            return describe_error(e)
    for e in chain:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        for ln in reversed(lines):  # a traceback's last line names the exception
            m = re.match(r"^([\w.]*\.)?(\w+(?:Error|Exception)): (.*)$", ln)
            if m:
                return (m.group(3) if (m.group(1) or "").startswith("lipsync.") else f"{m.group(2)}: {m.group(3)}")[:500]
        if lines:
            return lines[0][:500]
    return type(err).__name__


def _dataset(todo: list[DubTask], job: DubJob, plan: Plan):
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    # A pool whose actors cannot be placed fails the job instead of waiting forever.
    ctx.wait_for_min_actors_s = int(max(600, float(job.config["gpu_wait_s"] or 0)))
    # A call past its retries (its worker died every time) drops its block and the job goes on;
    # the driver turns the videos that never closed into error rows. Stages catch their own errors
    # per video, so nothing else is dropped this way.
    ctx.max_errored_blocks = -1
    items = [{"id": t.id, "task": pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)} for t in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    with warnings.catch_warnings():
        # Ray 2.60 has no named map_batches parameter for actor restarts / call retries: they go
        # through the (deprecated, removed in 2.64) ray_remote_args, on purpose.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return _pools(ds, job, plan)


def _pools(ds, job: DubJob, plan: Plan):
    import ray

    ds = ds.map_batches(
        PrepareUDF, batch_size=1, batch_format="pyarrow",
        fn_constructor_kwargs={"profile": job.profile, "checkpoint_dir": job.checkpoint_dir,
                               "shard_windows": plan.shard_windows, "torch_threads": plan.prepare_threads},
        compute=ray.data.ActorPoolStrategy(size=plan.prepare_actors), num_cpus=plan.prepare_cpus,
        max_restarts=-1, max_task_retries=plan.prepare_retries, **_remote_env(job))
    ds = ds.map_batches(
        DenoiseUDF, batch_size=plan.shards_per_call, batch_format="pyarrow",
        fn_constructor_kwargs={"profile": job.profile, "checkpoint_dir": job.checkpoint_dir,
                               "device": plan.device, "dtype": plan.dtype, "batch_size": plan.batch_size,
                               "torch_threads": plan.denoise_threads},
        compute=ray.data.ActorPoolStrategy(size=plan.denoise_actors), num_cpus=plan.denoise_cpus,
        num_gpus=plan.denoise_gpus, max_restarts=-1, max_task_retries=plan.denoise_retries, **_remote_env(job))
    return ds


def exit_code(results: list[Result]) -> int:
    """0: every video done (or already done); 3: the job ran but some videos failed."""
    return 3 if any(r.status == "error" for r in results) else 0


__all__ = ["ConfigError", "DubJob", "load_config", "plan_pools", "run_dub", "exit_code"]

if __name__ == "__main__":  # pragma: no cover - use `lipsync dub` or jobs/dub.py
    sys.exit("use `lipsync dub ...` or `python jobs/dub.py ...`")
