"""Training-data preparation on Ray Data: a folder of clips -> Parquet shards of aligned segments.

The wiring (the work itself is :class:`lipsync.train.prepare.ClipPreparer`)::

    input folder (driver: lipsync.train.sources.discover; clips already done are skipped)
      -> ray.data.from_items: one row per clip
      -> map_batches(PrepareClipUDF)   CPU actor pool (fractional CPUs), one clip per call: decode at
                                       25 fps / 16 kHz, shot cuts, face track + align (the inference
                                       code), segments, optional sync filter; the worker writes the
                                       clip's shard <out>/<split>/<id>.parquet and its completion
                                       record; only a one-row report flows back
      -> driver: <out>/report.parquet (one row per clip: ok / error / skipped) and <out>/dataset.json

A bad file is an ``error`` row of the report and the job goes on. Exit code of the CLI: 0 every clip
done, 3 some clips failed, 1 the job could not run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

from lipsync.media.uri import ray_runtime_env
from lipsync.train.prepare import ClipReport, PrepareOptions, read_done
from lipsync.train.sources import ClipTask, discover


@dataclass
class PreprocessJob:
    input: str
    output: str
    options: PrepareOptions = field(default_factory=PrepareOptions)
    actors: int | str = "auto"
    num_cpus: float | str = "auto"  # per actor; fractional (never claim every CPU: docs/developer_guide.md, "Ray traps")
    val_fraction: float = 0.0
    sync_filter: str | None = None  # package.module:function or a SyncNet folder
    overwrite: bool = False


def plan(job: PreprocessJob, cpus: float) -> tuple[int, float]:
    """(actors, CPUs per actor) for a cluster of ``cpus``: mediapipe keeps about one core busy per
    actor, so 'auto' gives 0.75 CPU per actor and as many actors as fit in all but half a CPU (the
    rest is for Ray Data's own tasks)."""
    per = 0.75 if job.num_cpus == "auto" else float(job.num_cpus)
    if per <= 0:
        raise ValueError(f"num_cpus per actor must be > 0, got {per:g}")
    if job.actors == "auto":
        actors = max(1, min(32, int(math.floor((cpus - 0.5) / per + 1e-9))))
    else:
        actors = int(job.actors)
        if actors < 1:
            raise ValueError(f"actors must be >= 1, got {actors}")
    if actors * per > cpus - 0.25 + 1e-9:
        raise ValueError(f"{actors} actors x {per:g} CPU need {actors * per:g} of the cluster's {cpus:g} CPUs: "
                         "Ray Data's own tasks would starve; lower --actors or --num_cpus")
    return actors, per


class PrepareClipUDF:
    """CPU actor: one clip per call -> one report row (the shard is written by the actor)."""

    def __init__(self, output: str, options: dict, sync_filter: str | None):
        import torch

        from lipsync.train.prepare import ClipPreparer, load_sync_filter

        torch.set_num_threads(1)
        self.stage = ClipPreparer(output, PrepareOptions(**options), load_sync_filter(sync_filter))

    def __call__(self, batch: dict) -> dict:
        import pickle

        reports = [self.stage(pickle.loads(p)).row() for p in batch["task"]]
        return {k: [r[k] for r in reports] for k in reports[0]}


def find_clips(job: PreprocessJob) -> tuple[list[ClipTask], list[str]]:
    """The job's clips and notes for the user; needs no Ray, so a wrong ``--input`` fails before a
    cluster is started or joined."""
    tasks, notes = discover(job.input, job.val_fraction)
    if not tasks:
        raise ValueError(f"{job.input}: no videos found (expected {{train,val}}/{{videos,audios}}/, "
                         "a lipsync synth corpus, or a folder of videos)")
    return tasks, notes


def run_preprocess(job: PreprocessJob, say=None, clips: tuple[list[ClipTask], list[str]] | None = None
                   ) -> list[dict]:
    """Run the job on the Ray instance this process is connected to. Returns the report rows
    (one per clip) and writes ``<output>/report.parquet`` and ``<output>/dataset.json``.
    ``clips``: the result of ``find_clips(job)`` when the caller already has it."""
    import pickle

    import ray

    say = say or (lambda msg: print(msg, flush=True))
    if not ray.is_initialized():
        raise RuntimeError("run_preprocess needs a Ray connection: call ray.init() first")
    t0 = time.perf_counter()
    tasks, notes = clips or find_clips(job)
    for n in notes:
        say(f"note: {n}")
    fp = job.options.fingerprint()
    reports: dict[str, dict] = {}
    todo: list[ClipTask] = []
    for t in tasks:
        rec = None if job.overwrite else read_done(job.output, t.id)
        if rec is not None and rec.get("options") == fp:
            reports[t.id] = ClipReport(t.id, t.video, t.audio or t.video, rec.get("split", t.split), "skipped",
                                       frames=rec.get("frames", 0), face_frames=rec.get("face_frames", 0),
                                       cuts=rec.get("cuts", 0), segments=rec.get("segments", 0),
                                       filtered=rec.get("filtered", 0), shard=rec.get("shard", "")).row()
        else:
            todo.append(t)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    actors, per = plan(job, cpus)
    say(f"preprocess: {len(tasks)} clip(s), {len(todo)} to do; {actors} actor(s) x {per:g} CPU; "
        f"segments of {job.options.segment_frames} frames at {job.options.profile!r} resolution")
    if todo:
        if job.sync_filter:
            from lipsync.train.prepare import load_sync_filter

            load_sync_filter(job.sync_filter)  # a bad hook fails here, once, not in every actor
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = False
        ctx.wait_for_min_actors_s = 600
        items = [{"id": t.id, "task": pickle.dumps(t)} for t in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(PrepareClipUDF, batch_size=1, batch_format="numpy",
                            fn_constructor_kwargs={"output": job.output, "options": asdict(job.options),
                                                   "sync_filter": job.sync_filter},
                            compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))), num_cpus=per,
                            **ray_runtime_env())
        done = len(reports)
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=1):
            for row in batch.to_dict("records"):
                row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                reports[row["id"]] = row
                done += 1
                line = (f"error: {row['error']}" if row["status"] == "error" else
                        f"{row['segments']} segment(s) from {row['face_frames']}/{row['frames']} face frames, "
                        f"{row['cuts']} cut(s){', %d filtered' % row['filtered'] if row['filtered'] else ''} "
                        f"[{row['split']}] in {row['seconds']:.1f} s")
                say(f"[{done}/{len(tasks)}] {row['id']}: {line}")
    rows = [reports.get(t.id) or ClipReport(t.id, t.video, t.audio or t.video, t.split, "error",
                                             "not processed: the job stopped before this clip").row()
            for t in tasks]
    write_report(job, rows)
    errors = sum(r["status"] == "error" for r in rows)
    segs = sum(int(r["segments"]) for r in rows)
    say(f"preprocess: {len(rows) - errors} clip(s) ok, {errors} failed, {segs} segment(s) in "
        f"{time.perf_counter() - t0:.1f} s -> {job.output}")
    return rows


def write_report(job: PreprocessJob, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lipsync.media.uri import atomic_output, join, write_bytes
    from lipsync.train.prepare import DATASET_VERSION

    cols = ["id", "video", "audio", "split", "status", "error", "frames", "face_frames", "cuts", "segments",
            "filtered", "shard", "seconds"]
    table = pa.table({c: [r.get(c) for r in rows] for c in cols})
    with atomic_output(join(job.output, "report.parquet")) as tmp:
        pq.write_table(table, tmp)
    splits: dict[str, dict] = {}
    for r in rows:
        if r["status"] != "error" and int(r["segments"]):
            s = splits.setdefault(r["split"], {"clips": 0, "segments": 0})
            s["clips"] += 1
            s["segments"] += int(r["segments"])
    info = {"version": DATASET_VERSION, "options": asdict(job.options), "splits": splits,
            "clips": len(rows), "errors": sum(r["status"] == "error" for r in rows),
            "sync_filter": job.sync_filter, "input": job.input}
    write_bytes(join(job.output, "dataset.json"), json.dumps(info, indent=2).encode())


def exit_code(rows: list[dict]) -> int:
    return 3 if any(r["status"] == "error" for r in rows) else 0


__all__ = ["PreprocessJob", "run_preprocess", "plan", "exit_code"]

if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit("use `lipsync preprocess ...` or `python jobs/preprocess.py ...`")
