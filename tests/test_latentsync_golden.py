"""Our UNet and Whisper tokens against outputs of LatentSync's own code (random weights), loaded
from their file layouts. Skipped where ../shared/reference/latentsync is absent.

Measured: UNet max abs difference 0 to 9e-17 in float64 at 1 and 16 frames (summation order); frame tokens 2.4e-7 (float32)
on a 42 s track crossing their 30 s window, 1052 frames as theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentsync_golden import GOLDEN, need, small_unet_config, tensors, one_thread  # noqa: F401 (autouse fixture)
from lipsync.models.unet import UNet3DConditionModel


@pytest.fixture(scope="module")
def unet_pt(tmp_path_factory):
    """Their weights written as their training script saves ``latentsync_unet.pt``: a dict whose
    ``state_dict`` holds the bare names (plus the bookkeeping entries it carries)."""
    path = tmp_path_factory.mktemp("ls") / "latentsync_unet.pt"
    torch.save({"global_step": 1, "state_dict": tensors("unet_small.state_dict.safetensors")}, path)
    return path


@pytest.mark.parametrize("case", ["f1", "f16"])
def test_unet_equals_theirs_float64(unet_pt, case):
    io = tensors("unet_small.io.safetensors")
    unet = UNet3DConditionModel.from_checkpoint(unet_pt, config=small_unet_config(), dtype=torch.float64)
    sample = io[f"{case}.sample"]
    f = sample.shape[2]
    ehs = io[f"{case}.encoder_hidden_states"]  # their ((b f), tokens, dim) layout
    with torch.no_grad():
        out = unet(sample, io[f"{case}.timestep"], ehs.reshape(1, f, *ehs.shape[1:]))
    assert out.dtype == torch.float64
    # float64 rounding only (0.0 to 9e-17 by thread count; outputs are ~0.05)
    assert float((out - io[f"{case}.out"]).abs().max()) < 1e-14


def test_their_motion_groupnorm_is_32_groups(unet_pt):
    """Their VanillaTemporalModule ignores the UNet's norm_num_groups (8 here): a 32-group motion norm
    is what their weights were computed with; 8 groups load (same shapes) but compute otherwise."""
    unet = UNet3DConditionModel.from_checkpoint(unet_pt, config=small_unet_config(), dtype=torch.float64)
    norms = [m for n, m in unet.named_modules() if n.endswith("temporal_transformer.norm")]
    assert len(norms) == 20 and {m.num_groups for m in norms} == {32}
    resnet_norms = {m.num_groups for n, m in unet.named_modules() if n.endswith("resnets.0.norm1")}
    assert resnet_norms == {8}


def test_whisper_tokens_equal_their_audio2feature():
    from lipsync.models.audio import WhisperAudioEncoder

    gold = tensors("audio_features.safetensors")
    enc = WhisperAudioEncoder.from_file(need(GOLDEN / "whisper_small_random.pt"), windowing="latentsync")
    feats = enc.features(gold["audio_16k"].numpy())
    assert tuple(feats.shape) == tuple(gold["whisper_embeddings"].shape) == (2100, 4, 64)
    assert float((feats - gold["whisper_embeddings"]).abs().max()) < 1e-5
    n = enc.num_frames(feats)
    assert n == 1052 == gold["frame_tokens"].shape[0]
    tokens = enc.frame_tokens(feats, 0, n)
    # Their token order: for each of the 10 steps, the 4 hidden states (step-major).
    assert float((tokens - gold["frame_tokens"]).abs().max()) < 1e-6


def _profile_yaml(tmp_path, unet: dict, windowing: str = "overlap"):
    import yaml

    from lipsync.profiles import load_profile

    prof = yaml.safe_load(Path(load_profile("latentsync-1.5").source).read_text())
    prof["unet"] = unet
    prof["audio"]["config"]["windowing"] = windowing
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(prof))
    return load_profile(str(path))


def test_no_profile_can_change_the_motion_groupnorm_of_latentsync_weights(tmp_path, unet_pt):
    """A profile on the latentsync preset that asks for 8 motion groups still gets 32; a profile with
    its own UNet config (no preset) loading LatentSync's file layout (latentsync_unet.pt,
    whisper/tiny.pt, sd-vae-ft-mse/) gets 32 as well."""
    from lipsync.pipeline.components import load_components, unet_config

    prof = _profile_yaml(tmp_path, {"preset": "latentsync", "motion_norm_num_groups": 8})
    assert unet_config(prof).motion_norm_num_groups == 32
    cfg = small_unet_config().to_dict()
    cfg["motion_norm_num_groups"] = 8
    prof = _profile_yaml(tmp_path, cfg, windowing="latentsync")
    ckpt = tmp_path / "ckpt"
    (ckpt / "whisper").mkdir(parents=True)
    (ckpt / "latentsync_unet.pt").symlink_to(unet_pt)
    (ckpt / "whisper" / "tiny.pt").symlink_to(need(GOLDEN / "whisper_small_random.pt"))
    (ckpt / "sd-vae-ft-mse").symlink_to(need(GOLDEN / "vae_small"))
    c = load_components(prof, ckpt)
    norms = {m.num_groups for n, m in c.unet.named_modules() if n.endswith("temporal_transformer.norm")}
    assert norms == {32}
    assert c.vae.config.scaling_factor == c.scaling_factor == 0.18215
    assert c.audio_encoder.windowing == "latentsync"  # the profile's switch to their 30 s windows
