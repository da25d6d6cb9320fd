"""The `lipsync` command as users type it (in-process through `main`, plus one real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lipsync import __version__
from lipsync.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("synth", "tts", "probe"):
        assert cmd in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "subcommands" in capsys.readouterr().out


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "lipsync")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"lipsync {__version__}"


def test_tts_writes_wav_and_phonemes(tmp_path, capsys):
    wav, js = tmp_path / "x.wav", tmp_path / "x.json"
    assert main(["tts", "--text", "你好，世界", "--lang", "zh", "--out", str(wav), "--phonemes", str(js)]) == 0
    assert wav.stat().st_size > 10000
    data = json.loads(js.read_text())
    assert data["phonemes"] and data["lang"]
    assert "phonemes" in capsys.readouterr().out


def test_tts_unknown_language_is_a_clear_error(tmp_path, capsys):
    assert main(["tts", "--text", "hello", "--lang", "klingon", "--out", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    assert "klingon" in err and "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


def test_synth_then_probe(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["synth", "--out", str(out), "--num", "1", "--seconds", "1", "--size", "160", "--langs", "es"]) == 0
    video = out / "clip_00000" / "video.mp4"
    assert video.exists() and (out / "manifest.csv").exists()
    capsys.readouterr()
    assert main(["probe", str(video), "--samples", "3"]) == 0
    text = capsys.readouterr().out
    assert "160x160" in text and "25.000 fps" in text and "found in 3/3" in text
    assert main(["probe", str(video), "--json", "--samples", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["video"]["width"] == 160 and len(report["faces"]) == 2


@pytest.mark.parametrize("content, problem", [(b"", "empty"), (b"\x00\x01garbage" * 50, "")])
def test_probe_bad_file_names_it(tmp_path, capsys, content, problem):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    assert main(["probe", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and problem in err and "Traceback" not in err


def test_probe_missing_file(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "nope.mov")]) == 1
    assert "nope.mov" in capsys.readouterr().err


def test_generate_command_end_to_end(tmp_path, capsys):
    from lipsync.synth.corpus import make_clip

    make_clip(tmp_path / "c", seed=8, seconds=0.8, size=128, langs=["en"])
    out = tmp_path / "o.mp4"
    code = main(["generate", "--video_path", str(tmp_path / "c" / "video.mp4"), "--audio_path",
                 str(tmp_path / "c" / "audio.wav"), "--output_path", str(out), "--num_steps", "1",
                 "--batch_size", "2", "--device", "cpu"])
    assert code == 0 and out.exists()
    captured = capsys.readouterr()
    assert "20 frames" in captured.out and "frames/s" in captured.out


def test_generate_reports_missing_weights_and_bad_flags(tmp_path, capsys):
    args = ["generate", "--video_path", "v.mp4", "--audio_path", "a.wav", "--output_path", str(tmp_path / "o.mp4")]
    assert main(args + ["--profile", "latentsync-1.6", "--checkpoint_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "latentsync_unet.pt" in err and "whisper/tiny.pt" in err and "sd-vae-ft-mse" in err
    assert main(args + ["--profile", "nope"]) == 1
    assert "available" in capsys.readouterr().err
    assert main(args + ["--dtype", "fp8"]) == 1
    assert "fp8" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --video_path and --image_path exclude each other
        main(args + ["--image_path", "x.png"])


def test_generate_option_flags_are_the_declaration(capsys):
    """`lipsync generate` takes every option of lipsync/options.py under its declared name, with its
    declared default (None: the profile's), and a bad value is an argparse error naming the flag."""
    from lipsync.cli import build_parser, generate_request
    from lipsync.options import GenerateOptions

    base = ["generate", "--video_path", "v.mp4", "--audio_path", "a.wav", "--output_path", "o.mp4"]
    parser = build_parser()
    assert generate_request(parser.parse_args(base)) == GenerateOptions()  # make demo: num_steps/guidance None
    got = generate_request(parser.parse_args(base + ["--deepcache", "2", "--face", "track:3", "--silence_gating",
                                                     "--batch_size", "2"]))
    assert got == GenerateOptions(deepcache_interval=2, face="track:3", silence_gating=True, batch_size=2)
    for flag, value in (("--face", "left"), ("--loop", "bounce"), ("--num_steps", "0"), ("--seed", "x")):
        with pytest.raises(SystemExit):
            parser.parse_args(base + [flag, value])
        assert flag in capsys.readouterr().err


def test_core_library_has_no_ray_imports():
    """DESIGN.md's layout rule: lipsync/ is the plain library; Ray wiring lives in pipelines/, serve/, jobs/."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "lipsync"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root.parent)}:{node.lineno}" for n in names
                          if n == "ray" or n.startswith("ray.")]
    assert not offenders, offenders
