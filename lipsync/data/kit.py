"""Real face media by manifest: the faces-kit's files are referenced (source repository, commit, path,
sha256), never shipped, and fetched into a local cache, from a mirror folder or from their public
source. Benchmarks and training get local paths from here::

    from lipsync.data import kit
    portraits = kit.paths(kind="portrait", split="train", mirror="../shared/data/faces-kit")

The manifest (``lipsync/assets/data/faces-kit.csv``) is written by ``lipsync.data.build_manifest``;
its columns are described in ``lipsync/assets/data/README.md``.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from lipsync.errors import LipSyncError

MANIFEST = Path(__file__).resolve().parent.parent / "assets" / "data" / "faces-kit.csv"
CACHE_ENV = "LIPSYNC_DATA_CACHE"
MIRROR_ENV = "LIPSYNC_DATA_MIRROR"
BASE_URL_ENV = "LIPSYNC_DATA_BASE_URL"
# raw.githubusercontent.com serves a file of a repository at a commit as it is stored in git.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"

COLUMNS = ("file", "kind", "split", "identity", "source_repo", "source_path", "commit", "sha256", "bytes",
           "licence", "derived", "language", "duration_s", "face_width_px", "avsync_proxy", "description")
KINDS = ("portrait", "talking", "speech", "driving", "stylized")
SPLITS = ("train", "heldout")
_CHUNK = 1 << 20


class DataError(LipSyncError):
    """A manifest that cannot be used, or files that could not be fetched."""


class FetchError(DataError):
    """One or more files could not be fetched; ``failures`` holds ``(file, reason)`` pairs."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = list(failures)
        lines = [f"{len(self.failures)} file(s) could not be fetched:"]
        lines += [f"  {name}: {reason}" for name, reason in self.failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Entry:
    """One manifest row."""

    file: str
    kind: str
    split: str
    identity: str
    source_repo: str
    source_path: str
    commit: str
    sha256: str
    bytes: int
    licence: str
    derived: str = ""
    language: str = ""
    duration_s: str = ""
    face_width_px: str = ""
    avsync_proxy: str = ""
    description: str = ""

    @property
    def byte_identical(self) -> bool:
        """True when the file is exactly the source's bytes, so it can be downloaded from there."""
        return not self.derived

    def url(self, base_url: str | None = None) -> str | None:
        if not self.byte_identical:
            return None
        base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        quoted = "/".join(urllib.parse.quote(part) for part in self.source_path.split("/"))
        return f"{base}/{self.source_repo}/{self.commit}/{quoted}"


@dataclass
class FetchReport:
    """What ``fetch`` did, file by file; ``paths`` are the cached files in manifest order."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # already cached with the right hash
    copied: list[str] = field(default_factory=list)    # from the mirror
    downloaded: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.paths)} file(s) ready: {len(self.skipped)} already cached, {len(self.copied)} copied "
                f"from the mirror, {len(self.downloaded)} downloaded; {len(self.failures)} failed")


def _check_relative(name: str, what: str) -> None:
    # A manifest row must never write outside the cache (nor read outside the mirror).
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise DataError(f"manifest: {what} {name!r} is not a plain relative path")


def load_manifest(path: str | os.PathLike | None = None) -> list[Entry]:
    """Read and check a manifest CSV (default: the one in the package)."""
    path = Path(path) if path is not None else MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(row for row in fh if not row.startswith("#"))
        missing = [c for c in ("file", "kind", "split", "sha256", "bytes") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
        entries, seen = [], set()
        for n, row in enumerate(reader, start=2):
            name = row["file"]
            _check_relative(name, "file")
            if name in seen:
                raise DataError(f"{path}:{n}: {name} is listed twice")
            seen.add(name)
            sha = row["sha256"].lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise DataError(f"{path}:{n}: {name}: sha256 {row['sha256']!r} is not 64 hex digits")
            if row["split"] not in SPLITS:
                raise DataError(f"{path}:{n}: {name}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            values = {c: (row.get(c) or "") for c in COLUMNS}
            values.update(sha256=sha, bytes=int(row["bytes"]))
            entries.append(Entry(**values))
    return entries


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def select(entries: Iterable[Entry], kind: str | Iterable[str] | None = None,
           split: str | Iterable[str] | None = None, identity: str | Iterable[str] | None = None) -> list[Entry]:
    """The entries of the given kind(s), split(s) and identity(-ies); None means any."""
    kinds, splits, ids = _as_set(kind), _as_set(split), _as_set(identity)
    return [e for e in entries
            if (kinds is None or e.kind in kinds) and (splits is None or e.split in splits)
            and (ids is None or e.identity in ids)]


def default_cache() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lipsync" / "faces-kit"


def default_mirror() -> Path | None:
    env = os.environ.get(MIRROR_ENV)
    return Path(env).expanduser() if env else None


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def cached(entry: Entry, cache: str | os.PathLike | None = None, verify: bool = True) -> bool:
    """Whether the entry's file is in the cache (with the right hash when ``verify``)."""
    path = Path(cache or default_cache()) / entry.file
    if not path.is_file() or path.stat().st_size != entry.bytes:
        return False
    return not verify or sha256_of(path) == entry.sha256


def _write_atomically(dest: Path, entry: Entry, source: Callable[[], object]) -> None:
    """Stream ``source()`` (a binary file object) into ``dest`` under a temporary name, check the
    sha256 and only then rename: an interrupted or wrong download never sits under the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, source() as src:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        digest = h.hexdigest()
        if digest != entry.sha256:
            hint = ""
            if size < 300:
                with open(tmp, "rb") as fh:
                    if fh.read(40).startswith(b"version https://git-lfs"):
                        hint = " (the source returned a Git LFS pointer, not the file)"
            raise DataError(f"sha256 mismatch: got {digest} ({size} bytes), manifest says {entry.sha256} "
                            f"({entry.bytes} bytes){hint}")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fetch_one(entry: Entry, dest: Path, mirror: Path | None, base_url: str | None, timeout: float) -> str:
    if mirror is not None:
        src = mirror / entry.file
        if not src.is_file():
            raise DataError(f"not in the mirror {mirror} (looked for {src})")
        _write_atomically(dest, entry, lambda: open(src, "rb"))
        return "copied"
    if not entry.byte_identical:
        raise DataError(f"derived from its source ({entry.derived}), so it cannot be downloaded byte-exactly; "
                        f"fetch it from a mirror of the kit (--mirror DIR or {MIRROR_ENV})")
    url = entry.url(base_url)
    try:
        _write_atomically(dest, entry, lambda: urllib.request.urlopen(url, timeout=timeout))
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(f"download failed: {url}: {reason} (no network? use --mirror DIR)") from None
    except http.client.HTTPException as err:  # e.g. IncompleteRead: the connection dropped mid-file
        raise DataError(f"download failed: {url}: {type(err).__name__}: {err}") from None
    return "downloaded"


def fetch(entries: Iterable[Entry] | None = None, *, manifest: str | os.PathLike | None = None,
          mirror: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
          kind=None, split=None, identity=None, base_url: str | None = None, timeout: float = 60.0,
          strict: bool = True, progress: Callable[[str, Entry, str], None] | None = None) -> FetchReport:
    """Bring the selected manifest files into the cache, checking every sha256.

    A file already cached with the right hash is skipped. Otherwise it is copied from ``mirror``
    (default: ``$LIPSYNC_DATA_MIRROR``) when there is one, else downloaded from its public source
    (``base_url``/repo/commit/path; only for byte-identical rows). ``progress(status, entry, detail)``
    is called per file. With ``strict`` (the default) any failure raises ``FetchError`` naming every
    failed file, after the others were fetched.
    """
    if entries is None:
        entries = load_manifest(manifest)
    entries = select(entries, kind=kind, split=split, identity=identity)
    cache = Path(cache).expanduser() if cache is not None else default_cache()
    mirror = Path(mirror).expanduser() if mirror is not None else default_mirror()
    if mirror is not None and not mirror.is_dir():
        raise DataError(f"{mirror}: mirror folder not found")
    report = FetchReport()
    for entry in entries:
        _check_relative(entry.file, "file")
        dest = cache / entry.file
        try:
            if cached(entry, cache):
                status = "skipped"
            else:
                status = _fetch_one(entry, dest, mirror, base_url, timeout)
        except (DataError, OSError) as err:
            reason = str(err) if isinstance(err, DataError) else f"{type(err).__name__}: {err}"
            report.failures.append((entry.file, reason))
            if progress:
                progress("failed", entry, reason)
            continue
        getattr(report, status).append(entry.file)
        report.paths.append(dest)
        if progress:
            progress(status, entry, str(dest))
    if strict and report.failures:
        raise FetchError(report.failures)
    return report


def paths(kind=None, split=None, identity=None, *, manifest: str | os.PathLike | None = None,
          mirror: str | os.PathLike | None = None, cache: str | os.PathLike | None = None,
          base_url: str | None = None) -> list[Path]:
    """Local paths of the selected files, fetching (and checking) whatever the cache lacks."""
    return fetch(manifest=manifest, mirror=mirror, cache=cache, kind=kind, split=split, identity=identity,
                 base_url=base_url).paths


def link(files: Iterable[str | os.PathLike], folder: str | os.PathLike) -> list[Path]:
    """Symbolic links to ``files`` in ``folder`` (flat, by file name; an existing link is replaced):
    a selection of the cache as an input folder for ``lipsync preprocess`` or ``lipsync synth --faces``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out, names = [], set()
    for f in files:
        src = Path(f).resolve()
        if src.name in names:
            raise DataError(f"{src}: two selected files are named {src.name!r}; link them into separate folders")
        names.add(src.name)
        dest = folder / src.name
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(src)
        out.append(dest)
    return out
