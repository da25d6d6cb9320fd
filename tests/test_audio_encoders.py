"""Audio encoders: Whisper log-mel and encoder (parity with transformers, OpenAI / HF loading,
errors), LatentSync's per-frame token windows, overlapping 30 s windows, and the tiny profile's
mel/MFCC encoder. Small random weights built here; no network."""

from __future__ import annotations

import subprocess
import sys

import librosa
import numpy as np
import pytest
import torch

from lipsync.errors import CheckpointError
from lipsync.models.audio import (MelAudioEncoder, MelAudioEncoderConfig, WhisperAudioEncoder,
                                  frame_step_indices, prepare_samples)
from lipsync.models.whisper import (WhisperDims, WhisperEncoder, load_whisper_encoder, log_mel_spectrogram,
                                    sinusoids)

SR = 16000
SMALL = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts: voiced harmonics shaped by two formants, noise bursts, pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    out = np.zeros(n)
    pos = 0
    while pos < n:
        dur = int(rng.uniform(0.08, 0.3) * SR)
        kind = rng.random()
        t = np.arange(min(dur, n - pos)) / SR
        env = np.sin(np.pi * np.arange(len(t)) / dur) ** 2
        if kind < 0.15:
            seg = np.zeros(len(t))
        elif kind < 0.35:
            seg = np.diff(rng.standard_normal(len(t) + 1)) * 0.15
        else:
            f0, f1, f2 = rng.uniform(90, 230), rng.uniform(300, 900), rng.uniform(900, 2500)
            seg = np.zeros(len(t))
            for h in range(1, int(4000 / f0)):
                f = f0 * h
                gain = np.exp(-((f - f1) / 120) ** 2) + 0.6 * np.exp(-((f - f2) / 200) ** 2) + 0.02
                seg += gain * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
            seg *= 0.3 / max(1e-6, np.abs(seg).max())
        out[pos:pos + len(t)] = seg * env * rng.uniform(0.3, 1.0)
        pos += len(t)
    return out.astype(np.float32)


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.05, skip=("positional_embedding",)):
    """Perturb every parameter (LayerNorm weights and biases too) so no mapping error hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(s in name for s in skip):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


@pytest.fixture(scope="module")
def small_encoder() -> WhisperEncoder:
    torch.manual_seed(0)
    return randomize(WhisperEncoder(WhisperDims(**SMALL)), 1).eval()


@pytest.fixture(scope="module")
def hf_model_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=96, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = randomize(transformers.WhisperForConditionalGeneration(config), 2, skip=("embed_positions",)).eval()
    folder = tmp_path_factory.mktemp("whisper-tiny-hf")
    model.save_pretrained(folder)
    return model, folder


# ------------------------------------------------------------------------------------- log-mel


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """OpenAI Whisper's recipe in numpy/librosa (float64), normalised against the file's max."""
    y = audio.astype(np.float64)
    stft = librosa.stft(y, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=400, n_mels=80).astype(np.float64) @ power
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def test_log_mel_matches_numpy_librosa_reference():
    audio = speech_like(3.3, seed=5)[:52_799]  # odd length: frames = n // 160
    ours = log_mel_spectrogram(audio).numpy()
    ref = reference_log_mel(audio)
    assert ours.shape == ref.shape == (80, 52_799 // 160)
    assert np.abs(ours - ref).max() < 2e-4
    # torch input (float64) gives the same
    assert torch.allclose(log_mel_spectrogram(torch.from_numpy(audio.astype(np.float64))),
                          torch.from_numpy(ours), atol=1e-6)


def test_log_mel_is_normalised_against_the_whole_files_max():
    quiet = 0.002 * speech_like(31.0, seed=1)
    loud = speech_like(5.0, seed=2)
    audio = np.concatenate([quiet, loud])
    whole = log_mel_spectrogram(audio)
    first_window_alone = log_mel_spectrogram(audio[: 30 * SR])
    np.testing.assert_allclose(whole.numpy(), reference_log_mel(audio), atol=2e-4)
    # the loud end raises the floor of the quiet first 30 s; a per-window max would not
    floor = float(whole.max()) - 2.0
    assert float(whole[:, :3000].min()) == pytest.approx(floor, abs=1e-5)
    assert float(first_window_alone.min()) < floor - 0.5


# ------------------------------------------------------------------------------- Whisper encoder


def test_encoder_matches_transformers_on_every_hidden_state(hf_model_folder):
    model, folder = hf_model_folder
    ours = WhisperAudioEncoder.from_file(folder)
    enc = ours.encoder
    assert enc.dims == WhisperDims(80, 1500, 64, 4, 2, n_audio_mlp=96)
    mel = log_mel_spectrogram(speech_like(12.0, seed=3))
    batch = torch.zeros(1, 80, 3000)
    batch[0, :, : mel.shape[1]] = mel
    hf_enc = model.model.encoder
    block_outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: block_outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in hf_enc.layers]
    try:
        with torch.no_grad():
            ref = hf_enc(batch, output_hidden_states=True)
            states = enc(batch)
            final = enc.ln_post(states[:, :, -1])
    finally:
        for h in hooks:
            h.remove()
    assert states.shape == (1, 1500, 3, 64)
    torch.testing.assert_close(states[:, :, 0], ref.hidden_states[0], atol=1e-5, rtol=1e-5)  # input embedding
    for j, out in enumerate(block_outputs):  # every block's output, before ln_post
        torch.testing.assert_close(states[:, :, j + 1], out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    # the whole-file path (one padded window) gives the same states for the real steps
    feats = ours.encode_mel(mel)
    assert feats.shape == (mel.shape[1] // 2, 3, 64)
    torch.testing.assert_close(feats, states[0, : feats.shape[0]], atol=1e-6, rtol=1e-6)


def test_transformers_folder_variants_load_the_same_weights(hf_model_folder, tmp_path):
    from safetensors.torch import load_file

    _, folder = hf_model_folder
    reference = load_whisper_encoder(folder).state_dict()
    state = load_file(str(folder / "model.safetensors"))
    config = (folder / "config.json").read_text()
    # pytorch_model.bin with WhisperModel's "encoder." prefix
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text(config)
    torch.save({k[len("model."):]: v for k, v in state.items()}, bin_folder / "pytorch_model.bin")
    # the path of the weight file itself is accepted too
    for source in (bin_folder, folder / "model.safetensors"):
        loaded = load_whisper_encoder(source).state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def openai_checkpoint(encoder: WhisperEncoder, path, half: bool = False):
    dims = dict(n_mels=encoder.dims.n_mels, n_vocab=64, n_audio_ctx=encoder.dims.n_audio_ctx,
                n_audio_state=encoder.dims.n_audio_state, n_audio_head=encoder.dims.n_audio_head,
                n_audio_layer=encoder.dims.n_audio_layer, n_text_ctx=16, n_text_state=64, n_text_head=4,
                n_text_layer=1)
    state = {f"encoder.{k}": (v.half() if half else v.clone()) for k, v in encoder.state_dict().items()}
    state["decoder.token_embedding.weight"] = torch.randn(64, 64)
    state["decoder.positional_embedding"] = torch.randn(16, 64)
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path


def test_openai_checkpoint_loads_and_gives_identical_output(small_encoder, tmp_path):
    path = openai_checkpoint(small_encoder, tmp_path / "tiny.pt")
    loaded = WhisperAudioEncoder.from_file(path)
    assert loaded.encoder.dims == small_encoder.dims
    assert loaded.tokens_per_frame == 30 and loaded.token_dim == 64
    audio = speech_like(4.0, seed=4)
    expected = WhisperAudioEncoder(small_encoder).features(audio)
    assert torch.equal(loaded.features(audio), expected)
    # OpenAI ships fp16 weights: they load into float32
    half = WhisperAudioEncoder.from_file(openai_checkpoint(small_encoder, tmp_path / "half.pt", half=True))
    assert half.encoder.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(half.features(audio), expected, atol=0.05, rtol=0.05)


def test_checkpoint_errors_name_the_file_and_the_keys(small_encoder, hf_model_folder, tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt.*not found"):
        WhisperAudioEncoder.from_file(tmp_path / "nope.pt")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json.*not found"):
        load_whisper_encoder(empty)
    (empty / "config.json").write_text((hf_model_folder[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors.*not found"):
        load_whisper_encoder(empty)

    # wrong keys: one missing, one unexpected
    path = openai_checkpoint(small_encoder, tmp_path / "wrong.pt")
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["model_state_dict"]
    sd["encoder.blocks.0.attn.key.bias"] = torch.zeros(64)
    del sd["encoder.blocks.1.mlp.2.weight"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_whisper_encoder(path)
    assert "wrong.pt" in str(err.value)
    assert "blocks.1.mlp.2.weight" in str(err.value) and "blocks.0.attn.key.bias" in str(err.value)
    # dims that do not fit the tensors
    ckpt = torch.load(openai_checkpoint(small_encoder, tmp_path / "dims.pt"), weights_only=True)
    ckpt["dims"]["n_audio_ctx"] = 1000
    torch.save(ckpt, tmp_path / "dims.pt")
    with pytest.raises(CheckpointError, match="dims.pt.*positional_embedding"):
        load_whisper_encoder(tmp_path / "dims.pt")
    # not a Whisper file at all
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}}, tmp_path / "unet.pt")
    with pytest.raises(CheckpointError, match="unet.pt.*no Whisper encoder weights"):
        load_whisper_encoder(tmp_path / "unet.pt")

    # truncated files
    good = openai_checkpoint(small_encoder, tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_whisper_encoder(tmp_path / "cut.pt")
    cut = tmp_path / "cut_hf"
    cut.mkdir()
    (cut / "config.json").write_text((hf_model_folder[1] / "config.json").read_text())
    data = (hf_model_folder[1] / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut_hf/model.safetensors.*truncated"):
        load_whisper_encoder(cut)


def test_sinusoids_match_openai_formula():
    table = sinusoids(1500, 384)
    inc = np.log(10000) / (192 - 1)
    t = np.arange(1500)[:, None] * np.exp(-inc * np.arange(192))[None]
    np.testing.assert_allclose(table.numpy(), np.concatenate([np.sin(t), np.cos(t)], 1), atol=2e-4)


# ------------------------------------------------------------------------------------- tokens


def latentsync_sliced_feature(feature_array: torch.Tensor, vid_idx: int) -> torch.Tensor:
    """LatentSync's Audio2Feature.get_sliced_feature (audio_feat_length [2, 2], 25 fps)."""
    length = len(feature_array)
    center = int(vid_idx * 50 / 25)
    picked = [feature_array[min(max(idx, 0), length - 1)] for idx in range(center - 4, center + 6)]
    return torch.cat(picked, dim=0).reshape(-1, feature_array.shape[-1])


def test_frame_tokens_take_steps_2i_minus_4_to_2i_plus_5_steps_major(small_encoder):
    enc = WhisperAudioEncoder(small_encoder)
    steps, layers, dim = 23, 3, 64
    step_id = torch.arange(steps, dtype=torch.float32)[:, None, None]
    layer_id = torch.arange(layers, dtype=torch.float32)[None, :, None]
    features = (100 * step_id + layer_id).expand(steps, layers, dim).contiguous()
    assert enc.num_frames(features) == steps // 2 + 2 == 13
    tokens = enc.frame_tokens(features, 0, 15)  # beyond num_frames is allowed (clamped)
    assert tokens.shape == (15, 10 * layers, dim)
    for i in range(15):
        for k in range(10):
            for j in range(layers):
                assert tokens[i, layers * k + j, 0] == 100 * min(max(2 * i - 4 + k, 0), steps - 1) + j
        assert torch.equal(tokens[i], latentsync_sliced_feature(features, i))
    # a slice equals the same frames of the full range; a batch dim is carried through
    assert torch.equal(enc.frame_tokens(features, 5, 9), tokens[5:9])
    assert torch.equal(enc.frame_tokens(features[None].repeat(2, 1, 1, 1), 5, 9)[1], tokens[5:9])
    assert enc.frame_tokens(features, 4, 4).shape == (0, 30, 64)
    idx = frame_step_indices(steps, 0, 3, 2, range(-4, 6))
    assert idx.tolist()[0] == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5] and idx.tolist()[2] == list(range(0, 10))
    for bad in ((-1, 3), (5, 4)):
        with pytest.raises(ValueError):
            enc.frame_tokens(features, *bad)
    with pytest.raises(TypeError):
        enc.frame_tokens(features, 0.0, 3)
    with pytest.raises(ValueError, match="dims"):
        enc.frame_tokens(features[0], 0, 3)


def test_whole_file_covers_latentsync_frame_count(small_encoder):
    enc = WhisperAudioEncoder(small_encoder)
    audio = speech_like(2.0, seed=6)  # 32000 samples -> 200 mel frames -> 100 steps -> 52 frames
    feats = enc.features(audio)
    assert feats.shape == (100, 3, 64) and enc.num_frames(feats) == 52
    # LatentSync's feature2chunks loop: while True: append; stop once int(2 i) > L
    count, i = 0, 0
    while True:
        count += 1
        if int(i * 2.0) > len(feats):
            break
        i += 1
    assert count == enc.num_frames(feats)


# --------------------------------------------------------------------------------- long audio


def test_short_files_are_one_window_padded_like_latentsync(small_encoder):
    audio = speech_like(7.0, seed=7)
    mel = log_mel_spectrogram(audio)
    padded = torch.zeros(1, 80, 3000)
    padded[0, :, : mel.shape[1]] = mel
    with torch.no_grad():
        expected = small_encoder(padded)[0, : mel.shape[1] // 2]
    for windowing in ("overlap", "latentsync"):
        feats = WhisperAudioEncoder(small_encoder, windowing=windowing).features(audio)
        torch.testing.assert_close(feats, expected, atol=1e-6, rtol=1e-6)
    silence_padded = WhisperAudioEncoder(small_encoder, pad_mode="silence").features(audio)
    assert not torch.allclose(silence_padded, expected, atol=1e-3)


def step_jumps(features: torch.Tensor) -> torch.Tensor:
    return (features[1:] - features[:-1]).flatten(1).norm(dim=1)  # jumps[t] = |f[t+1] - f[t]|


def test_overlapping_windows_remove_the_seam_at_30s(small_encoder):
    audio = speech_like(65.0, seed=8)
    naive_enc = WhisperAudioEncoder(small_encoder, windowing="latentsync")
    overlap_enc = WhisperAudioEncoder(small_encoder)
    mel = overlap_enc.mel(audio)
    naive, overlap = naive_enc.encode_mel(mel), overlap_enc.encode_mel(mel)
    assert naive.shape == overlap.shape == (3250, 3, 64)

    # LatentSync jumps at the 30 s boundary (step 1500) and at 60 s; ours changes as smoothly as anywhere
    jumps_naive, jumps_overlap = step_jumps(naive), step_jumps(overlap)
    typical = jumps_overlap.median()
    assert jumps_naive[1499] > 3 * typical and jumps_naive[2999] > 3 * typical
    assert jumps_overlap.max() < 1.6 * typical

    # with positions taken out (they are absolute within a window), a window centred on the
    # boundary is the ideal reference for the steps around it
    flat = WhisperEncoder(small_encoder.dims)
    flat.load_state_dict(small_encoder.state_dict())
    flat.positional_embedding.zero_()
    with torch.no_grad():
        ideal = flat(mel[None, :, 1500:4500])[0]  # steps 750 .. 2249
    near = slice(1497, 1503)

    def deviation(feats):
        diff = (feats[750:2250] - ideal).flatten(1).norm(dim=1) / ideal.flatten(1).norm(dim=1)
        return diff[near.start - 750: near.stop - 750].max()

    flat_naive = WhisperAudioEncoder(flat, windowing="latentsync").encode_mel(mel)
    flat_overlap = WhisperAudioEncoder(flat).encode_mel(mel)
    assert deviation(flat_overlap) < 0.5 * deviation(flat_naive)


def test_long_audio_tokens_for_a_slice_only(small_encoder):
    enc = WhisperAudioEncoder(small_encoder, batch_windows=8)
    audio = speech_like(600.0, seed=9)  # 10 min
    feats = enc.features(audio)
    assert feats.shape == (30_000, 3, 64) and feats.dtype == torch.float32
    assert enc.num_frames(feats) == 15_002
    tokens = enc.frame_tokens(feats, 9_000, 9_016)
    assert tokens.shape == (16, 30, 64)
    assert torch.equal(tokens[3], latentsync_sliced_feature(feats, 9_003))
    end = enc.frame_tokens(feats, 15_000, 15_010)  # past the end: the last steps repeat
    assert torch.equal(end[-1], feats[-1].repeat(10, 1))


# ---------------------------------------------------------------------------- input handling


def test_input_types_channels_and_rates(small_encoder):
    enc = WhisperAudioEncoder(small_encoder)
    audio = speech_like(1.5, seed=10)
    pcm = np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)
    ref = enc.features(pcm.astype(np.float32) / 32768.0)
    assert torch.equal(enc.features(pcm), ref)
    assert torch.allclose(enc.features(pcm.astype(np.float64) / 32768.0), ref, atol=1e-5)
    assert torch.equal(enc.features(np.stack([pcm, pcm]).astype(np.float32) / 32768.0), ref)
    assert torch.equal(enc.features(torch.from_numpy(pcm)), ref)
    resampled = enc.features(librosa.resample(audio, orig_sr=SR, target_sr=48000), sample_rate=48000)
    assert abs(resampled.shape[0] - ref.shape[0]) <= 1
    assert prepare_samples(np.array([0, 255], np.uint8)).tolist() == [-1.0, 127 / 128]

    with pytest.raises(ValueError, match="empty"):
        enc.features(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        enc.features(np.array([0.0, np.nan] * 500))
    with pytest.raises(ValueError, match="channels"):
        enc.features(np.zeros((1000, 2), np.float32))
    for n in (1, 100, 399):  # shorter than one video frame (640 samples): still one step
        feats = enc.features(np.full(n, 0.1, np.float32))
        assert feats.shape == (1, 3, 64) and torch.isfinite(feats).all()
        assert enc.frame_tokens(feats, 0, enc.num_frames(feats)).shape == (2, 30, 64)


def test_whisper_weights_are_frozen_and_inference_is_gradient_free(small_encoder):
    enc = WhisperAudioEncoder(small_encoder)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.encoder.training
    feats = enc.features(speech_like(0.5, seed=11))
    assert not feats.requires_grad


@pytest.mark.gpu
def test_gpu_matches_cpu(small_encoder):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    audio = speech_like(40.0, seed=12)
    cpu = WhisperAudioEncoder(small_encoder).features(audio)
    gpu_enc = WhisperAudioEncoder(WhisperEncoder(small_encoder.dims)).to("cuda")
    gpu_enc.encoder.load_state_dict(small_encoder.state_dict())
    gpu = gpu_enc.features(audio)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=2e-3)
    mel = MelAudioEncoder().eval()
    with torch.no_grad():
        ref = mel.features(audio)
        torch.testing.assert_close(mel.to("cuda").features(audio).cpu(), ref, atol=2e-3, rtol=2e-3)


# ------------------------------------------------------------------------------ mel encoder


def make_mel_encoder(seed: int = 0, **kwargs) -> MelAudioEncoder:
    torch.manual_seed(seed)
    return MelAudioEncoder(MelAudioEncoderConfig(hidden_dim=64, token_dim=48, **kwargs))


def test_mel_encoder_shapes_and_determinism():
    enc = make_mel_encoder().eval()
    assert enc.tokens_per_frame == 10 and enc.token_dim == 48
    audio = speech_like(2.0, seed=13)  # 200 mel frames -> 50 steps at 25 Hz
    inputs = enc.input_features(audio)
    assert inputs.shape == (80 + 13 * 3, 200)
    with torch.no_grad():
        feats = enc.features(audio)
        assert feats.shape == (50, 48) and enc.num_frames(feats) == 50
        tokens = enc.frame_tokens(feats, 0, 50)
        assert tokens.shape == (50, 10, 48)
        assert torch.equal(enc.features(audio), feats)  # same call twice
        assert torch.equal(make_mel_encoder().eval().features(audio), feats)  # same seed, same model
        # token k of frame i is step i - 4 + k (clamped) plus slot k's embedding
        assert torch.allclose(tokens[10, 4] - enc.slot_embedding[4], feats[10])
        assert torch.allclose(tokens[0, 0] - enc.slot_embedding[0], feats[0])
        assert torch.allclose(enc(inputs[None], 3, 7)[0], tokens[3:7])
    short = enc.features(np.zeros(10, np.float32))
    assert short.shape == (1, 48)
    with pytest.raises(ValueError, match="empty"):
        enc.features(np.zeros(0))


def test_mel_encoder_is_differentiable():
    enc = make_mel_encoder().train()
    inputs = torch.stack([enc.input_features(speech_like(1.0, seed=s)) for s in (14, 15)])
    tokens = enc(inputs, 2, 18)
    assert tokens.shape == (2, 16, 10, 48)
    tokens.pow(2).mean().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_mel_encoder_save_and_load_round_trip(tmp_path):
    enc = make_mel_encoder(seed=3, dilations=(1, 3), context_before=3, context_after=4).eval()
    enc.save_pretrained(tmp_path / "audio_encoder")
    assert sorted(p.name for p in (tmp_path / "audio_encoder").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MelAudioEncoder.from_pretrained(tmp_path / "audio_encoder").eval()
    assert loaded.config == enc.config and loaded.tokens_per_frame == 8
    audio = speech_like(1.2, seed=16)
    with torch.no_grad():
        a, b = enc.features(audio), loaded.features(audio)
        assert torch.equal(a, b)
        assert torch.equal(enc.frame_tokens(a, 0, 5), loaded.frame_tokens(b, 0, 5))
    (tmp_path / "audio_encoder" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.*not found"):
        MelAudioEncoder.from_pretrained(tmp_path / "audio_encoder")
    with pytest.raises(CheckpointError, match="config.json"):
        MelAudioEncoder.from_pretrained(tmp_path / "nothing_here")


def test_mel_encoder_responds_to_content_not_to_gain():
    enc = make_mel_encoder().eval()
    speech = speech_like(3.0, seed=17)
    with torch.no_grad():
        silent = enc.features(np.zeros_like(speech))
        talk = enc.features(speech)
        quieter = enc.features(speech * 0.1)
    assert (silent[12:-12] - silent[12]).abs().max() < 1e-5  # silence is constant beyond the receptive field
    assert (talk - silent).norm(dim=1).mean() > 0.3 * silent.norm(dim=1).mean()
    assert talk[12:-12].std(dim=0).mean() > 0.1  # speech varies over time, silence does not
    torch.testing.assert_close(quieter, talk, atol=1e-3, rtol=1e-3)  # level-normalised input


def test_mel_encoder_long_audio_and_device_placement():
    enc = make_mel_encoder().eval()
    with torch.no_grad():
        feats = enc.features(speech_like(600.0, seed=18).astype(np.float64))
        assert feats.shape == (15_000, 48)
        tokens = enc.frame_tokens(feats, 7_000, 7_016)
        assert tokens.shape == (16, 10, 48)
    moved = enc.to(torch.device("cpu"))
    assert moved.device.type == "cpu" and moved.features(np.ones(1000) * 0.1).device.type == "cpu"


def test_product_code_imports_neither_transformers_nor_ray():
    code = ("import sys, lipsync.models.audio, lipsync.models.whisper; "
            "bad = [m for m in ('transformers', 'ray') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("steps", [1501, 1600, 2451, 3250, 30_000])
def test_overlap_weights_sum_to_one_and_keep_context(steps):
    from lipsync.models.whisper import _crossfade_weights

    win, context, blend = 1500, 250, 50
    starts = list(range(0, steps - win, win - 2 * context - blend)) + [steps - win]
    total = torch.zeros(steps)
    for start, weight in zip(starts, _crossfade_weights(starts, win, blend, "cpu")):
        total[start:start + win] += weight
        used = torch.nonzero(weight > 0).flatten() + start
        left = used.min() - start if start > 0 else context  # the file start is a real edge
        right = start + win - 1 - used.max() if start + win < steps else context
        assert min(left, right) >= context
    torch.testing.assert_close(total, torch.ones(steps))
