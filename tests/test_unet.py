"""The LatentSync-compatible 3-D UNet: key/shape parity with the reference list, numerical parity with
diffusers' 2-D UNet, window-wide GroupNorm statistics, motion-module math, strict loading, DeepCache.

Everything runs on the CPU with small random models; the full LatentSync layout is only ever built on
the meta device.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.errors import CheckpointError
from lipsync.models.blocks import ResnetBlock3D, window_group_norm
from lipsync.models.motion import MotionModule
from lipsync.models.unet import (STAGE2_EFFICIENT_TRAINABLE, STAGE2_TRAINABLE, UNet3DConditionModel, UNetConfig,
                                 deep_cache_schedule)

REFERENCE_KEYS = Path("/work/shared/reference/latentsync-1.5-unet-keys.tsv")
REPO_REFERENCE_KEYS = Path(__file__).resolve().parents[1] / "shared" / "reference" / "latentsync-1.5-unet-keys.tsv"
# Digest of that list (1,246 keys), so the parity check runs even where the file is not present.
REFERENCE_DIGEST = "d09191751cbce58ae6e30ad42d205fefd3fa0aafb7d2ec98bb8853e78176795f"

# A 4-level SD-1.5-shaped UNet small enough for the CPU (diffusers parity).
SMALL_2D = dict(in_channels=13, out_channels=4, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread gains little, and when another process shares
    the cores its spin-waiting made this file up to 5x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_keys() -> dict[str, list[int]] | None:
    path = REFERENCE_KEYS if REFERENCE_KEYS.is_file() else REPO_REFERENCE_KEYS
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            name, shape = line.split("\t")
            out[name] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    return out


def key_digest(keys: dict[str, list[int]]) -> str:
    """sha256 of the sorted ``name<TAB>[shape]`` lines (the reference TSV's format)."""
    lines = sorted(f"{k}\t[{', '.join(str(d) for d in v)}]" for k, v in keys.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def randomize(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Deterministic random weights everywhere (biases and norm affines too); buffers untouched."""
    gen = torch.Generator().manual_seed(seed)
    norm_scales = {f"{name}.weight" for name, m in model.named_modules()
                   if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None}
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name in norm_scales:
                p.copy_(1.0 + 0.1 * noise)  # norm scales near 1
            else:
                p.copy_(noise * (std if p.ndim > 1 else std / 2))
    return model


def tiny_model(seed: int = 0, **overrides) -> UNet3DConditionModel:
    cfg = UNetConfig.tiny(**{"cross_attention_dim": 16, "motion_zero_init": False, **overrides})
    return randomize(UNet3DConditionModel(cfg), seed).eval()


def inputs(b=2, f=4, h=8, w=8, channels=13, tokens=5, dim=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, channels, f, h, w, generator=gen), torch.tensor([10, 700][:b] + [500] * max(0, b - 2)),
            torch.randn(b, f, tokens, dim, generator=gen))


# -- key / shape parity ------------------------------------------------------------------------------
def test_latentsync_layout_matches_reference_keys_on_meta_device():
    with torch.device("meta"):
        model = UNet3DConditionModel(UNetConfig.latentsync())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = reference_keys()
    if ref is not None:  # a readable report of any difference
        assert len(ref) == 1246 and key_digest(ref) == REFERENCE_DIGEST
        missing, extra = sorted(set(ref) - set(ours)), sorted(set(ours) - set(ref))
        shapes = [f"{k}: ours {ours[k]} vs ref {ref[k]}" for k in ref if k in ours and ours[k] != ref[k]]
        assert not (missing or extra or shapes), f"missing {missing[:5]} extra {extra[:5]} shapes {shapes[:5]}"
    assert len(ours) == 1246 and key_digest(ours) == REFERENCE_DIGEST
    assert all(t.is_meta for t in model.state_dict().values())  # nothing allocated
    prefixes = {re.sub(r"\.temporal_transformer\..*", "", k) for k in ours if ".motion_modules." in k}
    assert len(prefixes) == 20 and not any(p.startswith("mid_block") for p in prefixes)
    assert all(t.dtype == torch.float32 for t in model.buffers())


def test_non_temporal_keys_equal_diffusers_sd15_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ours = UNet3DConditionModel(UNetConfig.latentsync())
        ref = UNet2DConditionModel(in_channels=13, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                                   layers_per_block=2, cross_attention_dim=384, attention_head_dim=8)
    ours_2d = {k: v.shape for k, v in ours.state_dict().items() if ".motion_modules." not in k}
    assert ours_2d == {k: v.shape for k, v in ref.state_dict().items()}
    assert len(ours_2d) == 686
    assert ours.state_dict()["down_blocks.1.attentions.0.proj_in.weight"].shape == (640, 640, 1, 1)


# -- numerical parity with diffusers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_pair():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    ref = randomize(UNet2DConditionModel(**SMALL_2D), seed=3).eval()
    ours = UNet3DConditionModel(UNetConfig(**SMALL_2D, use_motion_module=False)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # identical key names
    return ref, ours


@pytest.mark.parametrize("hw", [(16, 16), (12, 10)])  # (12, 10): upsamplers get explicit sizes
def test_single_frame_equals_diffusers_unet2d(diffusers_pair, hw):
    ref, ours = diffusers_pair
    x, t, ctx = inputs(f=1, h=hw[0], w=hw[1])
    with torch.no_grad():
        got = ours(x, t, ctx)
        want = ref(x[:, :, 0], t, ctx[:, 0]).sample
    assert got.shape == (2, 4, 1, *hw)
    torch.testing.assert_close(got[:, :, 0], want, rtol=0, atol=1e-5)


class HandWindowNorm(nn.Module):
    """A resnet GroupNorm with statistics over a sample's whole window, written out by hand."""

    def __init__(self, norm: nn.GroupNorm, frames: int):
        super().__init__()
        self.norm, self.frames = norm, frames

    def forward(self, x):  # ((b f), c, h, w)
        bf, c, h, w = x.shape
        g = self.norm.num_groups
        xs = x.reshape(bf // self.frames, self.frames, g, c // g, h, w)
        mean = xs.mean(dim=(1, 3, 4, 5), keepdim=True)
        var = xs.var(dim=(1, 3, 4, 5), keepdim=True, unbiased=False)
        y = ((xs - mean) / torch.sqrt(var + self.norm.eps)).reshape(bf, c, h, w)
        return y * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]


def test_several_frames_use_window_statistics_in_resnets_and_output_norm(diffusers_pair):
    ref, ours = diffusers_pair
    ref, ours = copy.deepcopy(ref).double(), copy.deepcopy(ours).double()
    b, f = 2, 4
    x, t, ctx = inputs(b=b, f=f, h=16, w=16)
    x, ctx = x.double(), ctx.double()
    flat_x = x.transpose(1, 2).reshape(b * f, 13, 16, 16)
    flat_ctx, flat_t = ctx.reshape(b * f, 5, 16), t.repeat_interleave(f)
    with torch.no_grad():
        got = ours(x, t, ctx).transpose(1, 2).reshape(b * f, 4, 16, 16)
        per_frame = ref(flat_x, flat_t, flat_ctx).sample
        # The 2-D model with window statistics in every resnet norm and conv_norm_out only.
        for block in (*ref.down_blocks, ref.mid_block, *ref.up_blocks):
            for resnet in block.resnets:
                resnet.norm1, resnet.norm2 = HandWindowNorm(resnet.norm1, f), HandWindowNorm(resnet.norm2, f)
        ref.conv_norm_out = HandWindowNorm(ref.conv_norm_out, f)
        windowed = ref(flat_x, flat_t, flat_ctx).sample
    assert (got - per_frame).abs().max() > 1e-3  # per-frame statistics give another result
    torch.testing.assert_close(got, windowed, rtol=0, atol=1e-9)


def test_resnet_norms_pool_all_frames_of_a_sample_only():
    torch.manual_seed(0)
    resnet = randomize(ResnetBlock3D(in_channels=16, out_channels=32, temb_channels=8, groups=4, eps=1e-5), 1)
    b, f = 2, 3
    x = torch.randn(b * f, 16, 5, 5)
    temb = torch.randn(b, 8)
    # window_group_norm is the 5-D nn.GroupNorm
    x5 = x.view(b, f, 16, 5, 5).transpose(1, 2)
    torch.testing.assert_close(window_group_norm(resnet.norm1, x, f),
                               resnet.norm1(x5).transpose(1, 2).reshape(b * f, 16, 5, 5))
    # by hand: norm1/norm2 with window statistics, time embedding shared by the frames of a sample
    h = F.silu(HandWindowNorm(resnet.norm1, f)(x))
    h = resnet.conv1(h) + resnet.time_emb_proj(F.silu(temb)).repeat_interleave(f, 0)[:, :, None, None]
    h = resnet.conv2(F.silu(HandWindowNorm(resnet.norm2, f)(h)))
    torch.testing.assert_close(resnet(x, temb, f), resnet.conv_shortcut(x) + h, rtol=1e-5, atol=1e-5)
    # changing sample 1 does not change sample 0; changing frame 2 of sample 0 changes its frame 0
    y0 = resnet(x, temb, f)
    x2 = x.clone()
    x2[f:] += 3.0
    assert torch.equal(resnet(x2, temb, f)[:f], y0[:f])
    x3 = x.clone()
    x3[2] *= 4.0
    assert not torch.allclose(resnet(x3, temb, f)[0], y0[0])


# -- motion modules -----------------------------------------------------------------------------------
def sinusoid(max_len, dim):
    pe = torch.zeros(1, max_len, dim)
    for pos in range(max_len):
        for i in range(0, dim, 2):
            angle = pos / (10000 ** (i / dim))
            pe[0, pos, i] = math.sin(angle)
            pe[0, pos, i + 1] = math.cos(angle)
    return pe


def reference_motion(mod: MotionModule, x5: torch.Tensor) -> torch.Tensor:
    """AnimateDiff's temporal transformer written step by step in its own layouts."""
    tt = mod.temporal_transformer
    b, c, f, h, w = x5.shape
    x = x5.transpose(1, 2).reshape(b * f, c, h, w)
    y = F.group_norm(x, tt.norm.num_groups, tt.norm.weight, tt.norm.bias, tt.norm.eps)
    y = tt.proj_in(y.permute(0, 2, 3, 1).reshape(b * f, h * w, c))  # (b f) d c
    for block in tt.transformer_blocks:
        for attn, norm in zip(block.attention_blocks, block.norms):
            z = norm(y).reshape(b, f, h * w, c).transpose(1, 2).reshape(b * h * w, f, c)  # (b d) f c
            z = z + sinusoid(24, c)[:, :f]
            heads = attn.heads
            q, k, v = (lin(z).reshape(b * h * w, f, heads, c // heads) for lin in (attn.to_q, attn.to_k, attn.to_v))
            weights = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(c // heads), dim=-1)
            out = attn.to_out[0](torch.einsum("nhqk,nkhd->nqhd", weights, v).reshape(b * h * w, f, c))
            y = out.reshape(b, h * w, f, c).transpose(1, 2).reshape(b * f, h * w, c) + y
        hidden, gate = block.ff.net[0].proj(block.ff_norm(y)).chunk(2, dim=-1)
        y = block.ff.net[2](hidden * F.gelu(gate)) + y
    y = tt.proj_out(y).reshape(b * f, h, w, c).permute(0, 3, 1, 2)
    return (y + x).reshape(b, f, c, h, w).transpose(1, 2)


def run_motion(mod, x5):
    b, c, f, h, w = x5.shape
    y = mod(x5.transpose(1, 2).reshape(b * f, c, h, w), f)
    return y.view(b, f, c, h, w).transpose(1, 2)


def test_motion_module_is_identity_at_init_and_pe_is_the_sinusoid():
    torch.manual_seed(0)
    mod = MotionModule(32, heads=8, norm_num_groups=32)
    x = torch.randn(2, 32, 6, 3, 3)
    assert torch.equal(run_motion(mod, x), x)
    pe = mod.temporal_transformer.transformer_blocks[0].attention_blocks[1].pos_encoder.pe
    assert pe.shape == (1, 24, 32) and pe.dtype == torch.float32
    torch.testing.assert_close(pe, sinusoid(24, 32), rtol=0, atol=1e-5)
    assert "temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe" in mod.state_dict()


def test_motion_module_math_and_mixing():
    torch.manual_seed(0)
    mod = randomize(MotionModule(32, heads=4, norm_num_groups=8), seed=5)
    x = torch.randn(2, 32, 6, 3, 4)
    with torch.no_grad():
        y = run_motion(mod, x)
        torch.testing.assert_close(y, reference_motion(mod, x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(y, x, atol=1e-3)
        x2 = x.clone()
        x2[0, :, 0] += 2.0 * torch.randn(x2[0, :, 0].shape)  # change frame 0 of sample 0 (not a constant:
        # the per-frame GroupNorm would remove that)
        y2 = run_motion(mod, x2)
    assert (y2[0, :, 3] - y[0, :, 3]).abs().max() > 1e-4  # frame 3 of sample 0 sees it
    assert torch.equal(y2[1], y[1])  # sample 1 does not


def test_windows_longer_than_the_position_table_are_refused():
    model = UNet3DConditionModel(UNetConfig.tiny(cross_attention_dim=16))
    x, t, ctx = inputs(b=1, f=25, h=8, w=8)
    with pytest.raises(ValueError, match="25 frames exceeds .* 24"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(x[:, :, :4], t, ctx[:, :3])


# -- configuration ------------------------------------------------------------------------------------
def test_config_presets_and_json_round_trip(tmp_path):
    big, tiny = UNetConfig.latentsync(), UNetConfig.tiny(block_out_channels=(32, 64), cross_attention_dim=40)
    assert big.block_out_channels == (320, 640, 1280, 1280) and big.attention_head_dim == 8
    assert tiny.down_block_types == ("CrossAttnDownBlock3D", "DownBlock3D")
    assert tiny.up_block_types == ("UpBlock3D", "CrossAttnUpBlock3D")
    assert UNetConfig.from_json(big.to_json(tmp_path / "c.json")) == big
    assert UNetConfig.from_json(tiny.to_json()) == tiny
    with pytest.raises(ValueError, match="unknown field"):
        UNetConfig.from_dict({"in_chanels": 4})
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig.tiny(block_out_channels=(20, 40))


# -- loading ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_setup():
    model = tiny_model(seed=7)
    x, t, ctx = inputs(b=2, f=3, h=8, w=8)
    with torch.no_grad():
        out = model(x, t, ctx)
    return model, (x, t, ctx), out


def to_v10(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        k = re.sub(r"(transformer_blocks\.\d+\.)norm2\.", r"\1audio_cross_attn.norm.", k)
        k = re.sub(r"(transformer_blocks\.\d+\.)attn2\.", r"\1audio_cross_attn.attn.", k)
        out[k] = v
    return out


def test_v10_names_are_renamed_and_give_identical_outputs(tmp_path, tiny_setup):
    model, args, out = tiny_setup
    old = to_v10(model.state_dict())
    assert any(".audio_cross_attn.attn.to_k." in k for k in old)
    assert not any(".transformer_blocks.0.attn2." in k for k in old)
    assert any(".resnets.0.norm2." in k for k in old)  # resnet norms keep their name
    path = tmp_path / "latentsync_unet_v10.pt"
    torch.save({"global_step": 1000, "state_dict": old}, path)
    loaded = UNet3DConditionModel.from_checkpoint(path, model.config)
    with torch.no_grad():
        assert torch.equal(loaded(*args), out)


def test_pt_with_module_prefix_loads(tmp_path, tiny_setup):
    model, args, out = tiny_setup
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = UNet3DConditionModel.from_checkpoint(path, model.config)
    assert not loaded.training and not any(t.is_meta for t in loaded.state_dict().values())
    with torch.no_grad():
        assert torch.equal(loaded(*args), out)


def test_truncated_or_mismatched_checkpoints_raise_checkpoint_error(tmp_path, tiny_setup):
    model, _, _ = tiny_setup
    state = model.state_dict()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": state}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        UNet3DConditionModel.from_checkpoint(cut, model.config)
    assert str(cut) in str(err.value) and "truncated" in str(err.value)

    bad = dict(state)
    gone = "up_blocks.2.motion_modules.1.temporal_transformer.proj_out.bias"
    wrong = "conv_in.weight"
    del bad[gone]
    bad[wrong] = torch.zeros(32, 9, 3, 3)
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": bad}, path)
    with pytest.raises(CheckpointError) as err:
        UNet3DConditionModel.from_checkpoint(path, model.config)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "1 missing" in msg and gone in msg
    assert "1 unexpected" in msg and "extra.weight" in msg
    assert "1 wrong shape" in msg and wrong in msg and "(32, 9, 3, 3)" in msg

    # the LatentSync layout refuses the tiny file, listing counts (never a silent partial load)
    with pytest.raises(CheckpointError, match=r"\d+ missing: .* and \d+ more"):
        UNet3DConditionModel.from_checkpoint(good)
    # non-strict: fitting tensors load, the rest is reported
    loose = UNet3DConditionModel.from_checkpoint(path, model.config, strict=False)
    torch.testing.assert_close(loose.conv_out.weight, model.conv_out.weight)


def test_save_pretrained_round_trip_is_bit_exact(tmp_path, tiny_setup):
    model, args, out = tiny_setup
    folder = model.save_pretrained(tmp_path / "unet")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    for loaded in (UNet3DConditionModel.from_pretrained(folder), UNet3DConditionModel.from_checkpoint(folder)):
        assert loaded.config == model.config
        ref = model.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded(*args), out)
    with pytest.raises(CheckpointError, match="config.json"):
        UNet3DConditionModel.from_pretrained(tmp_path)


# -- training switches, dtypes ------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(seed=2).train()
    x, t, ctx = inputs(b=1, f=2, h=8, w=8)
    grads = []
    for on in (False, True):
        model.zero_grad()
        model.enable_gradient_checkpointing() if on else model.disable_gradient_checkpointing()
        assert model.gradient_checkpointing == on
        model(x, t, ctx).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_stage2_trainable_selection():
    model = UNet3DConditionModel(UNetConfig.tiny())
    names = model.set_trainable(STAGE2_TRAINABLE)
    assert names and all(".motion_modules." in n or ".attentions." in n for n in names)
    assert any(".attentions.0.transformer_blocks.0.attn2.to_k." in n for n in names)
    assert not model.conv_in.weight.requires_grad and not model.down_blocks[0].resnets[0].conv1.weight.requires_grad
    model.set_motion_modules_trainable(False)
    assert all(not p.requires_grad for p in model.motion_module_parameters())
    assert model.mid_block.attentions[0].proj_in.weight.requires_grad
    efficient = model.set_trainable(STAGE2_EFFICIENT_TRAINABLE)
    assert any(".attn2.to_v." in n for n in efficient) and not any(".attn1." in n for n in efficient)
    assert model.set_trainable("conv_out.") == ["conv_out.weight", "conv_out.bias"]
    assert len(model.set_trainable(None)) == len(list(model.parameters()))


def test_bfloat16_forward_runs_close_to_float32(tiny_setup):
    model, args, out = tiny_setup
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert all(b.dtype == torch.bfloat16 for b in half.buffers())
    x, t, ctx = args
    with torch.no_grad():
        got = half(x.bfloat16(), t, ctx.bfloat16())
    assert got.dtype == torch.bfloat16
    assert ((got.float() - out).norm() / out.norm()) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float16_on_cuda_matches_float32(tiny_setup):
    model, args, out = tiny_setup
    gpu = copy.deepcopy(model).cuda().half()
    x, t, ctx = args
    with torch.no_grad():
        got = gpu(x.cuda().half(), t.cuda(), ctx.cuda().half()).float().cpu()
    assert ((got - out).norm() / out.norm()) < 0.01


# -- DeepCache ----------------------------------------------------------------------------------------
def test_deep_cache_schedule():
    assert deep_cache_schedule(5, 1) == [False] * 5
    assert deep_cache_schedule(7, 3) == [False, True, True, False, True, True, False]


def test_deep_cache_reuse_is_close_faster_and_off_by_default():
    torch.manual_seed(4)  # default (trained-like) init scales; random motion output projections
    model = UNet3DConditionModel(UNetConfig.tiny(block_out_channels=(16, 64, 128), cross_attention_dim=16,
                                                 motion_zero_init=False)).eval()
    x0, _, ctx = inputs(b=2, f=4, h=16, w=16)
    ran = []
    named = [("mid", model.mid_block), *[(f"down{i}", b) for i, b in enumerate(model.down_blocks)],
             *[(f"up{i}", b) for i, b in enumerate(model.up_blocks)]]
    hooks = [blk.register_forward_hook(lambda m, i, o, name=name: ran.append(name)) for name, blk in named]
    with torch.no_grad():
        full1 = model(x0, 500, ctx)  # default: no cache involved
        with pytest.raises(ValueError, match="cache"):
            model(x0, 500, ctx, reuse_deep=True)
        cache = {}
        assert torch.equal(model(x0, 500, ctx, cache=cache), full1)
        ran.clear()
        same = model(x0, 500, ctx, cache=cache, reuse_deep=True)
        assert ran == ["down0", "up2"]  # the deep blocks are skipped
        torch.testing.assert_close(same, full1, rtol=0, atol=1e-6)  # same inputs: the cache is exact
        for h in hooks:
            h.remove()
        # the next denoising step: slightly changed latent and timestep
        x1 = x0 + 0.05 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
        full2 = model(x1, 480, ctx)
        reuse2 = model(x1, 480, ctx, cache=cache, reuse_deep=True)
        # the rule: a full step whose up_blocks[-2] output is replaced by the cached feature
        hook = model.up_blocks[-2].register_forward_hook(lambda m, i, o: cache["deep"])
        torch.testing.assert_close(reuse2, model(x1, 480, ctx), rtol=0, atol=1e-5)
        hook.remove()
        err_reuse = ((reuse2 - full2).norm() / full2.norm()).item()
        err_stale = ((full1 - full2).norm() / full2.norm()).item()
        assert 0 < err_reuse < 0.2 and err_reuse < err_stale  # close, not equal, better than a stale output
        with pytest.raises(ValueError, match="full step first"):
            model(x1[:1], 480, ctx[:1], cache=cache, reuse_deep=True)

        def timed(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        full = lambda: model(x1, 480, ctx, cache=cache)  # noqa: E731
        reuse = lambda: model(x1, 480, ctx, cache=cache, reuse_deep=True)  # noqa: E731
        full(), reuse()
        times = [(timed(full), timed(reuse)) for _ in range(5)]  # alternated: load bursts hit both
    t_full, t_reuse = min(t for t, _ in times), min(t for _, t in times)
    assert t_reuse < 0.8 * t_full, (t_reuse, t_full)
