"""SyncNet: shapes, normalisation, files, the pair sampler, SyncNet v2 loading, and the LSE search
of a SyncNet trained here on synthetic clips (aligned vs audio shifted by 5 frames)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from eval_helpers import delayed, fit_test_syncnet, one_thread, render, train_clips
from lipsync.errors import CheckpointError
from lipsync.models.syncnet import (SyncClip, SyncNet, SyncNetConfig, SyncNetV2, load_syncnet, log_mel, lower_half,
                                    make_pairs, mfcc_v2, sync_loss)


def test_shapes_and_normalised_embeddings():
    torch.manual_seed(0)
    for cfg in (SyncNetConfig(), SyncNetConfig(num_frames=16, image_size=(24, 48))):
        model = SyncNet(cfg).eval()
        frames = torch.rand(3, cfg.num_frames, 3, 48, 96) * 2 - 1  # resized to image_size inside
        mel = torch.randn(3, 1, 80, cfg.mel_steps)
        with torch.no_grad():
            v, a = model(frames, mel)
        assert v.shape == a.shape == (3, cfg.embed_dim)
        assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    model = SyncNet()
    with pytest.raises(ValueError, match="frames must be shaped"):
        model.embed_video(torch.zeros(1, 4, 3, 32, 64))
    with pytest.raises(ValueError, match="mel must be shaped"):
        model.embed_audio(torch.zeros(1, 1, 80, 19))


def test_lower_half_and_log_mel():
    crops = np.zeros((2, 5, 96, 96, 3), np.uint8)
    crops[..., 48:, :, :] = 255
    x = lower_half(crops)
    assert x.shape == (2, 5, 3, 48, 96) and float(x.min()) == 1.0  # only the (white) lower half
    assert lower_half(crops[0], (32, 64)).shape == (5, 3, 32, 64)
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(16000) * np.sin(np.linspace(0, 20, 16000)) * 0.3).astype(np.float32)
    mel = log_mel(speech)
    assert mel.shape == (80, 101) and mel.dtype == np.float32
    assert mel.max() == pytest.approx(1.0) and mel.min() >= -1.0
    np.testing.assert_allclose(log_mel(speech * 0.05), mel, atol=1e-4)  # level-independent
    as_int16 = log_mel((speech * 32767).astype(np.int16))  # PCM is scaled; quantisation noise aside, equal
    assert np.abs(as_int16 - mel).mean() < 0.01


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    cfg = SyncNetConfig(num_frames=5, image_size=(24, 48), embed_dim=32)
    model = SyncNet(cfg).eval()
    model.save_pretrained(tmp_path / "sn")
    raw = json.loads((tmp_path / "sn" / "config.json").read_text())
    assert raw["model_type"] == "lipsync_syncnet" and raw["image_size"] == [24, 48]
    assert SyncNetConfig.from_dict(raw) == cfg
    loaded = load_syncnet(tmp_path / "sn")
    assert isinstance(loaded, SyncNet) and not loaded.training
    frames, mel = torch.rand(2, 5, 3, 24, 48), torch.randn(2, 1, 80, 20)
    with torch.no_grad():
        for x, y in zip(model(frames, mel), loaded(frames, mel)):
            torch.testing.assert_close(x, y)
    # A config of another model, and weights of the wrong shape, are refused by name.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "other"}')
    with pytest.raises(CheckpointError, match="not a SyncNet config"):
        SyncNet.from_pretrained(tmp_path / "bad")
    SyncNet(SyncNetConfig(embed_dim=16)).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(CheckpointError, match="wrong shape"):
        SyncNet.from_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="not found"):
        load_syncnet(tmp_path / "nothing")


def test_make_pairs_is_balanced_and_shifts_negatives():
    # Frame t of clip c shows the value t (so does mel column 4t..4t+3): the sampled windows
    # reveal their starts.
    n = 60
    clips = []
    for c in range(2):
        frames = np.repeat(np.arange(n, dtype=np.float32)[:, None, None, None], 3, 1) * np.ones((1, 3, 4, 8), np.float32)
        mel = np.repeat(np.arange(n * 4, dtype=np.float32)[None] // 4, 80, 0) + 1000 * c
        valid = np.ones(n, bool)
        valid[30] = False  # no window may contain frame 30
        clips.append(SyncClip(torch.from_numpy(frames + 1000 * c), mel, valid))
    cfg = SyncNetConfig(num_frames=5)
    frames, mel, labels = make_pairs(clips, 64, cfg, np.random.default_rng(0), min_shift=3, max_shift=8,
                                     other_clip=0.25)
    assert frames.shape == (64, 5, 3, 4, 8) and mel.shape == (64, 1, 80, 20) and labels.shape == (64,)
    assert labels.sum() == 32
    v_start = frames[:, 0, 0, 0, 0].numpy()
    a_start = mel[:, 0, 0, 0].numpy()
    assert not np.any((v_start % 1000 <= 30) & (v_start % 1000 > 25))  # windows avoid the faceless frame
    pos = labels.numpy() == 1
    np.testing.assert_array_equal(v_start[pos], a_start[pos])
    same = (~pos) & (v_start // 1000 == a_start // 1000)
    shift = np.abs(v_start[same] - a_start[same])
    assert same.sum() > 16 and shift.min() >= 3 and shift.max() <= 8
    assert ((~pos) & ~same).sum() >= 1  # some negatives come from the other clip
    # The loss: gradients reach the frames (the frozen-supervisor use).
    model = SyncNet(SyncNetConfig(image_size=(8, 16))).eval()
    x = (frames[:4] / 1000).requires_grad_()
    loss = sync_loss(model, x, mel[:4] / 1000, torch.ones(4))
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and float(x.grad.abs().sum()) > 0


def test_syncnet_v2_loads_public_layout_and_rejects_bad_files(tmp_path):
    torch.manual_seed(2)
    ref = SyncNetV2().eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}  # old torch files
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    model = SyncNetV2.from_file(path)
    assert not model.training
    assert "netcnnlip.0.weight" in state and tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    with torch.no_grad():
        aud = model.forward_aud(torch.randn(2, 1, 13, 20))
        lip = model.forward_lip(torch.rand(1, 3, 5, 224, 224) * 255)
    assert aud.shape == (2, 1024) and lip.shape == (1, 1024)
    with torch.no_grad():
        x = torch.randn(3, 1, 13, 20)
        torch.testing.assert_close(model.forward_aud(x), ref.forward_aud(x))
    assert isinstance(load_syncnet(path), SyncNetV2)

    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        SyncNetV2.from_file(truncated)
    assert str(truncated) in str(err.value)
    partial = tmp_path / "partial.model"
    torch.save({k: v for k, v in state.items() if not k.startswith("netfclip")}, partial)
    with pytest.raises(CheckpointError, match="missing: netfclip"):
        SyncNetV2.from_file(partial)
    with pytest.raises(CheckpointError, match="file not found"):
        SyncNetV2.from_file(tmp_path / "absent.model")


def test_mfcc_v2_layout():
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    cc = mfcc_v2(audio)
    assert cc.shape == (13, 1 + int(np.ceil((16000 - 400) / 160)))
    assert np.isfinite(cc).all()
    # c0 is the log energy of the int16-scaled, pre-emphasised frame.
    x = audio.astype(np.float64) * 32768
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    frame = x[160:560]
    assert cc[0, 1] == pytest.approx(np.log(np.sum(np.abs(np.fft.rfft(frame, 512)) ** 2) / 512), rel=1e-5)


# ---------------------------------------------------------------------------- a trained SyncNet


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A test-sized SyncNet trained on three 4-s synthetic clips, and a fourth clip it never saw."""
    root = tmp_path_factory.mktemp("syncnet_corpus")
    t0 = time.perf_counter()
    dirs = [render(root, f"c{k}", seed=500 + k) for k in range(4)]
    t_render = time.perf_counter() - t0
    with one_thread():
        clips, analyses = train_clips(dirs)
        model, hist = fit_test_syncnet(clips[:3])
    return {"model": model, "hist": hist, "held_out": dirs[3], "analysis": analyses[3], "render_s": t_render}


def test_lse_finds_a_five_frame_shift_and_confidence_drops(trained):
    """The issue's test: the held-out clip with its own audio is found in sync; with the audio
    delayed by 5 frames the search finds offset -5 (audio late; see docs/eval.md for the sign)
    and the confidence at offset 0 collapses; audio 5 frames early gives +5."""
    from lipsync.eval.evaluator import sync_metrics
    from lipsync.eval.sync import OurScorer
    from lipsync.media.audio import load_audio

    hist = trained["hist"]
    print(f"\nSyncNet fit: {hist['steps']} steps in {hist['wall_seconds']:.1f} s, final loss "
          f"{np.mean(hist['loss'][-50:]):.3f}, accuracy {np.mean(hist['accuracy'][-50:]):.2f}")
    samples = load_audio(str(trained["held_out"] / "audio.wav"))
    scorer = OurScorer(trained["model"])
    results = {}
    with one_thread():
        for shift in (0, 5, -5):
            res, _ = sync_metrics(scorer, trained["analysis"], delayed(samples, shift))
            results[shift] = res
            print(f"audio delayed {shift:+d} frames: LSE-D {res['lse_d']:.3f} LSE-C {res['lse_c']:.3f} "
                  f"offset {res['offset']:+d} confidence@0 {res['confidence_at_0']:.3f} "
                  f"accuracy {res['accuracy']:.1f} %")
    aligned, late, early = results[0], results[5], results[-5]
    assert abs(aligned["offset"]) <= 1
    assert abs(late["offset"] - (-5)) <= 1
    assert abs(early["offset"] - 5) <= 1
    assert aligned["lse_c"] > 0.1
    assert late["confidence_at_0"] < 0.5 * aligned["lse_c"]
    assert early["confidence_at_0"] < 0.5 * aligned["lse_c"]
    assert aligned["accuracy"] > late["accuracy"] + 10
