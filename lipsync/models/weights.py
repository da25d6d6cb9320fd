"""Reading weight files safely and loading them strictly, with errors that say exactly what is wrong.

``.pt``/``.pth``/``.bin``/``.ckpt`` files are read with ``torch.load(weights_only=True)``: a
downloaded checkpoint must never run pickled code. ``.safetensors`` files are read with
safetensors. A mismatch between a file and a model is reported key by key (first N and counts);
nothing is ever loaded non-strictly by accident.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from lipsync.errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SHOW = 8  # keys listed per category in mismatch errors


def read_state_dict(path: str | os.PathLike, nested_keys=("state_dict", "model_state_dict", "module")) -> dict:
    """All tensors of a weight file as a flat ``{name: tensor}`` on the CPU.

    A torch file holding a dict with one of ``nested_keys`` (LatentSync's ``state_dict``, OpenAI
    Whisper's ``model_state_dict``) yields that inner dict; a ``module.`` prefix (DDP) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(str(path), "file is empty (0 bytes): the download did not complete")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(str(path), f"corrupt or truncated safetensors file ({err})") from err
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                str(path), "refused: the file contains pickled code or objects beyond plain tensors "
                "(only weights_only=True files are loaded, so a downloaded file cannot run code)") from err
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            raise CheckpointError(str(path), f"corrupt or truncated torch file ({type(err).__name__}: "
                                             f"{str(err).splitlines()[0][:200]})") from err
        state = _unnest(obj, nested_keys, path)
    else:
        raise CheckpointError(str(path), f"unsupported weight file type '{suffix}' "
                                         f"(use .safetensors or one of {', '.join(TORCH_SUFFIXES)})")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(str(path), f"entries that are not tensors: {bad[:SHOW]}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _unnest(obj, nested_keys, path) -> dict:
    if isinstance(obj, Mapping):
        for key in nested_keys:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return dict(inner)
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(str(path), f"no state dict found (looked for a tensor dict or one of the keys "
                                     f"{list(nested_keys)})")


def rename_keys(state: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict:
    """Apply substring renames (old, new) to every key, in order."""
    out = {}
    for k, v in state.items():
        for old, new in rules:
            k = k.replace(old, new)
        out[k] = v
    return out


def describe_mismatch(expected: Mapping[str, torch.Size], got: Mapping[str, torch.Tensor]) -> str | None:
    """A readable report of missing / unexpected / wrongly-shaped keys, or None when they fit."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k])}"
              for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
            parts.append(f"{len(items)} {title}: " + ", ".join(items[:SHOW]) + more)
    return "; ".join(parts)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                what: str = "model", transform: Callable[[dict], dict] | None = None, *,
                assign: bool = False) -> None:
    """Load ``state`` into ``module`` only if every key and shape matches; else CheckpointError.

    ``assign=True`` makes the module's parameters the given tensors themselves (for a module built on
    the meta device: no second copy of the weights is ever allocated)."""
    state = dict(state)
    if transform is not None:
        state = transform(state)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    report = describe_mismatch(expected, state)
    if report:
        raise CheckpointError(str(path), f"does not fit the {what}: {report}")
    module.load_state_dict(state, strict=True, assign=assign)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, what: str = "weight file") -> None:
    got = sha256_file(path)
    if got.lower() != expected.lower():
        raise CheckpointError(str(path), f"sha256 mismatch for the {what}: expected {expected}, file has {got}; "
                                         "the file is corrupt or a different version: download it again")


def save_config_and_weights(folder: str | os.PathLike, config: dict, state: Mapping[str, torch.Tensor]) -> None:
    """A component folder of ours: ``config.json`` + ``model.safetensors``, each written atomically
    (a reader never sees half a file)."""
    import json

    from safetensors.torch import save_file

    from lipsync.media.uri import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_output(str(folder / "config.json")) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2) + "\n")
    with atomic_output(str(folder / "model.safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def read_config(folder: str | os.PathLike, what: str) -> dict:
    """``folder/config.json`` as a dict; a missing folder or file, or bad JSON, is a CheckpointError
    naming the file and saying it belongs to ``what``."""
    import json

    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(str(folder), f"not a folder: a {what} folder holds config.json and model.safetensors")
    if not path.is_file():
        raise CheckpointError(str(path), f"file not found (a {what} folder needs config.json)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(str(path), f"unreadable JSON ({err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(str(path), f"not a {what} config (expected a JSON object)")
    return raw
