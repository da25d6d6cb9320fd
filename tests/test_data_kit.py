"""Data by manifest (lipsync.data): the packaged faces-kit manifest, its generator, and fetching from a
mirror or over HTTP into a cache. Everything but the last tests runs on small files the tests make;
the checks against the real kit are skipped when ../shared/data/faces-kit is absent."""

from __future__ import annotations

import csv
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from lipsync.cli import main as cli_main
from lipsync.data import build_manifest, kit

REPO = Path(__file__).resolve().parents[1]
KIT = REPO.parent / "shared" / "data" / "faces-kit"
needs_kit = pytest.mark.skipif(not (KIT / "MANIFEST.csv").is_file(),
                               reason=f"faces-kit mirror not present ({KIT}); it lives in ../shared beside the repo")


# --- the packaged manifest -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest():
    return kit.load_manifest()


def test_manifest_is_packaged_and_complete(manifest):
    assert kit.MANIFEST.is_relative_to(REPO / "lipsync" / "assets")  # package-data glob assets/**/* ships it
    names = [e.file for e in manifest]
    assert len(names) == len(set(names)) == 314
    assert {e.kind for e in manifest} == set(kit.KINDS)
    for e in manifest:
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0
        assert e.bytes > 0 and e.identity and e.licence in ("MIT", "Apache-2.0")
        assert e.source_repo.count("/") == 1 and len(e.commit) == 40
    # 11 remuxed talking clips + 104 wav->FLAC: not downloadable byte-exactly, so they say how they differ
    derived = [e for e in manifest if e.derived]
    assert len(derived) == 115
    assert sum(e.derived.startswith("remuxed") for e in derived) == 11
    assert all(e.url() is None for e in derived)
    assert all(e.url().startswith("https://raw.githubusercontent.com/") for e in manifest if not e.derived)


def test_split_is_by_identity(manifest):
    held = {e.identity for e in manifest if e.split == "heldout"}
    train = {e.identity for e in manifest if e.split == "train"}
    assert not held & train, f"held-out people with training rows: {held & train}"
    count = lambda kind: sum(e.kind == kind and e.split == "heldout" for e in manifest)  # noqa: E731
    assert count("portrait") >= 8 and count("talking") >= 6 and count("speech") >= 4
    # people seen both as a portrait and in a video share one identity
    by_file = {e.file: e.identity for e in manifest}
    assert by_file["faces/facerecognition__obama.jpg"] == by_file["talking/edtalk__uncrop_Obama.mp4"]
    assert by_file["faces/hellomeme__jue.jpg"] == by_file["talking/hellomeme__jue.mp4"]
    assert by_file["faces/tpsmm__source.png"] == by_file["talking/driving/styletalk__trump_clip1.mp4"]
    # held-out talking clips carry their own English speech, so they can be dubbed and compared
    talking = [e for e in manifest if e.kind == "talking" and e.split == "heldout"]
    assert all(e.language == "en" for e in talking)
    assert len({e.identity for e in talking}) >= 6
    # held-out speech includes English voices that are not held-out talking people (to dub them with)
    speakers = {e.identity for e in manifest if e.kind == "speech" and e.split == "heldout" and e.language == "en"}
    assert len(speakers - {e.identity for e in talking}) >= 2


# --- fetching on small files the test makes --------------------------------------------------------

def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=kit.COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in kit.COLUMNS})
    return path


def _row(file: str, data: bytes, kind="portrait", split="train", derived="", **kw) -> dict:
    return dict(file=file, kind=kind, split=split, identity=Path(file).stem, source_repo="someone/repo",
                source_path=f"assets/{Path(file).name}", commit="c" * 40, sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data), licence="MIT", derived=derived, **kw)


FILES = {
    "faces/a.jpg": (b"portrait A" * 100, "portrait", "train", ""),
    "faces/b.png": (b"portrait B" * 50, "portrait", "heldout", ""),
    "talking/c.mp4": (b"clip C" * 3000, "talking", "heldout", "remuxed: test"),
    "audio/d.flac": (b"speech D" * 10, "speech", "train", "converted: test"),
}


@pytest.fixture
def fake(tmp_path):
    """A mirror folder, its manifest, and an empty cache."""
    mirror = tmp_path / "mirror"
    rows = []
    for name, (data, kind, split, derived) in FILES.items():
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(data)
        rows.append(_row(name, data, kind, split, derived))
    return dict(mirror=mirror, cache=tmp_path / "cache", rows=rows,
                manifest=_write_manifest(tmp_path / "m.csv", rows))


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob("*") if p.name.endswith(".part")] if cache.exists() else []


def test_fetch_from_mirror_then_skip_cached(fake):
    report = kit.fetch(manifest=fake["manifest"], mirror=fake["mirror"], cache=fake["cache"])
    assert sorted(report.copied) == sorted(FILES) and not report.failures
    for name, (data, *_rest) in FILES.items():
        assert (fake["cache"] / name).read_bytes() == data
    assert report.paths == [fake["cache"] / r["file"] for r in fake["rows"]]

    again = kit.fetch(manifest=fake["manifest"], mirror=fake["mirror"], cache=fake["cache"])
    assert sorted(again.skipped) == sorted(FILES) and not again.copied

    # a cached file with the wrong content (same size) is replaced, not trusted
    (fake["cache"] / "faces/a.jpg").write_bytes(b"PORTRAIT A" * 100)
    third = kit.fetch(manifest=fake["manifest"], mirror=fake["mirror"], cache=fake["cache"])
    assert third.copied == ["faces/a.jpg"]
    assert (fake["cache"] / "faces/a.jpg").read_bytes() == FILES["faces/a.jpg"][0]


def test_select_and_paths(fake, monkeypatch):
    monkeypatch.setenv(kit.CACHE_ENV, str(fake["cache"]))
    monkeypatch.setenv(kit.MIRROR_ENV, str(fake["mirror"]))
    assert kit.default_cache() == fake["cache"]
    got = kit.paths(kind="portrait", split="heldout", manifest=fake["manifest"])
    assert got == [fake["cache"] / "faces/b.png"] and got[0].is_file()
    assert not (fake["cache"] / "faces/a.jpg").exists()  # only the selection is fetched


def test_fetch_links_the_selection_into_an_input_folder(fake, tmp_path):
    args = ["--manifest", str(fake["manifest"]), "--cache", str(fake["cache"]), "--mirror", str(fake["mirror"])]
    folder = tmp_path / "portraits"
    assert cli_main(["data", "fetch", *args, "--kind", "portrait", "--link", str(folder), "-q"]) == 0
    links = sorted(folder.iterdir())
    assert [p.name for p in links] == ["a.jpg", "b.png"] and all(p.is_symlink() for p in links)
    assert (folder / "a.jpg").read_bytes() == FILES["faces/a.jpg"][0]
    assert cli_main(["data", "fetch", *args, "--kind", "portrait", "--link", str(folder), "-q"]) == 0  # rerun
    with pytest.raises(kit.DataError, match="named 'a.jpg'"):
        kit.link([fake["cache"] / "faces/a.jpg", fake["mirror"] / "faces/a.jpg"], tmp_path / "clash")


def test_hash_mismatch_names_the_file_and_leaves_nothing(fake):
    (fake["mirror"] / "faces/a.jpg").write_bytes(b"tampered" * 125)
    with pytest.raises(kit.FetchError) as info:
        kit.fetch(manifest=fake["manifest"], mirror=fake["mirror"], cache=fake["cache"])
    msg = str(info.value)
    assert "faces/a.jpg" in msg and "sha256 mismatch" in msg and "faces/b.png" not in msg
    assert [f for f, _ in info.value.failures] == ["faces/a.jpg"]
    assert not (fake["cache"] / "faces/a.jpg").exists()           # never under the final name
    assert (fake["cache"] / "faces/b.png").is_file()              # the others were still fetched
    assert _leftovers(fake["cache"]) == []


def test_interrupted_copy_is_atomic(fake, monkeypatch):
    """A read that dies half way leaves no file under the final name and no temporary file."""
    class Dying:
        def __init__(self, path):
            self.fh, self.reads = open(path, "rb"), 0

        def read(self, n):
            self.reads += 1
            if self.reads > 1:
                raise OSError("disk went away")
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(kit, "_CHUNK", 64)
    real_open = open
    monkeypatch.setattr(kit, "open", lambda p, mode="r", *a, **k: Dying(p) if mode == "rb" and "mirror" in str(p)
                        and str(p).endswith("c.mp4") else real_open(p, mode, *a, **k), raising=False)
    report = kit.fetch(manifest=fake["manifest"], mirror=fake["mirror"], cache=fake["cache"], strict=False)
    assert [f for f, _ in report.failures] == ["talking/c.mp4"]
    assert "disk went away" in report.failures[0][1]
    assert not (fake["cache"] / "talking/c.mp4").exists()
    assert _leftovers(fake["cache"]) == []


def test_manifest_rejects_paths_outside_the_cache(tmp_path):
    bad = _write_manifest(tmp_path / "bad.csv", [_row("../escape.jpg", b"x")])
    with pytest.raises(kit.DataError, match="not a plain relative path"):
        kit.load_manifest(bad)
    dup = _write_manifest(tmp_path / "dup.csv", [_row("a.jpg", b"x"), _row("a.jpg", b"x")])
    with pytest.raises(kit.DataError, match="listed twice"):
        kit.load_manifest(dup)


# --- downloading: a local HTTP server stands in for the public source -----------------------------

@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 laid out as <repo>/<commit>/<path>, like raw.githubusercontent.com."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_from_source(fake, server):
    root, base = server
    for r in fake["rows"]:
        if not r["derived"]:
            dest = root / r["source_repo"] / r["commit"] / r["source_path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(FILES[r["file"]][0])
    report = kit.fetch(manifest=fake["manifest"], cache=fake["cache"], base_url=base, strict=False, timeout=5)
    assert sorted(report.downloaded) == ["faces/a.jpg", "faces/b.png"]
    assert (fake["cache"] / "faces/a.jpg").read_bytes() == FILES["faces/a.jpg"][0]
    failed = dict(report.failures)
    assert set(failed) == {"talking/c.mp4", "audio/d.flac"}   # derived rows need the mirror, and say so
    assert all("--mirror" in reason and "derived" in reason for reason in failed.values())

    # a file missing at the source: an HTTP error naming it; nothing left behind
    (root / "someone/repo" / ("c" * 40) / "assets/a.jpg").unlink()
    (fake["cache"] / "faces/a.jpg").unlink()
    with pytest.raises(kit.FetchError, match=r"faces/a\.jpg: download failed: .*HTTP 404"):
        kit.fetch(manifest=fake["manifest"], cache=fake["cache"], base_url=base, kind="portrait", timeout=5)
    assert not (fake["cache"] / "faces/a.jpg").exists() and _leftovers(fake["cache"]) == []


def test_download_without_network_fails_per_file(fake):
    with socket.socket() as s:   # a port nobody listens on: what "no network" looks like, fast
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = kit.fetch(manifest=fake["manifest"], cache=fake["cache"], base_url=f"http://127.0.0.1:{port}",
                       kind="portrait", strict=False, timeout=5)
    assert [f for f, _ in report.failures] == ["faces/a.jpg", "faces/b.png"]
    for name, reason in report.failures:
        assert reason.startswith(f"download failed: http://127.0.0.1:{port}/someone/repo/")
        assert "no network? use --mirror DIR" in reason
    assert not report.paths and _leftovers(fake["cache"]) == []


def test_cli_fetch_and_list(fake, capsys):
    args = ["--manifest", str(fake["manifest"]), "--cache", str(fake["cache"])]
    assert cli_main(["data", "list", *args]) == 0
    out = capsys.readouterr().out
    assert "portrait  heldout       1" in out and "total" in out
    assert cli_main(["data", "fetch", *args, "--mirror", str(fake["mirror"]), "--kind", "portrait", "speech"]) == 0
    out = capsys.readouterr().out
    assert "copied     faces/a.jpg" in out and "3 file(s) ready" in out
    assert cli_main(["data", "fetch", *args, "--base-url", "http://127.0.0.1:9", "--kind", "talking"]) == 1
    captured = capsys.readouterr()
    assert "FAILED  talking/c.mp4: derived" in captured.err
    assert cli_main(["data", "show", *args, "--files", "--split", "heldout"]) == 0
    out = capsys.readouterr().out
    assert "cached  faces/b.png" in out and "-       talking/c.mp4" in out


# --- the generator ---------------------------------------------------------------------------------

def test_generator_groups_people_and_splits(tmp_path):
    mirror = tmp_path / "kit"
    kit_rows = [
        ("faces/x__ann.jpg", "portrait", "p/ann.jpg", "Ann, woman"),
        ("talking/x__ann_talk.mp4", "talking", "v/ann.mp4 + w/ann.wav (muxed)",
         "Ann talking, English speech; face in 10/10 sampled frames; avsync_proxy corr=0.41 lag=1f"),
        ("audio/x__bob.flac", "speech", "a/bob.wav", "German (per filename); 16000 Hz 1ch; "
                                                      "converted to 16 kHz mono FLAC (PCM16) from the source wav"),
        ("faces/x__cid.jpg", "portrait", "p/cid.jpg", "Cid"),
    ]
    for name, *_ in kit_rows:
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        (mirror / name).write_bytes(name.encode())
    with open(mirror / "MANIFEST.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "kind", "source_repo", "source_path", "commit", "repo_license", "duration_s",
                    "face_width_px", "notes"])
        for name, kind, src, notes in kit_rows:
            w.writerow([name, kind, "o/r", src, "d" * 40, "MIT", "", "", notes])
    people = tmp_path / "people.yaml"
    people.write_text("people:\n  ann: [faces/x__ann.jpg, talking/x__ann_talk.mp4]\nheldout: [ann, x-bob]\n")
    rows = {r["file"]: r for r in build_manifest.build_rows(mirror, people)}
    assert rows["faces/x__ann.jpg"]["identity"] == rows["talking/x__ann_talk.mp4"]["identity"] == "ann"
    assert [rows[f]["split"] for f in ("faces/x__ann.jpg", "audio/x__bob.flac", "faces/x__cid.jpg")] == \
        ["heldout", "heldout", "train"]
    talk = rows["talking/x__ann_talk.mp4"]
    assert talk["derived"].startswith("remuxed: video stream of v/ann.mp4") and talk["source_path"] == "v/ann.mp4 + w/ann.wav"
    assert talk["avsync_proxy"] == "0.41" and talk["language"] == "en" and talk["description"] == "Ann talking, English speech"
    assert rows["audio/x__bob.flac"]["derived"].startswith("converted: a/bob.wav") and rows["audio/x__bob.flac"]["language"] == "de"
    assert rows["faces/x__cid.jpg"]["sha256"] == hashlib.sha256(b"faces/x__cid.jpg").hexdigest()
    # a written manifest loads, and the choices are checked against the kit
    out = tmp_path / "out.csv"
    assert build_manifest.main(["--mirror", str(mirror), "--people", str(people), "--out", str(out)]) == 0
    assert len(kit.load_manifest(out)) == 4
    assert build_manifest.main(["--mirror", str(mirror), "--people", str(people), "--out", str(out), "--check"]) == 0
    people.write_text("people:\n  ann: [faces/nobody.jpg]\nheldout: []\n")
    with pytest.raises(kit.DataError, match="faces/nobody.jpg"):
        build_manifest.build_rows(mirror, people)


# --- against the real kit (skipped without it) ------------------------------------------------------

@needs_kit
def test_real_manifest_hashes_match_the_mirror(manifest):
    picks = {e.kind: e for e in manifest}.values()   # one file of each kind
    for e in picks:
        path = KIT / e.file
        assert path.stat().st_size == e.bytes, e.file
        assert kit.sha256_of(path) == e.sha256, e.file


@needs_kit
def test_packaged_manifest_is_what_the_generator_writes():
    """The CSV is generated, never hand-edited: rebuilding it from the mirror changes nothing."""
    text = build_manifest.to_csv(build_manifest.build_rows(KIT))
    assert kit.MANIFEST.read_text(encoding="utf-8") == text, \
        "stale manifest: run python -m lipsync.data.build_manifest --mirror ../shared/data/faces-kit"
