"""Rebuild ``lipsync/assets/data/faces-kit.csv`` from a mirror of the faces-kit::

    python -m lipsync.data.build_manifest --mirror ../shared/data/faces-kit
    python -m lipsync.data.build_manifest --mirror ../shared/data/faces-kit --check   # exit 1 if stale

Provenance (repository, path, commit, licence, sizes, notes) comes from the kit's own MANIFEST.csv,
sha256 and bytes from the mirror's files, and who is who / who is held out from
``lipsync/assets/data/faces-kit-people.yaml``: the choices live there, not in hand edits of the CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

import yaml

from lipsync.data.kit import COLUMNS, KINDS, MANIFEST, DataError, sha256_of

PEOPLE = MANIFEST.with_name("faces-kit-people.yaml")

_LANGUAGES = {"english": "en", "chinese": "zh", "mandarin": "zh", "german": "de", "french": "fr",
              "russian": "ru", "italian": "it", "spanish": "es", "japanese": "ja", "korean": "ko"}
_LANG_RE = re.compile(r"\b(" + "|".join(_LANGUAGES) + r")\b", re.IGNORECASE)
# Notes fragments that the manifest has in columns of their own, or that only describe the kit's
# verification run; the rest of the note is the description.
_TECHNICAL = re.compile(r"^(face in \d+/\d+|audio \d+ Hz|\d+ Hz \d+ch|converted to |audio muxed|avsync_proxy)")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_identity(kit_file: str) -> str:
    """A file nobody grouped is a person of its own, named after the file ("geneface__vd051.png" ->
    "geneface-vd051")."""
    return slug(Path(kit_file).stem)


def _language(kind: str, notes: str) -> str:
    if kind not in ("talking", "speech"):
        return ""
    m = _LANG_RE.search(notes)
    if not m:
        return ""
    code = _LANGUAGES[m.group(1).lower()]
    unsure = re.search(r"likely|unverified|may be sung", notes, re.IGNORECASE)
    return code + ("?" if unsure else "")


def _derived(row: dict) -> str:
    """How the kit's file differs from its source, or "" when it is the source's bytes."""
    if "(muxed)" in row["source_path"]:
        video, _, wav = row["source_path"].replace("(muxed)", "").partition("+")
        return (f"remuxed: video stream of {video.strip()} copied unchanged, {wav.strip()} encoded as "
                f"AAC mono 64 kbps")
    if "converted to 16 kHz mono FLAC" in row["notes"]:
        return f"converted: {row['source_path']} resampled to 16 kHz mono, FLAC PCM16"
    return ""


def _description(notes: str) -> str:
    parts = [p.strip() for p in notes.split(";")]
    return "; ".join(p for p in parts if p and not _TECHNICAL.match(p))


def _avsync(notes: str) -> str:
    m = re.search(r"avsync_proxy corr=(-?[0-9.]+)", notes)
    return m.group(1) if m else ""


def load_people(path: str | Path = PEOPLE) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """(file -> identity, held-out identities, file -> language override) from the people YAML."""
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh) or {}
    by_file: dict[str, str] = {}
    for identity, files in (doc.get("people") or {}).items():
        if slug(identity) != identity:
            raise DataError(f"{path}: identity {identity!r} is not a slug (lowercase, digits, '-')")
        for f in files or []:
            if f in by_file:
                raise DataError(f"{path}: {f} is listed under both {by_file[f]} and {identity}")
            by_file[f] = identity
    return by_file, set(doc.get("heldout") or []), dict(doc.get("language") or {})


def build_rows(mirror: str | Path, people: str | Path = PEOPLE) -> list[dict]:
    mirror = Path(mirror)
    kit_manifest = mirror / "MANIFEST.csv"
    if not kit_manifest.is_file():
        raise DataError(f"{kit_manifest}: not found (is {mirror} a faces-kit mirror?)")
    by_file, heldout, languages = load_people(people)
    with open(kit_manifest, newline="", encoding="utf-8") as fh:
        kit_rows = list(csv.DictReader(fh))
    kit_files = {r["file"] for r in kit_rows}
    for what, names in (("people", by_file), ("language", languages)):
        unknown = sorted(set(names) - kit_files)
        if unknown:
            raise DataError(f"{people}: {what} names files the kit does not have: {', '.join(unknown)}")
    identities = {by_file.get(r["file"], default_identity(r["file"])) for r in kit_rows}
    unknown = sorted(heldout - identities)
    if unknown:
        raise DataError(f"{people}: held-out identities with no file in the kit: {', '.join(unknown)}")

    rows = []
    for r in kit_rows:
        if r["kind"] not in KINDS:
            raise DataError(f"{kit_manifest}: {r['file']}: unknown kind {r['kind']!r}")
        path = mirror / r["file"]
        if not path.is_file():
            raise DataError(f"{path}: listed in the kit's MANIFEST.csv but missing")
        identity = by_file.get(r["file"], default_identity(r["file"]))
        derived = _derived(r)
        rows.append({
            "file": r["file"],
            "kind": r["kind"],
            "split": "heldout" if identity in heldout else "train",
            "identity": identity,
            "source_repo": r["source_repo"],
            "source_path": r["source_path"].replace("(muxed)", "").strip(),
            "commit": r["commit"],
            "sha256": sha256_of(path),
            "bytes": path.stat().st_size,
            "licence": r["repo_license"],
            "derived": derived,
            "language": languages.get(r["file"], _language(r["kind"], r["notes"])),
            "duration_s": r.get("duration_s", ""),
            "face_width_px": r.get("face_width_px", ""),
            "avsync_proxy": _avsync(r["notes"]),
            "description": _description(r["notes"]),
        })
    rows.sort(key=lambda row: (KINDS.index(row["kind"]), row["split"], row["file"]))
    return rows


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync.data.build_manifest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", required=True, help="a faces-kit folder with its MANIFEST.csv")
    parser.add_argument("--people", default=str(PEOPLE), help="identities and held-out choices (YAML)")
    parser.add_argument("--out", default=str(MANIFEST), help="manifest to write (default: the packaged one)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when --out differs from what would be written")
    args = parser.parse_args(argv)
    try:
        text = to_csv(build_rows(args.mirror, args.people))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'STALE: rebuild it with the same command without --check'}")
        return 0 if same else 1
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    rows = list(csv.DictReader(io.StringIO(text)))
    held = sum(r["split"] == "heldout" for r in rows)
    print(f"wrote {out}: {len(rows)} files, {held} held out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
