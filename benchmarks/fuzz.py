"""Fuzzing what a user can hand this project: mutated media, manifests and upload bodies.

    .venv/bin/python benchmarks/fuzz.py --cases 5000 --seed 1 --out fuzz_report.json
    .venv/bin/python benchmarks/fuzz.py --cases 300 --targets image upload --save-failures /tmp/fz

Base files are made here (a short mp4 / mkv with audio, wav, flac, jpg / png / bmp / webp, CSV /
JSONL / Parquet manifests, multipart bodies), then each case mutates one: bit flips, truncation,
spliced or overwritten random bytes, zeroed ranges, duplicated or deleted chunks, and crafted
headers (a PNG / JPEG / BMP / WebP / Matroska claiming 100,000 x 100,000 pixels, a WAV / FLAC /
MP4 / Matroska claiming ten hours, absurd rates and channel counts, extreme box fields), plus
hostile manifest cells and form fields. Targets:

- ``probe``: ``lipsync.media.probe`` of any media file;
- ``decode``: every frame of a video (``iter_frames``, at 25 fps or the source rate);
- ``audio``: ``load_audio`` (16 kHz mono) of an audio file or a video's track;
- ``image``: ``read_image``;
- ``manifest``: ``lipsync.pipeline.manifest.load_job_input`` (CSV / JSONL / Parquet -> tasks);
- ``upload``: a multipart ``POST /generate`` through the server's own form dependency
  (``serve.request.generate_form``), body-limit middleware, error handlers and upload checks
  (``LipSyncIngress._prepare``: ``serve.validate`` and the probes), in process with FastAPI's
  TestClient. The real ingress is a Ray Serve deployment, so the route here calls its
  ``_prepare`` on a stand-in object holding the settings, and stops before the model call.

Every case runs in a worker process under a time limit (a pool of long-lived workers; one that
hangs, crashes or grows past ``--max-rss-mb`` is killed and replaced), so each case ends as:
``ok`` (accepted), ``clean`` (a LipSyncError whose message names the input; for uploads an HTTP
4xx with a JSON ``detail``), ``traceback`` (any other exception, or an error that does not name
the input, or an HTTP 5xx), ``hang``, ``crash`` (the worker died: a signal in a C decoder) or
``memory``. The summary lists the cases per target and outcome, every distinct failure class
(exception class and the innermost frame of this repository) with a reproducing case, and the
peak resident memory of the workers.
"""

# No `from __future__ import annotations`: FastAPI reads the upload route's signature.

import argparse
import collections
import contextlib
import csv
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("probe", "decode", "audio", "image", "manifest", "upload")
OUTCOMES = ("ok", "clean", "traceback", "hang", "crash", "memory")
FAILURES = ("traceback", "hang", "crash", "memory")

# Which base files each target mutates.
SEEDS_OF = {
    "probe": ["video.mp4", "video.mkv", "audio.wav", "audio.flac", "image.jpg", "image.png", "image.bmp",
              "image.webp"],
    "decode": ["video.mp4", "video.mkv"],
    "audio": ["audio.wav", "audio.flac", "video.mp4"],
    "image": ["image.jpg", "image.png", "image.bmp", "image.webp"],
    "manifest": ["manifest.csv", "manifest.jsonl", "manifest.parquet"],
    "upload": ["upload"],
}


# -- base files ---------------------------------------------------------------------------------------
def make_seeds(folder: Path) -> dict[str, Path]:
    """Small valid inputs, made fresh (nothing read from outside the repository)."""
    import cv2
    import numpy as np
    import soundfile

    from lipsync.media.writer import VideoWriter

    folder.mkdir(parents=True, exist_ok=True)
    rate = 16000
    t = np.arange(int(0.48 * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    for suffix in (".mp4", ".mkv"):
        with VideoWriter(str(folder / f"video{suffix}"), fps=25, audio=tone, audio_rate=rate) as writer:
            for i in range(12):
                frame = np.stack([(xx * 4 + i * 9) % 256, (yy * 5) % 256, np.full_like(xx, 40 + i * 8)], -1)
                writer.write(frame.astype(np.uint8))
    soundfile.write(str(folder / "audio.wav"), tone[:4800], rate, subtype="PCM_16")
    soundfile.write(str(folder / "audio.flac"), tone[:4800], rate)
    image = np.stack([(xx * 4) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    for suffix in (".jpg", ".png", ".bmp", ".webp"):
        ok, data = cv2.imencode(suffix, image)
        assert ok, suffix
        (folder / f"image{suffix}").write_bytes(data.tobytes())
    rows = [
        {"id": "a", "video": "video.mp4", "audio": "audio.wav", "num_steps": 4, "seed": 1},
        {"id": "b", "image": "image.png", "text": "hello there", "lang": "en", "face": "largest"},
        {"id": "c", "video": "video.mkv", "audio": "audio.flac", "output": "c.mp4", "guidance_scale": 1.5},
    ]
    write_manifest(folder / "manifest.csv", rows)
    write_manifest(folder / "manifest.jsonl", rows)
    write_manifest(folder / "manifest.parquet", rows)
    return {p.name: p for p in folder.iterdir()}


def write_manifest(path: Path, rows: list[dict]) -> None:
    suffix = path.suffix
    if suffix == ".csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    elif suffix == ".jsonl":
        lines = [json.dumps(r, default=str) for r in rows]
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(dict.fromkeys(k for r in rows for k in r))
        arrays = {}
        for c in columns:
            values = [r.get(c) for r in rows]
            try:
                arrays[c] = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                arrays[c] = pa.array([None if v is None else repr(v) for v in values])
        buf = io.BytesIO()
        pq.write_table(pa.table(arrays) if arrays else pa.table({"x": pa.array([], pa.int64())}), buf)
        path.write_bytes(buf.getvalue())


# -- mutations ----------------------------------------------------------------------------------------
EXTREME32 = (0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0x10000, 0xFFFF, 36000 * 90000)


def _bitflip(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _interesting(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01))
    return bytes(data)


def _truncate(rng, data):
    return data[: rng.randrange(len(data))]


def _splice(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 256)) + data[i:]


def _overwrite(rng, data):
    n = rng.randint(1, min(64, len(data)))
    i = rng.randrange(len(data) - n + 1)
    return data[:i] + rng.randbytes(n) + data[i + n:]


def _zero(rng, data):
    n = rng.randint(1, min(512, len(data)))
    i = rng.randrange(len(data) - n + 1)
    return data[:i] + bytes(n) + data[i + n:]


def _duplicate(rng, data):
    n = rng.randint(1, min(1024, len(data)))
    i = rng.randrange(len(data) - n + 1)
    j = rng.randrange(len(data) + 1)
    return data[:j] + data[i:i + n] + data[j:]


def _delete(rng, data):
    n = rng.randint(1, min(1024, len(data)))
    i = rng.randrange(len(data) - n + 1)
    return data[:i] + data[i + n:]


BYTE_MUTATIONS = {"bitflip": _bitflip, "interesting": _interesting, "truncate": _truncate, "splice": _splice,
                  "overwrite": _overwrite, "zero": _zero, "duplicate": _duplicate, "delete": _delete}


def _put(data: bytes, offset: int, fmt: str, value) -> bytes:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        return data
    return data[:offset] + struct.pack(fmt, value) + data[offset + size:]


def _craft(rng, data: bytes, suffix: str):
    """A header field set to an extreme value; None when the format has no crafted case."""
    huge = rng.choice(((100_000, 100_000), (20_000, 20_000), (9_000, 9_000), (65_535, 1), (1, 65_535),
                       (0, 0), (0x7FFFFFFF, 0x7FFFFFFF)))
    if suffix == ".png" and data[12:16] == b"IHDR":
        data = _put(_put(data, 16, ">I", huge[0]), 20, ">I", huge[1])
        return _put(data, 29, ">I", zlib.crc32(data[12:29])), f"png IHDR {huge[0]}x{huge[1]}"
    if suffix == ".jpg":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            p = data.find(marker)
            if p >= 0:
                hw = (min(huge[1], 65535), min(huge[0], 65535))
                data = _put(_put(data, p + 5, ">H", hw[0]), p + 7, ">H", hw[1])
                return data, f"jpeg SOF {hw[1]}x{hw[0]}"
    if suffix == ".bmp":
        w, h = huge
        h = rng.choice((h, -h if h < 0x7FFFFFFF else -0x7FFFFFFF))
        return _put(_put(data, 18, "<i", w), 22, "<i", h), f"bmp {w}x{h}"
    if suffix == ".webp" and data[12:16] == b"VP8 ":
        w, h = min(huge[0], 16383), min(huge[1], 16383)
        return _put(_put(data, 26, "<H", w), 28, "<H", h), f"webp VP8 {w}x{h}"
    if suffix == ".webp" and data[12:16] == b"VP8L":
        w, h = min(huge[0], 16384), min(huge[1], 16384)
        bits = (max(w, 1) - 1) | ((max(h, 1) - 1) << 14)
        keep = struct.unpack("<I", data[21:25])[0] & 0xF0000000 if len(data) >= 25 else 0
        return _put(data, 21, "<I", bits | keep), f"webp VP8L {w}x{h}"
    if suffix == ".wav":
        which = rng.choice(("rate", "channels", "data_size", "bits", "ten_hours"))
        if which == "rate":
            v = rng.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 384000 * 16))
            return _put(data, 24, "<I", v), f"wav sample rate {v}"
        if which == "channels":
            v = rng.choice((0, 255, 1024, 65535))
            return _put(data, 22, "<H", v), f"wav channels {v}"
        if which == "bits":
            v = rng.choice((0, 3, 7, 64, 65535))
            return _put(data, 34, "<H", v), f"wav bits {v}"
        p = data.find(b"data")
        if which == "ten_hours":
            # 8 kHz, 8-bit mono and a data chunk of ten hours of bytes.
            data = _put(_put(_put(_put(data, 24, "<I", 8000), 28, "<I", 8000), 32, "<H", 1), 34, "<H", 8)
            return _put(data, p + 4, "<I", 8000 * 36000), "wav claims 10 h"
        return _put(data, p + 4, "<I", 0xFFFFFFFF), "wav data size 0xffffffff"
    if suffix == ".flac" and data[:4] == b"fLaC":
        # STREAMINFO at 8: ... 20-bit rate, 3-bit channels-1, 5-bit bps-1, 36-bit total samples.
        which = rng.choice(("total", "rate"))
        if which == "total":
            return _put(data, 22, ">I", 0xFFFFFFFF), "flac total samples 2^32-1 (74 h at 16 kHz)"
        return _put(data, 18, ">H", rng.choice((0, 0xFFFF))), "flac sample rate field"
    if suffix == ".mp4":
        box = rng.choice((b"mvhd", b"mdhd", b"tkhd", b"stts", b"stsz", b"stsc", b"stco", b"ctts", b"avcC",
                          b"esds", b"elst", b"hdlr", b"stsd"))
        hits = []
        p = data.find(box)
        while p >= 0:
            hits.append(p)
            p = data.find(box, p + 1)
        if not hits:
            return None
        p = rng.choice(hits)
        if box in (b"mvhd", b"mdhd") and rng.random() < 0.5:
            # version 0: flags(4) created(4) modified(4) timescale(4) duration(4)
            scale = struct.unpack(">I", data[p + 16:p + 20])[0] or 1000
            return _put(data, p + 20, ">I", min(scale * 36000, 0xFFFFFFFF)), f"{box.decode()} duration 10 h"
        off = p + 4 + 4 * rng.randrange(8)
        v = rng.choice(EXTREME32)
        return _put(data, off, ">I", v), f"{box.decode()}+{off - p} = {v:#x}"
    if suffix == ".mkv":
        which = rng.choice(("duration", "pixels", "rate"))
        if which == "duration":
            p = data.find(b"\x44\x89")
            if p >= 0 and data[p + 2] == 0x88:
                return _put(data, p + 3, ">d", 36e6), "mkv Duration 10 h"
            if p >= 0 and data[p + 2] == 0x84:
                return _put(data, p + 3, ">f", 36e6), "mkv Duration 10 h"
            return None
        if which == "pixels":
            for element in (b"\xb0", b"\xba"):
                p = data.find(element + b"\x81")
                if p >= 0:
                    data = data[:p] + element + b"\x83" + struct.pack(">I", 100_000)[1:] + data[p + 3:]
            return data, "mkv PixelWidth/PixelHeight 100000"
        p = data.find(b"\xb5\x88")  # SamplingFrequency (8-byte float)
        if p >= 0:
            return _put(data, p + 2, ">d", rng.choice((0.0, -1.0, 1e12, float("nan")))), "mkv SamplingFrequency"
        return None
    return None


def mutate_bytes(rng, data: bytes, suffix: str) -> tuple[bytes, str]:
    if rng.random() < 0.2:
        crafted = _craft(rng, data, suffix)
        if crafted is not None:
            return crafted
    name = rng.choice(sorted(BYTE_MUTATIONS))
    if not data:
        return data, "empty"
    out = BYTE_MUTATIONS[name](rng, data)
    if rng.random() < 0.15:  # stack a second mutation now and then
        second = rng.choice(sorted(BYTE_MUTATIONS))
        out = BYTE_MUTATIONS[second](rng, out) if out else out
        name = f"{name}+{second}"
    return out, name


HOSTILE = (None, "", " ", "nan", float("nan"), float("inf"), -1, 0, 10 ** 30, 2 ** 63, -2 ** 63, 1e308, True,
           False, [], {}, [1, "x"], {"a": {"b": 1}}, "x" * 5000, "\x00", "\u00e9\U0001f389", "../../../etc/passwd",
           "/dev/zero", "s3:/", "file://", "C:\\x.mp4", "video.mp4", "image.png", "a,b\"c", "\r\n", "1e999",
           "-0", "0x10", "true", "yes", "largest", "all", "10:20:30:40", "\ud800")
COLUMNS = ("id", "video", "image", "audio", "text", "lang", "language", "voice", "output", "num_steps",
           "guidance_scale", "seed", "face", "loop", "silence_gating", "overlap", "deepcache", "batch_size",
           "", " id", "ID", "\u00e9", "x" * 300)


def hostile_rows(rng) -> list[dict]:
    rows = []
    for n in range(rng.randint(0, 12)):
        row = {"id": rng.choice((f"r{n}", f"r{n}", f"r{rng.randint(0, 3)}", rng.choice(HOSTILE)))}
        if rng.random() < 0.8:
            row["video" if rng.random() < 0.7 else "image"] = rng.choice(("video.mp4", "image.png",
                                                                          rng.choice(HOSTILE)))
        if rng.random() < 0.8:
            row["audio" if rng.random() < 0.7 else "text"] = rng.choice(("audio.wav", rng.choice(HOSTILE)))
        for _ in range(rng.randint(0, 5)):
            row[rng.choice(COLUMNS)] = rng.choice(HOSTILE)
        rows.append(row)
    return rows


def mutate_manifest(rng, seeds: dict[str, Path], seed_name: str, path: Path) -> str:
    suffix = Path(seed_name).suffix
    if rng.random() < 0.5:
        rows = hostile_rows(rng)
        try:
            write_manifest(path, rows)
        except Exception:  # a value this writer cannot hold: fall back to its repr
            write_manifest(path, [{k: repr(v) for k, v in r.items()} for r in rows])
        label = "hostile rows"
        if rng.random() < 0.3:
            data, how = mutate_bytes(rng, path.read_bytes(), suffix)
            path.write_bytes(data)
            label += f" + {how}"
        return label
    data, how = mutate_bytes(rng, seeds[seed_name].read_bytes(), suffix)
    path.write_bytes(data)
    return how


FORM_VALUES = ("1", "4", "0", "-1", "101", "1e999", "nan", "inf", "abc", "", " ", "\x00", "x" * 3000, "true",
               "false", "2.5", "largest", "all", "0,0,10,10", "10:10:20:20", "\u00e9\U0001f389", "../x")
FILENAMES = (None, "", "video.mp4", "x.MP4", "../../etc/passwd", "a" * 300 + ".mp4", "noext", ".mp4", "x.mp4.exe",
             "x.png", "x.wav", "x.txt", "\u00e9.mkv", "x.mp4\x00.png", "x.", "x.mov", "x.jpg", "x.webm",
             "x.flac", "x.mp3")
CONTENT_TYPES = (None, "video/mp4", "image/png", "audio/wav", "application/octet-stream", "text/plain", "",
                 "video/mp4; codecs=avc1", "multipart/form-data", "\u00e9/x")


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str) -> bytes:
    out = io.BytesIO()
    for name, filename, ctype, payload in parts:
        out.write(f"--{boundary}\r\n".encode())
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disp}\r\n".encode("utf-8", "surrogatepass"))
        if ctype is not None:
            out.write(f"Content-Type: {ctype}\r\n".encode("utf-8", "surrogatepass"))
        out.write(b"\r\n" + payload + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def mutate_upload(rng, seeds: dict[str, Path]) -> tuple[bytes, dict, str]:
    """A multipart body (and its headers) for POST /generate, with something hostile in it."""
    boundary = "fuzzboundary" + "".join(rng.choice("0123456789abcdef") for _ in range(16))
    face = rng.choice(("video.mp4", "video.mkv", "image.png", "image.jpg", "audio.wav"))
    field = "image" if face.startswith("image") and rng.random() < 0.5 else "video"
    speech = rng.choice(("audio.wav", "audio.flac", "video.mp4", None))
    labels = []
    face_data = seeds[face].read_bytes()
    speech_data = seeds[speech].read_bytes() if speech else b""
    which = rng.choice(("face bytes", "speech bytes", "fields", "names", "body", "structure"))
    if which == "face bytes":
        face_data, how = mutate_bytes(rng, face_data, Path(face).suffix)
        labels.append(f"{face}: {how}")
    elif which == "speech bytes" and speech:
        speech_data, how = mutate_bytes(rng, speech_data, Path(speech).suffix)
        labels.append(f"{speech}: {how}")
    parts = [(field, face, rng.choice(CONTENT_TYPES[:4]), face_data)]
    if speech:
        parts.append(("audio", speech, "audio/wav", speech_data))
    else:
        parts.append(("text", None, None, b"hello world"))
    if which == "fields":
        for _ in range(rng.randint(1, 4)):
            name = rng.choice(("num_steps", "guidance_scale", "seed", "face", "loop", "silence_gating", "overlap",
                               "deepcache", "lang", "voice", "text", "unknown", ""))
            value = rng.choice(FORM_VALUES)
            parts.append((name, None, None, value.encode("utf-8", "surrogatepass")))
            labels.append(f"field {name}={value[:20]!r}")
    elif which == "names":
        i = rng.randrange(len(parts))
        name, _, _, payload = parts[i]
        filename, ctype = rng.choice(FILENAMES), rng.choice(CONTENT_TYPES)
        parts[i] = (name, filename, ctype, payload)
        labels.append(f"{name} filename={str(filename)[:40]!r} type={ctype!r}")
    elif which == "structure":
        how = rng.choice(("duplicate", "drop", "swap", "empty file", "both faces"))
        if how == "duplicate":
            parts.append(rng.choice(parts))
        elif how == "drop":
            parts.pop(rng.randrange(len(parts)))
        elif how == "swap":
            parts = [(parts[1][0], *parts[0][1:]), (parts[0][0], *parts[1][1:])]
        elif how == "empty file":
            parts[0] = (parts[0][0], parts[0][1], parts[0][2], b"")
        else:
            parts.append(("image", "image.png", "image/png", seeds["image.png"].read_bytes()))
        labels.append(f"structure: {how}")
    body = multipart(parts, boundary)
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    if which == "body":
        body, how = mutate_bytes(rng, body, "")
        labels.append(f"body: {how}")
        if rng.random() < 0.2:
            headers["content-type"] = rng.choice(("multipart/form-data", "multipart/form-data; boundary=",
                                                  "application/json", "text/plain", f"multipart/form-data; "
                                                  f"boundary={boundary[:-1]}"))
            labels.append(f"content-type {headers['content-type']!r}")
    if which == "speech bytes" and not speech:
        labels.append("text only")
    return body, headers, "; ".join(labels) or which


def make_case(index: int, seed: int, targets: tuple[str, ...], seeds: dict[str, Path], folder: Path) -> dict:
    """Case ``index`` of a run: deterministic in (seed, index); writes its input under ``folder``."""
    rng = random.Random(f"{seed}:{index}")
    target = targets[index % len(targets)]
    seed_name = rng.choice(SEEDS_OF[target])
    case = {"index": index, "target": target, "seed_file": seed_name}
    if target == "upload":
        body, headers, how = mutate_upload(rng, seeds)
        path = folder / f"case-{index:06d}.body"
        path.write_bytes(body)
        case.update(path=str(path), headers=headers, mutation=how)
        return case
    path = folder / f"case-{index:06d}{Path(seed_name).suffix}"
    if target == "manifest":
        how = mutate_manifest(rng, seeds, seed_name, path)
    else:
        data, how = mutate_bytes(rng, seeds[seed_name].read_bytes(), Path(seed_name).suffix)
        path.write_bytes(data)
    if target == "decode":
        case["fps"] = rng.choice((25.0, None))
    case.update(path=str(path), mutation=how)
    return case


# -- the worker ---------------------------------------------------------------------------------------
class _Upload:
    """POST /generate as the ingress handles it up to the model call, without Ray Serve."""

    def __init__(self, state_dir: str):
        from fastapi import Depends, FastAPI, HTTPException
        from fastapi.exceptions import RequestValidationError
        from fastapi.testclient import TestClient
        from types import SimpleNamespace

        import serve.app as ingress_module
        from serve.config import load_settings
        from serve.errors import ApiError
        from serve.limits import BodyLimitMiddleware, configure_body_limits
        from serve.request import generate_form

        settings = load_settings({"mode": "api", "state_dir": state_dir,
                                  "limits": {"max_upload_mb": 1, "max_media_seconds": 30,
                                             "generate_max_seconds": 20, "upload_idle_timeout_s": 5}})
        configure_body_limits(settings.limits)
        ingress = SimpleNamespace(limits=settings.limits, settings=settings)
        prepare = ingress_module.LipSyncIngress.func_or_class._prepare
        app = FastAPI()
        app.add_middleware(BodyLimitMiddleware)
        app.add_exception_handler(ApiError, ingress_module._api_error)
        app.add_exception_handler(HTTPException, ingress_module._http_error)
        app.add_exception_handler(RequestValidationError, ingress_module._validation_error)
        work_root = Path(state_dir) / "tmp"

        @app.post("/generate")
        async def generate(form=Depends(generate_form)):
            work = Path(tempfile.mkdtemp(dir=work_root))
            try:
                spec = await prepare(ingress, form, work, True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return {"inputs": spec["inputs"], "options": spec["options"]}

        work_root.mkdir(parents=True, exist_ok=True)
        # Unexpected exceptions propagate out of the client: a traceback, as a user would get a 500.
        self.client = TestClient(app, raise_server_exceptions=True)

    def post(self, body: bytes, headers: dict) -> tuple[str, str, str]:
        response = self.client.post("/generate", content=body, headers=headers)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code < 300:
            return "ok", "", ""
        detail = payload.get("detail") if isinstance(payload, dict) else None
        if 400 <= response.status_code < 500 and isinstance(detail, str) and detail:
            return "clean", f"HTTP {response.status_code}", detail
        return "traceback", f"HTTP {response.status_code}", response.text[:300]


def _where(err: BaseException) -> str:
    """The innermost frame of this repository in ``err``'s traceback (else the innermost one)."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if str(ROOT) in f.filename and "/.venv/" not in f.filename
            and not f.filename.endswith("benchmarks/fuzz.py")]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    name = os.path.relpath(frame.filename, ROOT) if str(ROOT) in frame.filename else frame.filename
    return f"{name}:{frame.lineno} {frame.name}"


def run_case(case: dict, upload: "_Upload | None", out_dir: str) -> dict:
    from lipsync.errors import LipSyncError

    target, path = case["target"], case["path"]
    result = {"outcome": "ok", "error": "", "message": "", "where": ""}
    try:
        if target == "probe":
            from lipsync.media import probe

            probe(path)
        elif target == "decode":
            from lipsync.media import iter_frames

            for _ in iter_frames(path, fps=case.get("fps")):
                pass
        elif target == "audio":
            from lipsync.media import load_audio

            load_audio(path)
        elif target == "image":
            from lipsync.media import read_image

            read_image(path)
        elif target == "manifest":
            from lipsync.options import GenerateOptions
            from lipsync.pipeline.manifest import load_job_input

            load_job_input(out_dir, GenerateOptions(), manifest=path)
        elif target == "upload":
            outcome, error, message = upload.post(Path(path).read_bytes(), case["headers"])
            result.update(outcome=outcome, error=error, message=message)
        else:
            raise ValueError(f"unknown target {target}")
    except LipSyncError as err:
        named = os.path.basename(path) in str(err)
        result.update(outcome="clean" if named else "traceback",
                      error=type(err).__name__ if named else f"{type(err).__name__} (input not named)",
                      message=str(err)[:500], where=_where(err))
    except Exception as err:  # what a user would see as a traceback
        result.update(outcome="traceback", error=type(err).__name__, message=str(err)[:500], where=_where(err))
    return result


def _worker(conn, targets: tuple[str, ...], state_dir: str) -> None:
    # C decoders and OpenCV print to the process's stderr: keep the summary readable.
    log = os.open(os.path.join(state_dir, f"worker-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 2)
    import lipsync.media  # noqa: F401  (imports before "ready": they do not count against a case's time)
    import lipsync.pipeline.manifest  # noqa: F401

    upload = _Upload(state_dir) if "upload" in targets else None
    out_dir = os.path.join(state_dir, "out")
    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            return
        start = time.perf_counter()
        result = run_case(case, upload, out_dir)
        result["seconds"] = round(time.perf_counter() - start, 4)
        result["maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        conn.send(result)


class _Slot:
    def __init__(self, ctx, targets, state_dir):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, targets, state_dir), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.case = None
        self.started = 0.0
        self.peak_rss = 0

    def kill(self):
        with contextlib.suppress(Exception):
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def run(cases: int = 200, seed: int = 0, targets: tuple[str, ...] = TARGETS, timeout: float = 10.0,
        workers: int = 2, max_rss_mb: float = 2048.0, save_failures: str | None = None,
        progress: bool = False) -> dict:
    """Run ``cases`` cases; returns the report (``summary`` and one record per case)."""
    import psutil

    wall = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="lipsync-fuzz-") as tmp:
        tmp = Path(tmp)
        state_dir = tmp / "state"
        state_dir.mkdir()
        seeds = make_seeds(tmp / "seeds")
        # Manifests name media relative to their own folder: the case folder holds copies.
        case_dir = tmp / "cases"
        case_dir.mkdir()
        for name, p in seeds.items():
            shutil.copy(p, case_dir / name)
        slots = [_Slot(ctx, targets, str(state_dir)) for _ in range(max(1, workers))]
        todo = collections.deque(range(cases))
        records: list[dict] = []
        restarts = 0
        peak_rss_mb = 0.0

        def finish(slot: _Slot, result: dict) -> None:
            nonlocal peak_rss_mb
            case = slot.case
            record = {k: v for k, v in case.items() if k not in ("path", "headers")}
            record.update(result)
            record["rss_seen_mb"] = round(slot.peak_rss / 2 ** 20, 1)
            peak_rss_mb = max(peak_rss_mb, record.get("maxrss_mb", 0.0), record["rss_seen_mb"])
            records.append(record)
            if record["outcome"] in FAILURES and save_failures:
                Path(save_failures).mkdir(parents=True, exist_ok=True)
                shutil.copy(case["path"], Path(save_failures) / Path(case["path"]).name)
                if case.get("headers"):
                    (Path(save_failures) / (Path(case["path"]).name + ".headers.json")).write_text(
                        json.dumps(case["headers"]))
            with contextlib.suppress(FileNotFoundError):
                os.remove(case["path"])
            slot.case = None
            if progress and len(records) % 250 == 0:
                counts = collections.Counter(r["outcome"] for r in records)
                print(f"  {len(records)}/{cases} cases, {dict(counts)}, {time.perf_counter() - wall:.0f} s",
                      flush=True)

        try:
            while todo or any(s.case is not None for s in slots):
                for s in slots:
                    if s.ready and s.case is None and todo:
                        s.case = make_case(todo.popleft(), seed, targets, seeds, case_dir)
                        s.peak_rss = 0
                        s.started = time.perf_counter()
                        s.conn.send(s.case)
                ready = multiprocessing.connection.wait([s.conn for s in slots], timeout=0.05)
                for i, s in enumerate(list(slots)):
                    dead = None
                    if s.conn in ready:
                        try:
                            message = s.conn.recv()
                        except (EOFError, OSError):
                            s.proc.join(5)
                            dead = f"worker died (exit code {s.proc.exitcode})"
                        else:
                            if message == "ready":
                                s.ready = True
                            else:
                                finish(s, message)
                            continue
                    elif s.case is not None:
                        with contextlib.suppress(psutil.Error):
                            s.peak_rss = max(s.peak_rss, psutil.Process(s.proc.pid).memory_info().rss)
                        if s.peak_rss > max_rss_mb * 2 ** 20:
                            dead = "memory"
                        elif time.perf_counter() - s.started > timeout:
                            dead = "hang"
                        elif not s.proc.is_alive():
                            dead = f"worker died (exit code {s.proc.exitcode})"
                    elif not s.proc.is_alive():
                        dead = f"worker died (exit code {s.proc.exitcode})"
                    if dead is None:
                        continue
                    s.kill()
                    if s.case is not None:
                        outcome = dead if dead in ("hang", "memory") else "crash"
                        finish(s, {"outcome": outcome, "error": dead, "message": "", "where": "",
                                   "seconds": round(time.perf_counter() - s.started, 3)})
                    elif not s.ready:
                        raise RuntimeError(f"a fuzz worker failed to start: {dead}; see {state_dir}/worker-*.log")
                    restarts += 1
                    slots[i] = _Slot(ctx, targets, str(state_dir))
        finally:
            for s in slots:
                with contextlib.suppress(Exception):
                    s.conn.send(None)
            for s in slots:
                s.proc.join(3)
                if s.proc.is_alive():
                    s.kill()
    records.sort(key=lambda r: r["index"])
    return {"summary": summarize(records, time.perf_counter() - wall, peak_rss_mb, restarts,
                                 dict(cases=cases, seed=seed, targets=list(targets), timeout=timeout,
                                      workers=workers, max_rss_mb=max_rss_mb)),
            "cases": records}


def summarize(records: list[dict], wall: float, peak_rss_mb: float, restarts: int, config: dict) -> dict:
    per_target = {t: dict.fromkeys(OUTCOMES, 0) for t in dict.fromkeys(r["target"] for r in records)}
    totals = dict.fromkeys(OUTCOMES, 0)
    classes: dict[str, dict] = {}
    for r in records:
        per_target[r["target"]][r["outcome"]] += 1
        totals[r["outcome"]] += 1
        if r["outcome"] in FAILURES:
            key = f"{r['target']}: {r['outcome']} {r['error']} at {r['where']}"
            entry = classes.setdefault(key, {"count": 0, "example": {k: r[k] for k in
                                             ("index", "seed_file", "mutation", "message")}})
            entry["count"] += 1
    return {"config": config, "cases": len(records), "totals": totals, "per_target": per_target,
            "failure_classes": classes, "peak_rss_mb": peak_rss_mb, "worker_restarts": restarts,
            "wall_seconds": round(wall, 1),
            "slowest_case_seconds": max((r.get("seconds", 0) for r in records), default=0)}


def print_summary(summary: dict) -> None:
    print(f"{'target':10s}" + "".join(f"{o:>11s}" for o in OUTCOMES))
    for target, counts in summary["per_target"].items():
        print(f"{target:10s}" + "".join(f"{counts[o]:11d}" for o in OUTCOMES))
    print(f"{'total':10s}" + "".join(f"{summary['totals'][o]:11d}" for o in OUTCOMES))
    print(f"cases {summary['cases']}, wall {summary['wall_seconds']} s, peak worker RSS "
          f"{summary['peak_rss_mb']:.0f} MB, slowest case {summary['slowest_case_seconds']:.2f} s, "
          f"worker restarts {summary['worker_restarts']}")
    for key, entry in summary["failure_classes"].items():
        ex = entry["example"]
        print(f"  {entry['count']:5d} x {key}\n          e.g. case {ex['index']} ({ex['seed_file']}, "
              f"{ex['mutation']}): {ex['message'][:160]!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-rss-mb", type=float, default=2048.0,
                        help="a worker growing past this is killed and the case counts as 'memory'")
    parser.add_argument("--out", help="write the report (summary and every case) as JSON here")
    parser.add_argument("--save-failures", help="copy the input of every failing case into this folder")
    args = parser.parse_args(argv)
    report = run(args.cases, args.seed, tuple(args.targets), args.timeout, args.workers, args.max_rss_mb,
                 args.save_failures, progress=True)
    print_summary(report["summary"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 1 if any(report["summary"]["totals"][o] for o in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
