"""Batch dubbing on a 2-node Ray cluster on 127.0.0.1 (ray.cluster_utils.Cluster).

The cluster needs its own Ray session, so it runs in a subprocess: the test session's local Ray
instance (tests/ray_fixtures.py) is left alone. Each node has one CPU; the pools are sized so that
each node holds one prepare actor, one denoise actor and one finish task, and the results table's
``stages`` column says which node did what.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lipsync.synth.corpus import make_clip

CLUSTER_JOB = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import ray
from ray.cluster_utils import Cluster

manifest, out = sys.argv[1], sys.argv[2]
store = 200 * 2**20
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                        "object_store_memory": store})
cluster.add_node(num_cpus=1, object_store_memory=store)
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="WARNING")
try:
    from lipsync.pipeline.lipsync_pipeline import GenerateOptions
    from lipsync.pipeline.manifest import load_job_input
    from pipelines.dub import DubJob, load_config, run_dub

    cfg = load_config(None, ["prepare.actors=2", "prepare.num_cpus=0.25", "denoise.actors=2",
                             "denoise.num_cpus=0.5", "finish.concurrency=2", "finish.num_cpus=0.25",
                             "denoise.shards_per_call=1", "prepare.shard_windows=1"])
    job = load_job_input(out, GenerateOptions(num_steps=1, guidance_scale=1.0), manifest=manifest)
    results = run_dub(job, DubJob(out, config=cfg), say=lambda m: print(m, file=sys.stderr))
    nodes = sorted(n["NodeID"][:12] for n in ray.nodes() if n["Alive"])
    print("RESULT " + json.dumps({"nodes": nodes, "rows": [r.__dict__ for r in results]}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_job_runs_on_both_nodes_of_a_cluster(tmp_path):
    for k in range(2):
        make_clip(tmp_path / f"c{k}", seed=60 + k, seconds=0.8, size=128, langs=["en"])
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,video,audio\n" + "".join(f"v{k},c{k}/video.mp4,c{k}/audio.wav\n" for k in range(2)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", CLUSTER_JOB, str(manifest), str(out)], capture_output=True,
                          text=True, timeout=400)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert len(report["nodes"]) == 2
    rows = report["rows"]
    assert [(r["id"], r["status"]) for r in rows] == [("v0", "ok"), ("v1", "ok")], rows
    used = set()
    for r in rows:
        stages = json.loads(r["stages"])
        used |= {stages["prepare"]["node"], stages["finish"]["node"], *stages["denoise"]["nodes"]}
    assert used == set(report["nodes"]), (used, report["nodes"])
    assert sorted(p.name for p in out.iterdir()) == ["_done", "results.parquet", "v0.mp4", "v1.mp4"]
