"""The pipeline's plain parts: window planning and blending, length rules, voice activity, profiles."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.errors import CheckpointError
from lipsync.pipeline.frames import loop_index
from lipsync.pipeline.inputs import voice_activity
from lipsync.pipeline.windows import Blender, Window, WindowPlanner, window_weights
from lipsync.profiles import ProfileError, available_profiles, load_profile


def plan(flags, size=16, overlap=4):
    p = WindowPlanner(size, overlap)
    out = []
    for j, f in enumerate(flags):
        out += p.push(j, f)
    out += p.finish()
    return out


def test_windows_cover_every_face_frame_once_or_with_overlap_and_skip_no_face():
    flags = [True] * 40 + [False] * 3 + [True] * 30 + [False] + [True] * 5
    wins = plan(flags)
    covered = set()
    for w in wins:
        assert len(w) <= 16
        assert all(flags[j] for j in w.frames)  # never spans a frame without a face
        covered |= set(w.frames)
    assert covered == {j for j, f in enumerate(flags) if f}
    assert Window(0, 16) in wins and Window(12, 28) in wins and Window(24, 40) in wins
    assert Window(74, 79) in wins  # a short run gets one short window


def test_earliest_future_start_is_a_promise():
    flags = [True] * 37 + [False] + [True] * 20
    p = WindowPlanner(16, 4)
    promises, emitted = [], []
    for j, f in enumerate(flags):
        emitted += [(j, w) for w in p.push(j, f)]
        promises.append((j, p.earliest_future_start()))
    emitted += [(len(flags), w) for w in p.finish()]
    for j, limit in promises:
        assert all(w.start >= limit for when, w in emitted if when > j)


def test_blending_is_a_weighted_mean_that_ramps_across_the_overlap():
    w = window_weights(16, 4)
    assert w[0] < w[2] < w[4] == 1.0 and w[-1] < w[-3] < 1.0
    b = Blender()
    b.add(Window(0, 16), np.full((16, 2, 2, 3), 100, np.uint8), 4)
    b.add(Window(12, 28), np.full((16, 2, 2, 3), 200, np.uint8), 4)
    mid = [int(b.pop(j)[0, 0, 0]) for j in range(10, 18)]
    assert mid[0] == 100 and mid[-1] == 200
    assert all(a <= c for a, c in zip(mid, mid[1:]))  # a monotone cross-fade, no jump
    assert b.pop(99) is None


@pytest.mark.parametrize("mode, want", [
    ("pingpong", [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]),
    ("repeat", [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]),
    ("freeze", [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 3]),
])
def test_length_rules(mode, want):
    assert [loop_index(j, 4, mode) for j in range(11)] == want
    assert [loop_index(j, 1, mode) for j in range(3)] == [0, 0, 0]


def test_voice_activity_finds_speech_and_silence():
    sr = 16000
    t = np.arange(sr * 3) / sr
    x = np.zeros_like(t)
    x[sr // 2: 2 * sr] = 0.3 * np.sin(2 * np.pi * 220 * t[sr // 2: 2 * sr]) * (1 + np.sin(2 * np.pi * 3 * t[sr // 2: 2 * sr]))
    x += 0.001 * np.random.default_rng(0).standard_normal(len(x))
    va = voice_activity(x.astype(np.float32), 75)
    assert va[20:45].all() and not va[:8].any() and not va[60:].any()


def test_profiles_load_and_missing_weights_name_the_file(tmp_path):
    assert {"tiny", "latentsync-1.5", "latentsync-1.6"} <= set(available_profiles())
    p15, p16 = load_profile("latentsync-1.5"), load_profile("latentsync-1.6")
    assert (p15.resolution, p16.resolution) == (256, 512)
    with pytest.raises(CheckpointError) as e:
        p15.files["unet"].resolve(tmp_path)
    msg = str(e.value)
    assert "latentsync_unet.pt" in msg and "LatentSync 1.5 UNet" in msg and "huggingface.co" in msg
    (tmp_path / "latentsync_unet.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        p15.files["unet"].resolve(tmp_path)
    with pytest.raises(ProfileError, match="available"):
        load_profile("nope")


def test_profile_sha256_is_verified(tmp_path):
    from lipsync.models.weights import sha256_file
    from lipsync.profiles import WeightFile

    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    good = WeightFile("unet", "w.pt", "test weights", sha256=sha256_file(f))
    assert good.resolve(tmp_path) == f
    bad = WeightFile("unet", "w.pt", "test weights", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        bad.resolve(tmp_path)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_and_x0_estimate_match_the_ddim_scheduler(prediction_type):
    """Training's target and one-step estimate agree with what DDIM does with the UNet's output."""
    import torch

    from lipsync.pipeline.denoise import latentsync_scheduler, predicted_x0, training_target

    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(1, 4, 3, 6, 6, generator=g), torch.randn(1, 4, 3, 6, 6, generator=g)
    sched = latentsync_scheduler(prediction_type)
    sched.set_timesteps(20)
    for t in (sched.timesteps[0], sched.timesteps[10], sched.timesteps[-1]):
        ab = sched.alphas_cumprod[t]
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        target = training_target(prediction_type, z0, noise, ab)
        assert torch.allclose(predicted_x0(prediction_type, zt, target, ab), z0, atol=1e-4)
        # A perfect model's output makes DDIM's own clean-image estimate exact too.
        step = sched.step(target, t, zt)
        assert torch.allclose(step.pred_original_sample, z0, atol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        latentsync_scheduler("sample")


def test_tiny_profile_scheduler_predicts_v():
    from lipsync.pipeline.components import random_components
    from lipsync.profiles import load_profile

    assert load_profile("latentsync-1.5").prediction_type == "epsilon"
    c = random_components(load_profile("tiny"), parts={"unet"})
    assert c.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("shift", [0, 5])
def test_reference_shift_feeds_another_frame_of_the_window_as_reference(shift):
    """settings.reference_shift: frame i's reference latent is the window's frame (i + shift) mod F."""
    import torch

    from lipsync.pipeline.components import random_components, scheduler_of
    from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser

    c = random_components(load_profile("tiny"), parts={"vae"})
    seen = []

    def unet(inp, t, tokens):
        seen.append(inp[:, 9:13].clone())  # the reference channels
        return torch.zeros_like(inp[:, :4])

    den = WindowDenoiser(unet, c.vae, scheduler_of(c.profile), c.scaling_factor, c.shift_factor)
    f = 6
    crops = np.zeros((1, f, 96, 96, 3), np.uint8)
    for i in range(f):
        crops[0, i] = 40 * i  # every frame its own grey, so each latent tells its frame
    own = den._encode(torch.from_numpy(crops[0]).float().div(127.5).sub(1).permute(0, 3, 1, 2))
    den(crops, np.ones((96, 96), np.float32), torch.zeros(1, f, 10, 64), den.initial_noise(96, 0),
        DenoiseSettings(num_steps=2, guidance_scale=1.0, reference_shift=shift))
    for i in range(f):
        assert torch.allclose(seen[0][0, :, i], own[(i + shift) % f], atol=1e-5)


def test_paste_mask_keeps_the_box_corners_when_the_profile_has_an_ellipse():
    """tiny pastes the regenerated box cut to a face ellipse: the lips and the chin are pasted, the
    box's lower corners (background beside the jaw) and the whole upper face are not."""
    from lipsync.pipeline.stages import paste_mask_of, regen_mask_of

    prof = load_profile("tiny")
    box, paste = regen_mask_of(prof), paste_mask_of(prof)
    s = prof.resolution
    assert paste.shape == box.shape and np.all(paste <= box)
    assert paste[int(0.6 * s), s // 2] == 1 and paste[int(0.88 * s), s // 2] == 1  # lips, chin
    assert paste[int(0.95 * s), int(0.05 * s)] == 0 and box[int(0.95 * s), int(0.05 * s)] == 1  # a corner
    assert not paste[: s // 2].any()
    assert np.array_equal(paste_mask_of(load_profile("latentsync-1.5")), regen_mask_of(load_profile("latentsync-1.5")))
