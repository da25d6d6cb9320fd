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


# -- samplers, guidance interval, DeepCache (issue 22) ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_window():
    """A random tiny model and one 4-frame window: crops, keep mask, tokens, the seed's noise."""
    import torch

    from lipsync.pipeline.components import random_components
    from lipsync.pipeline.denoise import WindowDenoiser

    c = random_components(load_profile("tiny"))
    den = WindowDenoiser(c.unet, c.vae, c.scheduler, c.scaling_factor, c.shift_factor)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (1, 4, 96, 96, 3), dtype=np.uint8)
    keep = np.ones((96, 96), np.float32)
    keep[48:] = 0
    tokens = torch.from_numpy(rng.standard_normal((1, 4, 10, 64)).astype(np.float32))
    return den, crops, keep, tokens, den.initial_noise(96, 5)


def old_ddim_path(den, crops, keep_mask, tokens, noise, settings):
    """The denoising loop as it was before the samplers (DDIM, guidance batched on every step,
    DeepCache every N steps), kept here to prove `--scheduler ddim` is still it, bit for bit."""
    import torch

    from lipsync.models import vae as vae_ops
    from lipsync.pipeline.denoise import condition_latents, crops_to_pixels, unet_input

    b, f, s = crops.shape[:3]
    x = crops_to_pixels(crops, den.dtype).reshape(b * f, 3, s, s)
    keep = torch.as_tensor(np.asarray(keep_mask, dtype=np.float64))[None, None].to(den.latent_dtype)
    mask_lat, masked, ref = condition_latents(den._encode, x, keep, b, f, mask_resize=settings.mask_resize)
    if settings.reference_shift % f:
        ref = ref.roll(-settings.reference_shift, dims=2)
    h, w = ref.shape[-2:]
    latents = noise.to(den.latent_dtype).expand(b, -1, f, -1, -1).clone() * den.scheduler.init_noise_sigma
    cfg = settings.guidance_scale > 1.0
    cond_in = torch.cat([torch.zeros_like(tokens), tokens]) if cfg else tokens
    den.scheduler.set_timesteps(settings.num_steps)
    cache = {} if settings.deepcache_interval > 1 else None
    with torch.no_grad():
        for i, t in enumerate(den.scheduler.timesteps):
            inp = unet_input(den.scheduler.scale_model_input(latents, t), mask_lat, masked, ref)
            if cfg:
                inp = torch.cat([inp, inp])
            kw = {} if cache is None else {"cache": cache, "reuse_deep": i % settings.deepcache_interval != 0}
            eps = den.unet(inp, t, cond_in, **kw).to(den.latent_dtype)
            if cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + settings.guidance_scale * (cond - uncond)
            latents = den.scheduler.step(eps, t, latents).prev_sample
        lat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, latents.shape[1], h, w)
        return vae_ops.decode(den.vae, lat, den.scaling, den.shift, clamp=False)


@pytest.mark.parametrize("deepcache", [0, 3])
def test_ddim_20_steps_is_the_old_path_bit_for_bit(tiny_window, deepcache):
    import torch

    from lipsync.pipeline.denoise import DenoiseSettings

    den, crops, keep, tokens, noise = tiny_window
    settings = DenoiseSettings(20, 3.5, deepcache, reference_shift=2, scheduler="ddim")
    new = den.decoded(crops, keep, tokens, noise, settings)
    assert torch.equal(new, old_ddim_path(den, crops, keep, tokens, noise, settings))
    # guidance on the interval [0, 1] is guidance on every step
    full = DenoiseSettings(20, 3.5, deepcache, reference_shift=2, scheduler="ddim", guidance_interval=(0.0, 1.0))
    assert torch.equal(den.decoded(crops, keep, tokens, noise, full), new)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++", "unipc", "deis", "euler"])
def test_every_scheduler_gives_finite_deterministic_crops(tiny_window, scheduler):
    from lipsync.pipeline.denoise import DenoiseSettings

    den, crops, keep, tokens, noise = tiny_window
    settings = DenoiseSettings(4, 3.5, reference_shift=2, scheduler=scheduler, guidance_interval=(0.0, 0.6))
    a = den(crops, keep, tokens, noise, settings)
    b = den(crops, keep, tokens, den.initial_noise(96, 5), settings)  # the same seed, drawn again
    assert a.shape == crops.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    out = den.decoded(crops, keep, tokens, noise, settings)
    assert out.isfinite().all()
    c = den(crops, keep, tokens, den.initial_noise(96, 6), settings)  # another seed, another result
    assert not np.array_equal(a, c)


def test_multistep_solvers_use_the_training_schedule_with_trailing_steps():
    from lipsync.pipeline.denoise import latentsync_scheduler, make_scheduler

    base = latentsync_scheduler("v_prediction")
    assert make_scheduler("ddim", base) is base
    for name in ("dpmsolver++", "unipc", "deis", "euler"):
        s = make_scheduler(name, base)
        assert s is not make_scheduler(name, base)  # a multistep history per run
        assert s.config.prediction_type == "v_prediction" and s.config.beta_schedule == "scaled_linear"
        assert (s.config.beta_start, s.config.beta_end) == (0.00085, 0.012)
        assert float((s.alphas_cumprod - base.alphas_cumprod).abs().max()) == 0
        s.set_timesteps(5)
        assert int(s.timesteps[0]) == 999  # the first step starts from pure noise
    with pytest.raises(ValueError, match="scheduler"):
        make_scheduler("plms", base)


def test_guidance_interval_guides_only_its_steps_and_empty_is_no_guidance(tiny_window):
    import torch

    from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser, guided_steps

    assert guided_steps(5, (0.0, 1.0)) == [True] * 5
    assert guided_steps(5, (0.0, 0.6)) == [True, True, True, False, False]
    assert guided_steps(10, (0.2, 0.5)) == [False, False, True, True, True] + [False] * 5
    den, crops, keep, tokens, noise = tiny_window
    batches = []

    def unet(inp, t, cond, **kw):
        batches.append(inp.shape[0])
        return den.unet(inp, t, cond, **kw)

    spy = WindowDenoiser(unet, den.vae, den.scheduler, den.scaling, den.shift)
    part = DenoiseSettings(5, 3.5, scheduler="dpmsolver++", guidance_interval=(0.0, 0.6))
    spy.decoded(crops, keep, tokens, noise, part)
    assert batches == [2, 2, 2, 1, 1]  # unconditional + conditional batched on the guided steps only
    none = DenoiseSettings(5, 3.5, scheduler="dpmsolver++", guidance_interval=(0.0, 0.0))
    off = DenoiseSettings(5, 1.0, scheduler="dpmsolver++")
    assert torch.equal(den.decoded(crops, keep, tokens, noise, none), den.decoded(crops, keep, tokens, noise, off))
    with pytest.raises(ValueError, match="guidance_interval"):
        DenoiseSettings(guidance_interval=(0.5, 0.2))


@pytest.mark.parametrize("deepcache", [0, 2])
def test_two_call_guidance_equals_batched_guidance(tiny_window, deepcache):
    import torch

    from lipsync.pipeline.denoise import DenoiseSettings

    den, crops, keep, tokens, noise = tiny_window
    kw = dict(num_steps=5, guidance_scale=3.5, deepcache_interval=deepcache, scheduler="unipc",
              guidance_interval=(0.0, 0.6))
    batched = den.decoded(crops, keep, tokens, noise, DenoiseSettings(**kw, cfg_batched=True))
    two = den.decoded(crops, keep, tokens, noise, DenoiseSettings(**kw, cfg_batched=False))
    assert torch.allclose(batched, two, atol=1e-4)


def test_profiles_carry_sampler_defaults_and_options_override_them():
    from lipsync.options import GenerateOptions
    from lipsync.pipeline.stages import settings_of_options

    for name in ("latentsync-1.5", "latentsync-1.6"):  # LatentSync's exact path stays their default
        s = settings_of_options(load_profile(name), GenerateOptions())
        assert (s.scheduler, s.num_steps, s.guidance_scale, s.guidance_interval, s.deepcache_interval) == (
            "ddim", 20, 1.5, (0.0, 1.0), 0)
    prof = load_profile("tiny")
    s = settings_of_options(prof, GenerateOptions(scheduler="ddim", num_steps=20, guidance_interval=1.0,
                                                  deepcache_interval=0))
    assert (s.scheduler, s.num_steps, s.guidance_interval, s.deepcache_interval) == ("ddim", 20, (0.0, 1.0), 0)
    s = settings_of_options(prof, GenerateOptions(guidance_interval=0.4))
    assert s.guidance_interval == (0.0, 0.4)


def test_denoiser_batches_windows_only_with_the_same_sampler(tiny_window):
    import torch

    from lipsync.pipeline.denoise import DenoiseSettings
    from lipsync.pipeline.stages import Denoiser, WindowInput
    from lipsync.pipeline.windows import Window

    den, crops, keep, tokens, _ = tiny_window

    class Comp:
        profile = load_profile("tiny")
        unet, vae, scheduler = den.unet, den.vae, den.scheduler
        scaling_factor, shift_factor = den.scaling, den.shift

    d = Denoiser(Comp(), torch.device("cpu"), torch.float32, 1.0 - keep)
    calls = []
    d.windows.decoded = lambda c, *a, **k: calls.append(c.shape[0]) or torch.zeros(c.shape[0] * 4, 3, 96, 96)
    w = [WindowInput(Window(0, 4), crops[0], tokens[0]) for _ in range(3)]
    a, b = DenoiseSettings(3, scheduler="ddim"), DenoiseSettings(3, scheduler="unipc")
    d(w, [a, b, a], 0)
    assert sorted(calls) == [1, 2]
