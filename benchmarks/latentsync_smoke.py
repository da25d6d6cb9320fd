"""Full-size smoke run of the LatentSync profiles: random weights at the real configuration, written
in LatentSync's own file layout, then ``lipsync generate`` on a 1 s clip.

    .venv/bin/python benchmarks/latentsync_smoke.py [--profile latentsync-1.5] [--steps 2]
        [--workdir /tmp/lipsync-latentsync-smoke] [--device cpu]

Writes under --workdir ``<profile>/latentsync_unet.pt`` ({"state_dict": ...}, float16 like a
download, 1,246 tensors), ``<profile>/whisper/tiny.pt`` (OpenAI layout, tiny dims) and
``<profile>/sd-vae-ft-mse/`` (diffusers AutoencoderKL folder at sd-vae-ft-mse's configuration);
existing files are reused. Then runs the real CLI and checks the output is a playable video with the
speech's length and an audio track. Prints one JSON line with the timings. Too slow for the test
suite on a CPU (a 1.25 B-parameter UNet); random weights, so the picture is noise in the mouth box.

Measured 2026-12-07 on the 2-core development VM shared with other jobs (load 3-12), one thread:
writing the files 153 s, generate 3,798 s wall (~14 CPU-minutes of its own; peak RSS 9.1 GB) for
25 frames, output 25 frames 256 x 256 with its audio track.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHISPER_TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                         n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def write_checkpoints(folder: Path, seed: int = 0) -> dict:
    import torch

    from lipsync.models.unet import UNet3DConditionModel, UNetConfig
    from lipsync.models.whisper import WhisperDims, WhisperEncoder

    took = {}
    torch.manual_seed(seed)
    unet_path = folder / "latentsync_unet.pt"
    if not unet_path.is_file():
        t = time.perf_counter()
        unet = UNet3DConditionModel(UNetConfig.latentsync())
        state = {k: v.half() for k, v in unet.state_dict().items()}
        del unet
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": 0, "state_dict": state}, unet_path.with_suffix(".tmp"))
        unet_path.with_suffix(".tmp").rename(unet_path)
        took["write_unet_s"] = time.perf_counter() - t
    whisper_path = folder / "whisper" / "tiny.pt"
    if not whisper_path.is_file():
        enc = WhisperEncoder(WhisperDims(**{k: v for k, v in WHISPER_TINY_DIMS.items() if k.startswith("n_audio")
                                            or k == "n_mels"}))
        whisper_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"dims": WHISPER_TINY_DIMS,
                    "model_state_dict": {f"encoder.{k}": v.half() for k, v in enc.state_dict().items()}}, whisper_path)
    vae_dir = folder / "sd-vae-ft-mse"
    if not (vae_dir / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)
        vae.save_pretrained(vae_dir, safe_serialization=True)
    return took


def one_second_speech(path: Path) -> Path:
    import soundfile as sf

    samples, rate = sf.read(REPO / "lipsync" / "assets" / "samples" / "speech.wav", dtype="float32")
    sf.write(path, samples[: rate], rate)
    return path


def check_video(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        info = {"frames": frames, "size": [v.codec_context.width, v.codec_context.height],
                "audio_streams": len(c.streams.audio)}
    if frames < 20 or info["audio_streams"] != 1:
        raise SystemExit(f"bad output {path}: {info}")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="latentsync-1.5")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/lipsync-latentsync-smoke")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    ckpt = work / args.profile
    t0 = time.perf_counter()
    result = {"profile": args.profile, "steps": args.steps, "device": args.device, **write_checkpoints(ckpt)}
    result["prepare_s"] = time.perf_counter() - t0
    audio = one_second_speech(work / "speech_1s.wav")
    out = work / f"{args.profile}.mp4"
    cmd = [sys.executable, "-m", "lipsync.cli", "generate", "--profile", args.profile, "--checkpoint_dir", str(ckpt),
           "--num_steps", str(args.steps), "--video_path", str(REPO / "lipsync" / "assets" / "samples" / "face.mp4"),
           "--audio_path", str(audio), "--output_path", str(out), "--device", args.device]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    result["generate_s"] = round(time.perf_counter() - t, 1)
    result["command"] = " ".join(cmd)
    result["output"] = check_video(out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
