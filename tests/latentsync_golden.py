"""Access to LatentSync's golden outputs (../shared/reference/latentsync/, computed by THEIR code with
random weights). They live outside the repository and are never committed: a user's clone has no
../shared, so every test that needs them is skipped with the reason."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The golden comparisons on one thread (importing this fixture into a test module applies it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

REFERENCE = REPO.parent / "shared" / "reference" / "latentsync"
GOLDEN = REFERENCE / "golden"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"LatentSync reference data not present ({path}); it lives in ../shared beside the "
                    "repository, not in a clone")
    return path


@lru_cache(maxsize=None)
def tensors(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(need(GOLDEN / name)))


def meta(name: str) -> dict:
    return json.loads(need(GOLDEN / name).read_text())


def small_unet_config():
    """Our UNetConfig for their ``unet_small.json`` constructor arguments (motion GroupNorm 32: theirs
    never passes norm_num_groups to the temporal modules)."""
    from lipsync.models.unet import UNetConfig

    kw = meta("unet_small.json")["kwargs"]
    mm = kw["motion_module_kwargs"]
    return UNetConfig(in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                      block_out_channels=tuple(kw["block_out_channels"]),
                      down_block_types=tuple(kw["down_block_types"]), up_block_types=tuple(kw["up_block_types"]),
                      layers_per_block=kw["layers_per_block"], cross_attention_dim=kw["cross_attention_dim"],
                      attention_head_dim=kw["attention_head_dim"], norm_num_groups=kw["norm_num_groups"],
                      norm_eps=kw["norm_eps"], flip_sin_to_cos=kw["flip_sin_to_cos"], freq_shift=kw["freq_shift"],
                      downsample_padding=kw["downsample_padding"],
                      motion_module_max_len=mm["temporal_position_encoding_max_len"],
                      motion_num_attention_heads=mm["num_attention_heads"],
                      motion_num_transformer_blocks=mm["num_transformer_block"], motion_norm_num_groups=32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: one number per intermediate, insensitive to where values are near 0."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
