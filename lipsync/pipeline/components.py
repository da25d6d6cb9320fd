"""Building a model's components (UNet, VAE, audio encoder, scheduler) from a profile and a
checkpoint folder, and saving them in our own folder format.

Our folder format mirrors diffusers: one sub-folder per component plus ``model_index.json``,
which holds the profile and the sha256 of every weight file (verified at load)::

    model_index.json  unet/  vae/  audio_encoder/  scheduler/
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from lipsync.errors import CheckpointError
from lipsync.profiles import BUNDLED_MODELS, Profile

INDEX = "model_index.json"
FORMAT_VERSION = 1
ALL_PARTS = frozenset({"unet", "vae", "audio"})  # what load_components can load (``parts``)


@dataclass
class Components:
    profile: Profile
    unet: torch.nn.Module | None  # None where a worker loaded only some parts (load_components(parts=...))
    vae: torch.nn.Module | None
    audio_encoder: torch.nn.Module | None
    scheduler: object
    scaling_factor: float
    shift_factor: float = 0.0
    origin: str = ""  # where the weights came from, for the user
    random_init: bool = False

    def to(self, device, dtype=None):
        for m in (self.unet, self.vae):
            if m is None:
                continue
            m.to(device=device)
            if dtype is not None and dtype != torch.float32:
                m.to(dtype=dtype)
        # The audio encoder's front end (mel, STFT) stays in float32; only its device moves.
        if self.audio_encoder is not None:
            self.audio_encoder.to(device=device)
        for m in (self.unet, self.vae, self.audio_encoder):
            if m is not None:
                m.eval()
        return self


def unet_config(profile: Profile):
    from lipsync.models.unet import UNetConfig

    cfg = dict(profile.unet)
    preset = cfg.pop("preset", None)
    if preset == "latentsync":
        return UNetConfig.from_dict({**UNetConfig.latentsync().to_dict(), **cfg}).for_latentsync_weights()
    if preset is not None:
        raise CheckpointError(profile.source, f"unknown UNet preset {preset!r} (known: latentsync)")
    return UNetConfig.from_dict(cfg)


def build_unet(profile: Profile):
    from lipsync.models.unet import UNet3DConditionModel

    return UNet3DConditionModel(unet_config(profile))


def build_audio_encoder(profile: Profile, unet_token_dim: int | None = None):
    from lipsync.models.audio import MelAudioEncoder, MelAudioEncoderConfig

    if profile.audio.get("kind") != "mel":
        raise CheckpointError(profile.source, "only a 'mel' audio encoder can be built without weights")
    cfg = dict(profile.audio.get("config") or {})
    if unet_token_dim is not None:
        cfg.setdefault("token_dim", unet_token_dim)
    return MelAudioEncoder(MelAudioEncoderConfig(**cfg))


def build_vae(profile: Profile):
    from lipsync.models.vae import tiny_vae

    if profile.vae.get("kind") != "tiny":
        raise CheckpointError(profile.source, "only the 'tiny' VAE can be built without weights")
    return tiny_vae(**(profile.vae.get("config") or {}))


def random_components(profile: Profile, seed: int = 0, parts: frozenset[str] | set[str] | None = None) -> Components:
    """Randomly initialised components (deterministic for a seed): the mechanics work, the
    lips will not follow the speech. The UNet and the audio encoder are always built (in that
    order, so each gets the same weights whatever ``parts`` asks for); the VAE and the scheduler
    only when ``parts`` (default: all) needs them."""
    parts = ALL_PARTS if parts is None else parts
    torch.manual_seed(seed)
    unet = build_unet(profile)
    audio = build_audio_encoder(profile, unet.config.cross_attention_dim)
    vae = build_vae(profile) if "vae" in parts else None
    return Components(profile, unet, vae, audio, scheduler_of(profile) if "unet" in parts else None,
                      float(profile.vae.get("scaling_factor", 1.0)), origin="random initialisation",
                      random_init=True)


def scheduler_of(profile: Profile):
    from lipsync.pipeline.denoise import latentsync_scheduler

    return latentsync_scheduler(profile.prediction_type)


@dataclass
class WeightsLocation:
    """Where a profile's weights are, found without loading them (see :func:`locate_weights`)."""

    kind: str  # "folder" (our format) | "latentsync" (third-party files) | "random"
    folder: Path | None = None
    paths: dict | None = None  # latentsync: component -> file
    looked: str = ""  # random: where weights were looked for

    @property
    def random_init(self) -> bool:
        return self.kind == "random"

    def describe(self) -> str:
        if self.kind in ("folder", "latentsync"):
            return str(self.folder)
        return f"random initialisation (no weights in {self.looked})"


def locate_weights(profile: Profile, checkpoint_dir: str | os.PathLike | None) -> WeightsLocation:
    """Find ``profile``'s weights without loading them; a missing file is a CheckpointError naming
    every missing path at once. Lets a batch job fail before it starts any worker."""
    cdir = Path(checkpoint_dir) if checkpoint_dir else None
    if cdir is not None and (cdir / INDEX).is_file():
        return WeightsLocation("folder", folder=cdir)
    if profile.files:
        cdir = cdir or Path("pretrained")
        paths, problems = {}, []
        for k, f in profile.files.items():  # every missing file is named at once, before any loading
            try:
                paths[k] = f.resolve(cdir)
            except CheckpointError as err:
                problems.append(str(err))
        if problems:
            raise CheckpointError(str(cdir), f"{len(problems)} weight file(s) of profile '{profile.name}' "
                                             "missing or unusable:\n  " + "\n  ".join(problems))
        return WeightsLocation("latentsync", folder=cdir, paths=paths)
    candidates = []
    w = profile.weights or {}
    if cdir is not None and w.get("folder"):
        candidates.append(cdir / w["folder"])
    if w.get("bundled"):
        candidates.append(BUNDLED_MODELS / w["bundled"])
    for c in candidates:
        if (c / INDEX).is_file():
            return WeightsLocation("folder", folder=c)
    if w.get("allow_random_init"):
        return WeightsLocation("random", looked=", ".join(str(c) for c in candidates) or "nowhere")
    raise CheckpointError(str(candidates[0] if candidates else cdir),
                          f"no weights for profile '{profile.name}' ({INDEX} not found)")


def model_profile(profile: Profile, checkpoint_dir: str | os.PathLike | None = None) -> Profile:
    """The profile a pipeline of ``profile`` with these weights runs, read without loading them: a
    weights folder's own (its ``model_index.json``: the bundled ``tiny`` model is a 4-step student
    whose sampler differs from the profile file's), else ``profile``."""
    loc = locate_weights(profile, checkpoint_dir)
    if loc.kind != "folder":
        return profile
    return Profile.from_dict(_read_index(loc.folder)["profile"], source=str(loc.folder / INDEX))


def _read_index(folder: Path) -> dict:
    """A weights folder's ``model_index.json``; a CheckpointError naming it when it cannot be read."""
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(str(folder / INDEX), f"unreadable model index ({err})") from err
    if not isinstance(index, dict) or "profile" not in index:
        raise CheckpointError(str(folder / INDEX), "unreadable model index (no profile)")
    return index


def load_components(profile: Profile, checkpoint_dir: str | os.PathLike | None,
                    parts: frozenset[str] | set[str] = ALL_PARTS) -> Components:
    """Components of ``profile`` with their weights, from ``checkpoint_dir`` (or the bundled copy).

    ``parts`` (``unet``, ``vae``, ``audio``) selects what to load: a worker that only encodes audio
    need not hold the UNet. Components left out are None (random initialisation builds them all,
    so the random weights do not depend on the selection)."""
    loc = locate_weights(profile, checkpoint_dir)
    if loc.kind == "folder":
        return load_folder(loc.folder, parts)
    if loc.kind == "latentsync":
        return _load_latentsync(profile, loc.paths, parts, origin=str(loc.folder))
    warnings.warn(f"no trained weights for profile '{profile.name}' (looked in {loc.looked}): using random "
                  "initialisation, so the lips will NOT follow the speech", RuntimeWarning, stacklevel=2)
    return _select(random_components(profile, parts=parts), parts)


def _select(c: Components, parts) -> Components:
    c.unet = c.unet if "unet" in parts else None
    c.vae = c.vae if "vae" in parts else None
    c.audio_encoder = c.audio_encoder if "audio" in parts else None
    return c


def _load_latentsync(profile: Profile, paths: dict, parts=ALL_PARTS, origin: str = "") -> Components:
    from lipsync.models.audio import WhisperAudioEncoder
    from lipsync.models.unet import UNet3DConditionModel
    from lipsync.models.vae import load_vae_folder

    config = unet_config(profile).for_latentsync_weights()  # their file layout = their motion GroupNorm
    unet = UNet3DConditionModel.from_checkpoint(paths["unet"], config=config) if "unet" in parts else None
    # audio.config: WhisperAudioEncoder options, e.g. windowing: latentsync (their 30 s windows, exactly)
    audio_cfg = dict(profile.audio.get("config") or {})
    audio = WhisperAudioEncoder.from_file(paths["audio"], **audio_cfg) if "audio" in parts else None
    vae = load_vae_folder(paths["vae"]) if "vae" in parts else None
    return Components(profile, unet, vae, audio, scheduler_of(profile), float(profile.vae.get("scaling_factor", 0.18215)),
                      float(profile.vae.get("shift_factor", 0.0)), origin=origin)


def save_folder(c: Components, folder: str | os.PathLike) -> Path:
    """Write ``c`` in our folder format (atomically: a temp folder renamed into place)."""
    import shutil
    import tempfile

    from lipsync.models.weights import sha256_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        c.unet.save_pretrained(tmp / "unet")
        c.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        c.audio_encoder.save_pretrained(tmp / "audio_encoder")
        c.scheduler.save_pretrained(tmp / "scheduler")
        sums = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*.safetensors"))}
        index = {"format_version": FORMAT_VERSION, "profile": c.profile.to_dict(),
                 "scaling_factor": c.scaling_factor, "shift_factor": c.shift_factor, "sha256": sums}
        (tmp / INDEX).write_text(json.dumps(index, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_folder(folder: str | os.PathLike, parts: frozenset[str] | set[str] = ALL_PARTS) -> Components:
    from diffusers import DDIMScheduler

    from lipsync.models.audio import MelAudioEncoder, WhisperAudioEncoder
    from lipsync.models.unet import UNet3DConditionModel
    from lipsync.models.vae import load_vae_folder
    from lipsync.models.weights import verify_sha256

    folder = Path(folder)
    index = _read_index(folder)
    wanted = {"unet": "unet", "vae": "vae", "audio": "audio_encoder"}
    sub = {wanted[p] for p in parts}
    for rel, digest in (index.get("sha256") or {}).items():
        if rel.split("/")[0] in wanted.values() and rel.split("/")[0] not in sub:
            continue
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(str(p), "missing: listed in model_index.json")
        verify_sha256(p, digest, f"{rel.split('/')[0]} weights")
    profile = Profile.from_dict(index["profile"], source=str(folder / INDEX))
    unet = UNet3DConditionModel.from_pretrained(folder / "unet") if "unet" in parts else None
    vae = load_vae_folder(folder / "vae") if "vae" in parts else None
    kind = profile.audio.get("kind")
    audio = ((MelAudioEncoder if kind == "mel" else WhisperAudioEncoder).from_pretrained(folder / "audio_encoder")
             if "audio" in parts else None)
    scheduler = DDIMScheduler.from_pretrained(str(folder / "scheduler")) if "unet" in parts else None
    return Components(profile, unet, vae, audio, scheduler, float(index.get("scaling_factor", 1.0)),
                      float(index.get("shift_factor", 0.0)), origin=str(folder))
