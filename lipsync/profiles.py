"""Model profiles: which components a model has, how they are configured, and which weight files
they need under ``--checkpoint_dir``. Profiles are YAML data in ``lipsync/configs/profiles/``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lipsync.configs import PROFILE_DIR
from lipsync.errors import CheckpointError, LipSyncError

BUNDLED_MODELS = Path(__file__).resolve().parent / "assets" / "models"
DEFAULT_CHECKPOINT_DIR = "pretrained"


class ProfileError(LipSyncError):
    """An unknown profile name or a malformed profile file."""


@dataclass
class WeightFile:
    key: str
    path: str  # relative to the checkpoint dir
    what: str
    source: str = ""
    kind: str = "file"  # or "folder"
    sha256: str | None = None

    def resolve(self, checkpoint_dir: str | os.PathLike) -> Path:
        """The file's location; a clear error naming it, what it is and where to get it if absent."""
        p = Path(checkpoint_dir) / self.path
        ok = p.is_dir() if self.kind == "folder" else p.is_file()
        if not ok:
            where = f" Obtain it from {self.source}." if self.source else ""
            noun = "folder" if self.kind == "folder" else "file"
            raise CheckpointError(str(p), f"missing {noun}: expected the {self.what} here.{where} "
                                          f"Pass --checkpoint_dir if your weights are elsewhere.")
        if self.kind == "file" and p.stat().st_size == 0:
            raise CheckpointError(str(p), f"the {self.what} is empty (0 bytes): download it again")
        if self.sha256 and self.kind == "file":
            from lipsync.models.weights import verify_sha256

            verify_sha256(p, self.sha256, self.what)
        return p


@dataclass
class Profile:
    name: str
    resolution: int
    unet: dict
    vae: dict
    audio: dict
    crop_aspect: float = 1.0
    # Framing of the crops (lipsync.face.aligner): template (ours: template fit, smoothed and
    # registered), latentsync (LatentSync's AlignRestore per frame, exactly) or latentsync-steady.
    align: str = "template"
    mask: dict = field(default_factory=lambda: {"top": 0.5, "side": 0.0})
    window: int = 16
    overlap: int = 4
    num_steps: int = 20
    guidance_scale: float = 1.5
    # Sampler defaults (each a generation option; LatentSync's: DDIM, guidance on every step, no DeepCache).
    scheduler: str = "ddim"  # lipsync.options.SCHEDULERS
    guidance_interval: list = field(default_factory=lambda: [0.0, 1.0])  # guided steps: lo <= i / n < hi
    deepcache_interval: int = 0  # 0 = off
    prediction_type: str = "epsilon"  # what the UNet predicts: epsilon (LatentSync) or v_prediction
    # Reference frames for frame i: the window's frame i + reference_shift (cyclic). 0 = the frame
    # itself (LatentSync); a shift gives the UNet another mouth of the same face, as in training.
    reference_shift: int = 0
    # How generated crops go back into the frame: person (keep the person's texture, colour and
    # upper face; lipsync.face.composite), person_warp (person, and the person's own pixels moved
    # into the shape the model drew) or latentsync (paste the mask's region, as LatentSync does).
    composite: str = "person"
    files: dict[str, WeightFile] = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # our folder format: {folder, bundled, allow_random_init}
    source: str = ""

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "Profile":
        d = dict(d)
        try:
            files = {k: WeightFile(key=k, **v) for k, v in (d.pop("files", None) or {}).items()}
            return cls(**d, files=files, source=source)
        except TypeError as err:
            raise ProfileError(f"{source or 'profile'}: malformed profile ({err})") from err

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("files", "source")}
        d["files"] = {k: {kk: vv for kk, vv in f.__dict__.items() if kk != "key" and vv is not None}
                      for k, f in self.files.items()}
        return d


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``tiny``, ``latentsync-1.5``, ``latentsync-1.6``) or by YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ProfileError(f"{p}: profile file not found")
    else:
        p = PROFILE_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ProfileError(f"unknown profile '{name_or_path}'; available: {', '.join(available_profiles())}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{p}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ProfileError(f"{p}: a profile is a YAML mapping")
    return Profile.from_dict(data, source=str(p))
