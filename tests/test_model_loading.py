"""Loading a whole model: the LatentSync profile layout (latentsync_unet.pt + whisper/tiny.pt +
sd-vae-ft-mse/) exercised on small random weights this test writes, and our own folder format
(model_index.json + one folder per component, sha256-checked)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import yaml

from lipsync.errors import CheckpointError
from lipsync.models.unet import UNet3DConditionModel, UNetConfig
from lipsync.models.vae import tiny_vae
from lipsync.models.whisper import WhisperDims, WhisperEncoder
from lipsync.pipeline import GenerateOptions, LipSyncPipeline
from lipsync.pipeline.components import random_components, save_folder
from lipsync.profiles import load_profile
from lipsync.synth.corpus import make_clip

SMALL_UNET = UNetConfig.tiny(cross_attention_dim=64)  # tokens of a d=64 Whisper


def write_latentsync_layout(root, profile_path):
    """A LatentSync-style checkpoint folder with small random weights, and a profile naming it."""
    torch.manual_seed(0)
    unet = UNet3DConditionModel(SMALL_UNET)
    # LatentSync's own files: {"state_dict": ...}, version-1.0 names for the audio attention.
    state = {k.replace(".norm2.", ".audio_cross_attn.norm.").replace(".attn2.", ".audio_cross_attn.attn."): v
             for k, v in unet.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 1}, root / "latentsync_unet.pt")
    dims = WhisperDims(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=4)
    whisper = WhisperEncoder(dims)
    (root / "whisper").mkdir()
    torch.save({"dims": {**dataclasses.asdict(dims), "n_vocab": 51865}, "model_state_dict":
                {f"encoder.{k}": v for k, v in whisper.state_dict().items()}}, root / "whisper" / "tiny.pt")
    tiny_vae().save_pretrained(root / "sd-vae-ft-mse")
    prof = yaml.safe_load(open(load_profile("latentsync-1.5").source))
    prof.update(name="latentsync-small", resolution=96, unet=dataclasses.asdict(SMALL_UNET))
    prof["unet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in prof["unet"].items()}
    profile_path.write_text(yaml.safe_dump(prof))
    return unet


def test_latentsync_layout_loads_and_generates(tmp_path):
    ckpt = tmp_path / "pretrained"
    ckpt.mkdir()
    profile = tmp_path / "latentsync-small.yaml"
    unet = write_latentsync_layout(ckpt, profile)
    pipe = LipSyncPipeline.from_profile(str(profile), checkpoint_dir=str(ckpt), device="cpu")
    loaded = pipe.components.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in unet.state_dict().items())  # v1.0 names renamed
    assert pipe.components.audio_encoder.token_dim == 64 and pipe.components.audio_encoder.tokens_per_frame == 50
    make_clip(tmp_path / "c", seed=5, seconds=0.8, size=160, langs=["en"])
    res = pipe(str(tmp_path / "o.mp4"), video=str(tmp_path / "c" / "video.mp4"), audio=str(tmp_path / "c" / "audio.wav"),
               options=GenerateOptions(num_steps=1))
    assert res.frames == 20 and res.frames_with_face == 20 and not res.random_init


def test_truncated_unet_checkpoint_names_the_file(tmp_path):
    ckpt = tmp_path / "pretrained"
    ckpt.mkdir()
    profile = tmp_path / "p.yaml"
    write_latentsync_layout(ckpt, profile)
    data = (ckpt / "latentsync_unet.pt").read_bytes()
    (ckpt / "latentsync_unet.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="latentsync_unet.pt"):
        LipSyncPipeline.from_profile(str(profile), checkpoint_dir=str(ckpt), device="cpu")


def test_our_folder_format_round_trip_and_sha256(tmp_path):
    comps = random_components(load_profile("tiny"), seed=3)
    folder = save_folder(comps, tmp_path / "model")
    assert (folder / "model_index.json").is_file()
    for sub in ("unet", "vae", "audio_encoder", "scheduler"):
        assert (folder / sub).is_dir()
    pipe = LipSyncPipeline.from_profile("tiny", checkpoint_dir=str(folder), device="cpu")
    assert not pipe.components.random_init
    for k, v in comps.unet.state_dict().items():
        assert torch.equal(pipe.components.unet.state_dict()[k], v)
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with torch.no_grad():
        assert torch.equal(pipe.components.audio_encoder.features(x), comps.audio_encoder.features(x))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        LipSyncPipeline.from_profile("tiny", checkpoint_dir=str(folder), device="cpu")


def test_tiny_without_weights_warns_about_random_init(tmp_path, monkeypatch):
    import lipsync.pipeline.components as comp

    monkeypatch.setattr(comp, "BUNDLED_MODELS", tmp_path / "none")
    with pytest.warns(RuntimeWarning, match="random initialisation"):
        pipe = LipSyncPipeline.from_profile("tiny", checkpoint_dir=str(tmp_path), device="cpu")
    assert pipe.components.random_init


def test_tiny_default_is_the_bundled_trained_model(recwarn):
    """No --checkpoint_dir: the trained weights shipped in the package load, with no warning; they
    fit the package budget and bring the SyncNet the evaluator uses by default."""
    from lipsync.eval.sync import default_syncnet_path
    from lipsync.profiles import BUNDLED_MODELS

    bundled = BUNDLED_MODELS / "tiny"
    pipe = LipSyncPipeline.from_profile("tiny", device="cpu")
    assert not pipe.components.random_init and pipe.components.origin == str(bundled)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert pipe.components.scheduler.config.prediction_type == pipe.components.profile.prediction_type
    size = sum(p.stat().st_size for p in bundled.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    assert default_syncnet_path() == bundled / "syncnet"
    assert (bundled / "MODEL_CARD.md").is_file()


def test_whisper_encoder_folder_round_trip(tmp_path):
    from lipsync.models.audio import WhisperAudioEncoder

    enc = WhisperAudioEncoder(WhisperEncoder(WhisperDims(n_audio_state=64, n_audio_head=4, n_audio_layer=2)))
    enc.save_pretrained(tmp_path / "a")
    again = WhisperAudioEncoder.from_pretrained(tmp_path / "a")
    x = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1
    assert torch.equal(enc.features(x), again.features(x))


def test_reduced_precision_runs_on_cpu(tmp_path):
    """bf16 end to end (GPU runs fp16 by default; CPU can run bf16)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pipe = LipSyncPipeline.from_profile("tiny", device="cpu", dtype="bf16")
    make_clip(tmp_path / "c", seed=6, seconds=0.64, size=128, langs=["en"])
    res = pipe(str(tmp_path / "o.mp4"), video=str(tmp_path / "c" / "video.mp4"), audio=str(tmp_path / "c" / "audio.wav"),
               options=GenerateOptions(num_steps=1, deepcache_interval=2))
    assert res.frames == 16 and res.frames_with_face == 16
