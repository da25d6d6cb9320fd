"""Part-by-part proof that our inference computes what LatentSync's computes, against outputs of
their code (``window_small``: one 16-frame window of their LipsyncPipeline in float64) and their
semantics as read in their source. Skipped where ../shared/reference/latentsync is absent.

Measured (float64, relative = max |ours - theirs| / max |theirs|), nearest mask resize:
  mask latents 0 (bilinear: off by 1.0 on the mask's edge rows), masked-image latents 4e-14,
  reference latents 5e-15, timesteps identical, first guided prediction ~1e-13,
  final latents / decoded crops / pasted pixels ~1e-13 (full 20-step loop, LIPSYNC_FULL_PARITY=1).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from latentsync_golden import GOLDEN, REFERENCE, need, rel, small_unet_config, tensors, one_thread  # noqa: F401 (autouse fixture)
from lipsync.pipeline import latentsync_exact as lx
from lipsync.pipeline.denoise import DenoiseSettings, WindowDenoiser, crops_to_pixels, latentsync_scheduler

TOL = 1e-6  # the bar, relative, float64


@pytest.fixture(scope="module")
def window():
    from lipsync.models.unet import UNet3DConditionModel
    from lipsync.models.vae import load_vae_folder

    g = tensors("window_small.safetensors")
    unet = UNet3DConditionModel.from_state_dict(tensors("unet_small.state_dict.safetensors"), small_unet_config(),
                                                dtype=torch.float64)
    vae = load_vae_folder(need(GOLDEN / "vae_small")).to(torch.float64).eval()
    den = WindowDenoiser(unet, vae, latentsync_scheduler(), vae.config.scaling_factor, vae.config.shift_factor,
                         dtype=torch.float64)
    return g, den


class StopAfterFirstStep(Exception):
    pass


def _run(den, g, mode, steps=20, calls=None):
    """Our denoiser on their inputs; ``calls`` stops it after that many UNet calls (one step = one
    call, CFG batched), keeping whatever intermediates were traced."""
    trace: dict = {}
    unet, n = den.unet, [0]

    def counting(*a, **k):
        if calls is not None and n[0] >= calls:
            raise StopAfterFirstStep
        n[0] += 1
        return unet(*a, **k)

    den.unet = counting
    try:
        out = den.decoded(g["faces_uint8"].numpy()[None], g["mask"][0, 0].numpy(), g["audio_embeds"][None],
                          g["initial_noise"][:, :, :1], DenoiseSettings(steps, 1.5, mask_resize=mode), trace=trace)
    except StopAfterFirstStep:
        out = None
    finally:
        den.unet = unet
    return trace, out


def test_their_window_inputs_are_one_mask_and_one_noise_frame(window):
    """Their prepare_latents draws ONE noise frame and repeats it over the window (and the video),
    as our initial_noise (1, C, 1, h, w) does; their fixed mask is the same for every frame."""
    g, _ = window
    assert bool((g["initial_noise"] == g["initial_noise"][:, :, :1]).all())
    assert bool((g["mask"] == g["mask"][:1]).all())


def test_conditioning_and_first_guided_step_equal_theirs(window):
    g, den = window
    trace, _ = _run(den, g, "nearest", calls=1)
    assert bool((trace["timesteps"].cpu() == g["timesteps"]).all())
    got = {k: rel(trace[k], g[k]) for k in ("mask_latents", "masked_image_latents", "ref_latents",
                                              "first_guided_pred")}
    assert got["mask_latents"] == 0.0
    assert max(got.values()) < TOL, got
    assert trace["first_guided_pred"].dtype == torch.float64


def test_bilinear_mask_resize_differs_from_theirs_on_the_edge_rows(window):
    """Our default (bilinear) is not theirs on a soft / off-grid mask: the mask channel differs by up
    to 1.0 (the latentsync profiles therefore select nearest)."""
    g, den = window
    trace, _ = _run(den, g, "bilinear", calls=0)
    assert rel(trace["mask_latents"], g["mask_latents"]) == pytest.approx(1.0)


def test_decode_and_paste_of_their_final_latents_equal_theirs(window):
    """VAE scaling 0.18215 / shift 0 on decode, the raw (unclamped) decoder output, and their
    paste_surrounding_pixels_back: decoded pixels only where the mask regenerates."""
    g, den = window
    lat = g["final_latents"][0].permute(1, 0, 2, 3)
    from lipsync.models import vae as vae_ops

    decoded = vae_ops.decode(den.vae, lat, den.scaling, den.shift, clamp=False)
    assert rel(decoded, g["decoded"]) < TOL
    pixels = crops_to_pixels(g["faces_uint8"], torch.float64)
    out = lx.paste_surrounding_pixels(decoded, pixels, g["mask"][0, 0])
    assert rel(out, g["output_pixels"]) < TOL
    keep = g["mask"][0, 0] == 1
    assert torch.equal(out[:, :, keep], pixels[:, :, keep])  # kept pixels are the input's, exactly


@pytest.mark.skipif(not os.environ.get("LIPSYNC_FULL_PARITY"),
                    reason="the full 20-step float64 loop takes ~45 s on one core; set LIPSYNC_FULL_PARITY=1")
def test_full_window_equals_theirs(window):
    g, den = window
    trace, decoded = _run(den, g, "nearest")
    for k in ("final_latents", "first_guided_pred"):
        assert rel(trace[k], g[k]) < TOL, k
    assert rel(decoded, g["decoded"]) < TOL
    out = lx.paste_surrounding_pixels(decoded, crops_to_pixels(g["faces_uint8"], torch.float64), g["mask"][0, 0])
    assert rel(out, g["output_pixels"]) < TOL


# ---------------------------------------------------------------------------------- denoising details


def test_scheduler_equals_their_config():
    from diffusers import DDIMScheduler

    theirs = DDIMScheduler.from_config(json.loads(need(REFERENCE / "configs" / "scheduler_config.json").read_text()))
    ours = latentsync_scheduler()
    for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "set_alpha_to_one",
              "steps_offset", "prediction_type", "timestep_spacing"):
        assert ours.config[k] == theirs.config[k], k
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    for n in (2, 20, 50):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps)
    assert ours.timesteps[:3].tolist() == [981, 961, 941] and ours.timesteps[-1] == 1


def test_thirteen_channels_and_zero_audio_cfg_in_their_order():
    """UNet input = [noisy latent 4, mask 1, masked-face latent 4, reference latent 4]; CFG batches
    the all-zero audio tokens FIRST, and guided = uncond + s (cond - uncond)."""
    from lipsync.models.vae import tiny_vae

    seen = {}

    def unet(inp, t, tokens):
        seen.setdefault("inp", inp.clone())
        seen.setdefault("tokens", tokens.clone())
        out = torch.zeros_like(inp[:, :4])
        out[0], out[1] = 1.0, 3.0  # uncond, cond
        return out

    torch.manual_seed(0)
    vae = tiny_vae(block_out_channels=(8, 8), norm_num_groups=4).eval()
    den = WindowDenoiser(unet, vae, latentsync_scheduler(), 0.18215)
    crops = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 16, 3), dtype=np.uint8)
    keep = np.zeros((16, 16)); keep[:8] = 1
    tokens = torch.randn(1, 3, 5, 8)
    noise = den.initial_noise(16, 0)
    trace = {}
    den.decoded(crops, keep, tokens, noise, DenoiseSettings(1, 1.5, mask_resize="nearest"), trace=trace)
    inp = seen["inp"]
    assert inp.shape == (2, 13, 3, 8, 8)
    assert torch.equal(inp[0], inp[1])
    assert torch.equal(inp[0, :4], noise[0].expand(-1, 3, -1, -1))  # one noise frame for every frame
    assert torch.equal(inp[0, 4:5], trace["mask_latents"][0])
    assert torch.equal(inp[0, 5:9], trace["masked_image_latents"][0])
    assert torch.equal(inp[0, 9:13], trace["ref_latents"][0])
    assert torch.equal(seen["tokens"][0], torch.zeros_like(tokens[0])) and torch.equal(seen["tokens"][1], tokens[0])
    assert torch.allclose(trace["first_guided_pred"], torch.full_like(trace["first_guided_pred"], 1 + 1.5 * 2))
    # masked / reference latents are the VAE mean of the masked / plain pixels times 0.18215
    from lipsync.models.vae import encode

    x = crops_to_pixels(crops[0])
    assert torch.allclose(trace["ref_latents"][0].transpose(0, 1), encode(vae, x, 0.18215), atol=1e-6)
    km = torch.as_tensor(keep, dtype=torch.float32)
    assert torch.allclose(trace["masked_image_latents"][0].transpose(0, 1), encode(vae, x * km, 0.18215), atol=1e-6)


# ---------------------------------------------------------------------------------------- the mask


def _their_mask(size):
    return lx.fixed_keep_mask(size, need(REFERENCE / "latentsync" / "utils" / "mask.png"))


def test_their_mask_loader_reproduces_the_golden_mask():
    g = tensors("window_small.safetensors")
    assert float((torch.from_numpy(_their_mask(64)) - g["mask"][0, 0]).abs().max()) == 0.0


@pytest.mark.parametrize("size,pixels,latent_px", [(256, 124, 5), (512, 496, 9)])
def test_traced_outline_matches_mask_png(size, pixels, latent_px):
    """Our tracing of mask.png (the project holds no copy of the file) against the file, both through
    their loader: 124 of 65,536 pixels differ at 256 px (0.19 %, all on the outline; 496 at 512 px);
    at latent size (nearest, /8) 5 of 1,024 latent pixels differ at 256 px, 9 of 4,096 at 512 px.
    Exact parity needs their file: fixed_keep_mask(size, path_to_mask_png)."""
    theirs, ours = _their_mask(size), lx.fixed_keep_mask(size)
    assert int((np.abs(theirs - ours) > 0.5).sum()) <= pixels
    if size == 256:
        assert set(np.unique(theirs)) == {0.0, 1.0}  # their own grid: binary; other sizes: Lanczos-soft
    import torch.nn.functional as F

    lat = [F.interpolate(torch.from_numpy(m)[None, None], size=(size // 8,) * 2)[0, 0] for m in (theirs, ours)]
    assert int(((lat[0] - lat[1]).abs() > 0.5).sum()) <= latent_px


def test_profiles_regenerate_their_mask_not_a_box():
    """The latentsync profiles regenerate mask.png's region (our tracing of it). The lower-half box
    they used before differs from mask.png on 23 % of the crop (it keeps the cheeks from row 95 to 128
    and regenerates the corners beside the chin that theirs keeps; IoU of the regenerated regions 0.59)."""
    from lipsync.face.mask import lower_face_mask
    from lipsync.pipeline.stages import regen_mask_of
    from lipsync.profiles import load_profile

    for name, size in (("latentsync-1.5", 256), ("latentsync-1.6", 512)):
        regen = regen_mask_of(load_profile(name))
        assert regen.shape == (size, size)
        assert np.allclose(regen, 1.0 - lx.fixed_keep_mask(size), atol=1e-6)
    box_keep = 1.0 - lower_face_mask(256, top=0.5, side=0.0)
    theirs = _their_mask(256)
    frac = float((np.abs(box_keep - theirs) > 0.5).mean())
    assert 0.22 < frac < 0.24
    regen_t, regen_b = theirs < 0.5, box_keep < 0.5
    assert 0.58 < (regen_t & regen_b).sum() / (regen_t | regen_b).sum() < 0.60  # IoU of the regenerated regions


def test_latentsync_profiles_resize_the_mask_like_theirs():
    from lipsync.pipeline.denoise import mask_resize_of
    from lipsync.profiles import load_profile

    for name in ("latentsync-1.5", "latentsync-1.6"):
        assert mask_resize_of(load_profile(name)) == "nearest"
    assert mask_resize_of(load_profile("tiny")) == "bilinear"


def test_bilinear_equals_nearest_on_grid_aligned_boxes():
    """Why the tiny profile keeps bilinear: on a box whose edges lie on the latent grid (every
    lower_face_mask we use) both resizes give the same latent mask."""
    import torch.nn.functional as F

    from lipsync.face.mask import lower_face_mask
    from lipsync.pipeline.denoise import latent_mask

    for size, k in ((96, 4), (256, 8), (512, 8)):
        keep = torch.from_numpy(1.0 - lower_face_mask(size, top=0.5))[None, None]
        assert torch.equal(latent_mask(keep, (size // k,) * 2, "bilinear"), latent_mask(keep, (size // k,) * 2, "nearest"))
    assert torch.equal(latent_mask(keep, (64, 64), "nearest"), F.interpolate(keep, size=(64, 64)))


# ------------------------------------------------------------------------------------------ framing


def test_restore_matrix_maps_the_template_to_their_box():
    """Points that are an exact similarity image of their template land where their box puts them,
    resized to the square (their smooth bias is 0 for such points)."""
    size, ratio = 256, 2.8
    tpl = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]]) * ratio
    pts = tpl * 5 + np.array([100.0, 50.0])  # integers: their rounding changes nothing
    m = lx.restore_matrix(pts, size)
    got = pts @ m[:, :2].T + m[:, 2]
    kx, ky = size / 210, size / 280
    want = np.stack([tpl[:, 0] * kx + 0.5 * kx - 0.5, tpl[:, 1] * ky + 0.5 * ky - 0.5], 1)
    assert np.abs(got - want).max() < 1e-9


def _their_fit(points3: np.ndarray, size: int, p_bias=None):
    """Their AlignRestore.transformation_from_points (1.6) as read, in torch float32 as they run it:
    returns (frame -> box 2 x 3, bias); then their box resized to the square, written out here."""
    ratio = size / 256 * 2.8
    p2 = torch.tensor(np.array([[19 - 2, 30 - 10], [56 + 2, 30 - 10], [37.5, 45 - 5]]) * ratio, dtype=torch.float32)
    p1 = torch.tensor(np.round(points3), dtype=torch.float32)
    c1, c2 = p1.mean(0), p2.mean(0)
    n1, n2 = (p1 - c1) / torch.std(p1 - c1), (p2 - c2) / torch.std(p2 - c2)
    s1, s2 = torch.std(p1 - c1), torch.std(p2 - c2)
    u, _, v = torch.svd(n1.T @ n2)
    r = v @ u.T
    if torch.det(r) < 0:
        v[:, -1] = -v[:, -1]
        r = v @ u.T
    m = torch.cat([(s2 / s1) * r, c2.reshape(2, 1) - (s2 / s1) * (r @ c1.reshape(2, 1))], 1)
    bias = n2[2] - n1[2]
    if p_bias is not None:
        bias = p_bias * 0.2 + bias * 0.8
    m[:, 2] = m[:, 2] + bias
    w, h = int(75 * ratio), int(100 * ratio)
    kx, ky = size / w, size / h  # cv2.resize of the w x h box to the square: pixel centres
    resize = np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])
    return (resize @ np.vstack([m.double().numpy(), [0, 0, 1.0]]))[:2], bias


def _corner_residual(a: np.ndarray, b: np.ndarray, size: int) -> float:
    """Largest distance (crop px) between the crop corners cut by ``a`` and where ``b`` puts them."""
    from lipsync.face.align import invert

    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    inv = invert(a)
    back = (corners @ inv[:, :2].T + inv[:, 2]) @ b[:, :2].T + b[:, 2]
    return float(np.linalg.norm(back - corners, axis=1).max())


@pytest.fixture(scope="module")
def astronaut_landmarks():
    from face_helpers import load_astronaut

    from lipsync.face.detect import FaceDetector

    with FaceDetector(max_faces=1) as det:
        return det.detect(load_astronaut())[0].landmarks


def _their_points(lm: np.ndarray) -> np.ndarray:
    """Their three points on our mesh, as documented in latentsync_exact (written out here)."""
    return np.array([lm[[70, 63, 105, 66, 107], :2].mean(0), lm[[336, 296, 334, 293, 300], :2].mean(0),
                     lm[[5, 4, 122, 351], :2].mean(0)])


def test_their_brow_points_are_ibug_brows_on_our_mesh():
    """Their brow points are iBUG 17-21 / 22-26 (the 106 -> 68 table), which our iBUG table maps to
    the mesh points we average; their nose's 74 / 86 are iBUG 29 / 30."""
    from lipsync.face.landmarks import MESH_TO_68

    assert lx.BROW_IMAGE_LEFT == tuple(MESH_TO_68[17:22])
    assert set(lx.BROW_IMAGE_RIGHT) == set(MESH_TO_68[22:27])
    assert lx.NOSE_CENTRE[:2] == (MESH_TO_68[29], MESH_TO_68[30])


@pytest.mark.parametrize("size", [256, 512])
def test_latentsync_aligner_is_their_three_point_fit_frame_by_frame(astronaut_landmarks, size):
    """FaceAligner(align=latentsync) on a moving face (shifted, turned, scaled per frame, one frame
    without a face) gives, frame after frame, the matrix of a float32 rewrite of their
    transformation_from_points with the bias their restorer carries: crop corners within 1e-3 px
    (measured 1.0e-4 px at 256 px, 2.4e-4 px at 512 px: their float32 vs our float64)."""
    from types import SimpleNamespace

    from lipsync.face.aligner import FaceAligner

    lm = np.asarray(astronaut_landmarks, np.float64)
    centre = lm[:, :2].mean(0)
    items = []
    for i in range(6):
        a, k, t = np.deg2rad(2.0 * i), 1.0 + 0.03 * i, np.array([3.7 * i, -2.3 * i])
        rot = k * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        moved = lm.copy()
        moved[:, :2] = (lm[:, :2] - centre) @ rot.T + centre + t
        face = None if i == 3 else SimpleNamespace(landmarks=moved)
        items.append(SimpleNamespace(index=i, face=face, image=None))
    aligner = FaceAligner(size, align="latentsync")
    assert not aligner.steadied
    got = list(aligner.aligned(items))
    bias, worst = None, 0.0
    for item, m in got:
        if item.face is None:
            assert m is None
            continue
        want, bias = _their_fit(_their_points(item.face.landmarks), size, bias)
        worst = max(worst, _corner_residual(m, want, size))
    print(f"latentsync align vs their fit at {size} px: corners within {worst:.2e} px")
    assert worst < 1e-3
    # The first frame's matrix is restore_matrix of the same points.
    assert np.allclose(aligner.matrix(items[0].face), lx.restore_matrix(_their_points(items[0].face.landmarks), size))


def test_our_framing_residual_against_their_three_point_fit(astronaut_landmarks):
    """Our template fit at aspect 4/3 (align: template) vs their AlignRestore on the same landmarks
    (align: latentsync): the crop corners lie ~8.4 px apart at 256 px on the astronaut. The
    latentsync profiles therefore use align: latentsync."""
    from lipsync.face.align import LATENTSYNC_ASPECT, estimate_alignment
    from lipsync.face.aligner import FaceAligner

    lm, size = astronaut_landmarks, 256
    theirs = _their_fit(_their_points(lm), size)[0]
    ours = estimate_alignment(lm, size, aspect=LATENTSYNC_ASPECT)
    assert np.array_equal(FaceAligner(size, LATENTSYNC_ASPECT).matrix(SimpleFace(lm)), ours)
    residual = _corner_residual(ours, theirs, size)
    exact = _corner_residual(FaceAligner(size, align="latentsync").matrix(SimpleFace(lm)), theirs, size)
    print(f"framing residual at {size} px: template {residual:.2f} px, latentsync {exact:.1e} px")
    assert 5.0 < residual < 12.0 and exact < 1e-3


class SimpleFace:
    def __init__(self, landmarks):
        self.landmarks = landmarks


def test_latentsync_profiles_frame_as_they_do():
    from lipsync.face.aligner import FaceAligner
    from lipsync.profiles import load_profile

    for name in ("latentsync-1.5", "latentsync-1.6"):
        prof = load_profile(name)
        assert prof.align == "latentsync" and FaceAligner.of_profile(prof).align == "latentsync"
    assert load_profile("tiny").align == "template"
    with pytest.raises(ValueError, match="align"):
        FaceAligner(96, align="nope")


def test_their_crop_pixels(astronaut_landmarks):
    """lx.cut_crop vs their align_warp_face as read (kornia warp_affine: bilinear, align_corners,
    fill 127; here torch grid_sample with the fill added as kornia does), truncated to uint8, then
    cv2 Lanczos to the square: at most 1 grey level apart (uint8 truncation of float sums)."""
    import cv2
    import torch.nn.functional as F
    from face_helpers import load_astronaut

    img, size = load_astronaut(), 256
    m = lx.restore_matrix(lx.three_points(astronaut_landmarks), size)
    w, h = lx.box_size(size)
    bm = lx.box_matrix(m, size)
    inv = np.linalg.inv(np.vstack([bm, [0, 0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx, sy = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    ih, iw = img.shape[:2]
    grid = torch.from_numpy(np.stack([2 * sx / (iw - 1) - 1, 2 * sy / (ih - 1) - 1], -1))[None].float()
    src = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ones = F.grid_sample(torch.ones_like(src), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    box = (warped + (1 - ones) * 127.0)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    want = cv2.resize(box, (size, size), interpolation=cv2.INTER_LANCZOS4)
    got = lx.cut_crop(img, m, size)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"their crop: max {diff.max()} grey level(s), {np.mean(diff > 0):.2%} of values differ")
    assert diff.max() <= 1


# ------------------------------------------------------------------------------------------ SyncNet


def their_syncnet_keys(cfg: dict) -> dict[str, tuple]:
    """Parameter names and shapes of their StableSyncNet as read in their source (DownEncoder2D:
    conv_in, down_blocks = ResnetBlock2D per level plus an AttentionBlock2D after each level whose
    attn_blocks flag is 1, norm_out), written out independently of our module."""
    out = {}
    for enc in ("audio_encoder", "visual_encoder"):
        e = cfg[enc]
        ch = e["block_out_channels"]
        out[f"{enc}.conv_in.weight"], out[f"{enc}.conv_in.bias"] = (ch[0], e["in_channels"], 3, 3), (ch[0],)
        j, c = 0, ch[0]
        for cout, factor, attn in zip(ch, e["downsample_factors"], e["attn_blocks"]):
            p = f"{enc}.down_blocks.{j}."
            out |= {p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "conv1.weight": (cout, c, 3, 3),
                    p + "conv1.bias": (cout,), p + "norm2.weight": (cout,), p + "norm2.bias": (cout,),
                    p + "conv2.weight": (cout, cout, 3, 3), p + "conv2.bias": (cout,)}
            if c != cout:
                out |= {p + "conv_shortcut.weight": (cout, c, 1, 1), p + "conv_shortcut.bias": (cout,)}
            if factor != 1:
                out |= {p + "downsample_conv.weight": (cout, cout, 3, 3), p + "downsample_conv.bias": (cout,)}
            j += 1
            if attn:
                p = f"{enc}.down_blocks.{j}."
                for n in ("norm1", "norm2", "norm3"):
                    out |= {p + n + ".weight": (cout,), p + n + ".bias": (cout,)}
                for n in ("conv_in", "conv_out"):
                    out |= {p + n + ".weight": (cout, cout, 1, 1), p + n + ".bias": (cout,)}
                for n in ("to_q", "to_k", "to_v", "to_out.0"):
                    out |= {p + "attn." + n + ".weight": (cout, cout), p + "attn." + n + ".bias": (cout,)}
                out |= {p + "ff.net.0.proj.weight": (8 * cout, cout), p + "ff.net.0.proj.bias": (8 * cout,),
                        p + "ff.net.2.weight": (cout, 4 * cout), p + "ff.net.2.bias": (cout,)}
                j += 1
            c = cout
        out[f"{enc}.norm_out.weight"], out[f"{enc}.norm_out.bias"] = (c,), (c,)
    return out


def _syncnet_cfg():
    import yaml

    return yaml.safe_load(need(REFERENCE / "configs" / "syncnet" / "syncnet_16_pixel_attn.yaml").read_text())["model"]


def test_stable_syncnet_has_their_layout():
    from lipsync.models.stable_syncnet import StableSyncNet

    cfg = _syncnet_cfg()
    with torch.device("meta"):
        model = StableSyncNet.from_config(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == their_syncnet_keys(cfg)
    assert got["audio_encoder.down_blocks.4.attn.to_q.weight"] == (256, 256)  # attention after level 3
    print(f"StableSyncNet: {len(got)} tensors, {sum(np.prod(s) for s in got.values()) / 1e6:.1f} M parameters")


def test_stable_syncnet_checkpoint_loads_strictly_and_embeds(tmp_path):
    """Their layout at reduced width (same levels, strides and attention placement, so 128 x 256
    faces and 80 x 52 mel still end at 1 x 1), saved as their trainer saves it ({"state_dict": ...}):
    loads strictly, gives unit embeddings; a missing tensor is named."""
    from lipsync.errors import CheckpointError
    from lipsync.models.stable_syncnet import StableSyncNet

    cfg = _syncnet_cfg()
    for enc in cfg.values():
        enc["block_out_channels"] = [32] * len(enc["block_out_channels"])
    torch.manual_seed(0)
    state = StableSyncNet.from_config(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == their_syncnet_keys(cfg)
    path = tmp_path / "stable_syncnet.pt"
    torch.save({"global_step": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = StableSyncNet.from_checkpoint(path, cfg)
    with torch.no_grad():
        v, a = loaded(torch.randn(2, 48, 128, 256), torch.randn(2, 1, 80, 52))
    assert v.shape == a.shape == (2, 32)
    assert torch.allclose(v.norm(dim=1), torch.ones(2)) and torch.allclose(a.norm(dim=1), torch.ones(2))
    state.pop("visual_encoder.norm_out.weight")
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="norm_out.weight"):
        StableSyncNet.from_checkpoint(path, cfg)
