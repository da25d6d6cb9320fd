"""benchmarks/gpu.py --dry: every code path of the GPU benchmark on the CPU with the tiny profile, so a
session that has a GPU finds a script that runs (the real numbers come from that session)."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_dry_run_covers_every_row(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = bench.main(["--dry", "--out", str(tmp_path / "gpu.json")])
    finally:
        torch.set_num_threads(threads)
    assert result["skipped"] == []
    rows = {(d["dtype"], d["batch"], d["deepcache"], d["compile"]) for d in result["denoise"]}
    assert rows == {(t, b, dc, False) for t in ("fp32", "bf16") for b in (1, 2) for dc in (0, 2)} | {("fp32", 1, 0, True)}
    assert all(d["frames_per_s"] > 0 for d in result["denoise"])
    assert {v["dtype"] for v in result["vae"]} == {"fp32", "bf16"}
    assert [d["sampler"] for d in result["samplers"]] == ["ddim-2", "dpmsolver++-2-g0.5", "unipc-2-dc2"]
    assert all(d["frames_per_s"] > 0 for d in result["samplers"]) and result["samplers"][0]["speedup"] == 1.0
    assert result["flops"]["tiny"]["per_frame_per_pass"] > 1e8
    assert [m["seconds"] for m in result["memory"]] == [0.4, 0.8] and result["e2e"]["size"] == [320, 240]
    assert json.loads((tmp_path / "gpu.json").read_text())["device"] == "cpu"
    out = capsys.readouterr().out
    assert "frames/s" in out and "GFLOP per frame" in out
