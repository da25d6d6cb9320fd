"""Composite settings compared on the same generated crops: the model runs once per dub
(``benchmarks/real_faces.py --keep_crops`` saves each dub's composite inputs), then each setting of
``lipsync.face.composite`` composites those crops again, writes the video with the dub's speech and
scores it with ``lipsync eval`` against the input (eye-region PSNR, lower-face sharpness ratio, colour
shift, mouth opening r against the speech, LSE-C / offset).

    .venv/bin/python benchmarks/real_faces.py --keep_crops --out out/real_faces ...
    .venv/bin/python benchmarks/composite_variants.py --runs out/real_faces [--only STEM ...] \\
        [--set name:KEY=VALUE,KEY=VALUE ...] [--syncnet DIR] [--out out/composite_variants]

A setting is a name and overrides of the module's constants (e.g. ``narrow:JAW_SPAN=0.5``), plus
``MODE=person_warp`` for the composite that also follows the generated crop's own mesh (found on
each crop as the pipeline's ``person_warp`` mode finds it; e.g. ``warp:MODE=person_warp`` and
``jaw:MODE=person_warp,PERSON_PIXELS=0``); the module's defaults always run as ``default``. Writes variants.json and, per setting, a frame grid of
face zooms (rows: dubs; columns: input, then each setting) at 1.6 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def overridden(module, values: dict):
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, type(old[k])(v))
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def parse_setting(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        k, _, v = item.partition("=")
        values[k.strip()] = float(v) if v.strip().replace(".", "", 1).lstrip("-").isdigit() else v.strip()
    return name, values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="out/real_faces", help="a real_faces.py --keep_crops output folder")
    ap.add_argument("--only", nargs="*", default=None, help="dub stems to use (default: all with crops)")
    ap.add_argument("--set", dest="settings", nargs="*", default=[], help="NAME:KEY=VALUE,... settings")
    ap.add_argument("--syncnet", default=None)
    ap.add_argument("--out", default="out/composite_variants")
    args = ap.parse_args()

    import cv2

    from lipsync.eval import evaluate
    from lipsync.face import composite
    from lipsync.face.crop_mesh import CropMesh
    from lipsync.media.formats import FPS
    from lipsync.media.writer import VideoWriter
    from lipsync.media.audio import load_audio

    from lipsync.data import kit

    manifest = {e.file: e for e in kit.load_manifest()}
    mesh = CropMesh()
    runs, out = Path(args.runs), Path(args.out)
    result = json.loads((runs / "real_faces.json").read_text())
    rows = {Path(r["face"]).stem: r for r in result["rows"]}
    stems = [s for s in (args.only or rows) if (runs / "crops" / f"{s}.npz").exists()]
    settings = [("default", {})] + [parse_setting(s) for s in args.settings]
    table: dict[str, list[dict]] = {name: [] for name, _ in settings}
    zooms: dict[str, list[np.ndarray]] = {name: [] for name, _ in settings}
    inputs: list[np.ndarray] = []
    for stem in stems:
        data = np.load(runs / "crops" / f"{stem}.npz")
        images, crops, mats, pts = data["images"], data["crops"], data["matrices"], data["points"]
        regen = data["regen"] if data["regen"].size else None
        wav = runs / "inputs" / f"{stem}_speech.wav"
        row = rows[stem]
        ref = str(runs / "inputs" / f"{stem}.png") if row["kind"] == "portrait" else None
        if ref is None:
            ref = str(kit.fetch([manifest[row["face"]]]).paths[0])
        t = min(len(images) - 1, int(1.6 * FPS))
        inputs.append(_zoom(images[t], mats[t]))
        warped = any(v.get("MODE") == "person_warp" for _, v in settings)
        # as the Compositor's person_warp mode finds them; only when a setting uses them
        gen_pts = [mesh.points(crops[i], pts[i]) if warped else None for i in range(len(images))]
        for name, values in settings:
            dest = out / name / f"{stem}.mp4"
            dest.parent.mkdir(parents=True, exist_ok=True)
            values = dict(values)
            warp = values.pop("MODE", "person") == "person_warp"
            with overridden(composite, values):
                memory = composite.Appearance()  # as the Compositor keeps one per job
                frames = [composite.composite_person(images[i], crops[i], mats[i], pts[i], regen, appearance=memory,
                                                     index=i, gen_points=gen_pts[i] if warp else None)
                          for i in range(len(images))]
            with VideoWriter(str(dest), fps=FPS, audio=load_audio(str(wav), 16000), audio_rate=16000) as w:
                for f in frames:
                    w.write(f)
            zooms[name].append(_zoom(frames[t], mats[t]))
            rep = evaluate(str(dest), audio=str(wav), reference=ref, syncnet=args.syncnet,
                           out_dir=str(out / name / "reports" / stem), profile="tiny")
            rm = rep.get("reference_metrics") or {}
            entry = {"dub": stem, "kind": row["kind"], "psnr_eyes": rm.get("psnr_eyes"),
                     "sharpness_ratio": rm.get("sharpness_ratio_lower_face"),
                     "colour_shift": rm.get("colour_shift_lower_face"),
                     "mouth_r": (rep.get("mouth") or {}).get("r_speech_energy"),
                     "lse_c": (rep.get("sync") or {}).get("lse_c"), "offset": (rep.get("sync") or {}).get("offset")}
            table[name].append(entry)
            print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}),
                  flush=True)
    summary = {}
    for name, entries in table.items():
        summary[name] = {k: float(np.nanmean([e[k] for e in entries if e[k] is not None]))
                         for k in ("psnr_eyes", "sharpness_ratio", "colour_shift", "mouth_r", "lse_c")}
        print(f"{name:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in summary[name].items()))
    grid = np.concatenate([np.concatenate([inputs[i]] + [zooms[n][i] for n, _ in settings], axis=1)
                           for i in range(len(stems))], axis=0)
    cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    (out / "variants.json").write_text(json.dumps({"settings": dict(settings), "rows": table, "mean": summary},
                                                  indent=1))
    print(f"written {out / 'variants.json'} and {out / 'grid.png'} (columns: input, "
          + ", ".join(n for n, _ in settings) + ")")
    return 0


def _zoom(frame: np.ndarray, M: np.ndarray, size: int = 256) -> np.ndarray:
    """The face crop the model saw, at ``size`` px, cut from the frame (so it shows the composite)."""
    from lipsync.face.align import warp_to_crop

    crop = 96
    scale = size / crop
    m = np.asarray(M, np.float64) * scale
    return warp_to_crop(frame, m, size)


if __name__ == "__main__":
    sys.exit(main())
