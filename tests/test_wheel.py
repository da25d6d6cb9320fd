"""The wheel is the product: built from the working tree, installed into a fresh virtual environment,
it runs `lipsync generate` on the bundled sample from a folder outside the checkout, with its
profiles, configs, model and sample media read from inside the installed package.

The fresh environment reuses the dependencies already resolved in the test's own environment (a
``.pth`` line naming its site-packages) instead of downloading them again; ``.pth`` files of that
folder are not run, so the checkout's editable install cannot shadow the wheel, and the test checks
that ``lipsync``, ``pipelines`` and ``serve`` all come from the new environment."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 30 s on 2 cores: a build, a venv, one short generate

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "lipsync", "pipelines", "serve")


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, its site-packages, a clean environment, a working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    # Build from a copy of the working tree: setuptools writes build/ and *.egg-info where it builds,
    # which must not land in (or race with) the checkout.
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist, src], cwd=tmp, env=env)
    wheel = next(dist.glob("lipsync-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=tmp, env=env)
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp, env=env).stdout.strip())
    deps = Path(site.getsitepackages()[0])  # the already-resolved dependencies (torch, ray, ...)
    (purelib / "_lipsync_test_deps.pth").write_text(f"{deps}\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "purelib": purelib, "env": env, "cwd": elsewhere}


def test_wheel_ships_the_package_data(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for needed in ("lipsync/cli.py", "pipelines/cli.py", "pipelines/cluster.py", "serve/cli.py",
                   "lipsync/configs/dub.yaml", "lipsync/configs/serve.yaml", "lipsync/configs/profiles/tiny.yaml",
                   "lipsync/assets/models/tiny/model_index.json", "lipsync/assets/faces/astronaut.jpg",
                   "lipsync/assets/data/faces-kit.csv", "lipsync/assets/samples/face.mp4",
                   "lipsync/assets/samples/speech.wav"):
        assert needed in names, f"{needed} is not in {installed['wheel'].name}"
    assert any(n.startswith("lipsync/configs/train/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/", "jobs/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    assert "[lipsync.commands]" in text and "dub = pipelines.cli:add_parsers" in text


def test_installed_wheel_is_what_runs(installed):
    code = ("import lipsync, pipelines.cli, serve.cli, lipsync.configs as c\n"
            "print(lipsync.__file__); print(pipelines.cli.__file__); print(serve.cli.__file__)\n"
            "print(c.PROFILE_DIR.joinpath('tiny.yaml'))")
    out = _run([installed["python"], "-c", code], cwd=installed["cwd"], env=installed["env"]).stdout.split()
    for path in out:
        assert Path(path).is_relative_to(installed["purelib"]), f"{path} is not from the wheel"
        assert Path(path).exists()


def test_help_of_the_installed_command_lists_the_ray_subcommands(installed):
    out = _run([installed["venv"] / "bin" / "lipsync", "--help"], cwd=installed["cwd"], env=installed["env"]).stdout
    listed = out.split("positional arguments:")[1]
    for cmd in ("generate", "dub", "serve", "preprocess", "train", "eval"):
        assert f"\n    {cmd} " in listed or f"\n    {cmd}\n" in listed, f"{cmd} missing:\n{listed}"
    assert "unavailable" not in listed, listed


def test_generate_on_the_bundled_sample_from_outside_the_checkout(installed):
    from lipsync.media.probe import probe

    samples = installed["purelib"] / "lipsync" / "assets" / "samples"
    out = installed["cwd"] / "out.mp4"
    t0 = time.perf_counter()
    proc = _run([installed["venv"] / "bin" / "lipsync", "generate", "--video_path", samples / "face.mp4",
                 "--audio_path", samples / "speech.wav", "--output_path", "out.mp4", "--num_steps", "1",
                 "--batch_size", "2", "--device", "cpu"], cwd=installed["cwd"], env=installed["env"], timeout=400)
    print(f"generate from the wheel: {time.perf_counter() - t0:.1f} s\n{proc.stdout}")
    assert out.is_file(), proc.stderr[-2000:]
    info = probe(str(out))
    speech = probe(str(samples / "speech.wav"))
    assert info.video is not None and info.audio is not None
    assert info.video.num_frames > 25 and abs(info.duration - speech.duration) < 0.2, info
