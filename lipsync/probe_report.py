"""What ``lipsync probe`` reports: the media layer's view of a file plus faces in sampled frames."""

from __future__ import annotations

import dataclasses

from lipsync.media.probe import probe
from lipsync.media.video import sample_frames


def probe_report(uri: str, samples: int = 5) -> dict:
    info = probe(uri)
    report = {"file": str(uri), **dataclasses.asdict(info)}
    report["faces"] = None
    if info.video is not None or info.is_image:
        from lipsync.face import FaceDetector

        duration = info.duration or 0.0
        n = 1 if info.is_image else max(1, samples)
        # Sample instants spread over the clip, away from the very end (the last frame may be short).
        times = [duration * (i + 0.5) / n for i in range(n)] if duration > 0 else [0.0]
        found = []
        with FaceDetector() as det:
            for frame in sample_frames(uri, times):
                faces = det.detect(frame.image)
                found.append({
                    "time": round(frame.time, 3),
                    "count": len(faces),
                    "faces": [{"box": [round(v, 1) for v in f.bbox], "width": round(f.width, 1),
                               "score": round(float(f.score), 3),
                               "mouth_opening": round(float(f.mouth_opening), 3)} for f in faces],
                })
        report["faces"] = found
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['file']}"]
    dur = f"{r['duration']:.3f} s" if r.get("duration") is not None else "unknown"
    lines.append(f"  container: {r.get('format')}, duration {dur}")
    if r.get("is_image"):
        v = r["video"] or {}
        lines.append(f"  image: {v.get('width')}x{v.get('height')}")
    elif r.get("video"):
        v = r["video"]
        vfr = {True: "variable", False: "constant", None: "unknown"}[v.get("variable_frame_rate")]
        lines.append(f"  video: {v['codec']} {v['width']}x{v['height']}, {v['fps']:.3f} fps ({vfr} rate), "
                     f"~{v['num_frames']} frames, rotation {v['rotation']} deg")
    else:
        lines.append("  video: none")
    if r.get("audio"):
        a = r["audio"]
        adur = f"{a['duration']:.3f} s" if a.get("duration") is not None else "unknown length"
        lines.append(f"  audio: {a['codec']} {a['sample_rate']} Hz, {a['channels']} ch, {adur}")
    else:
        lines.append("  audio: none")
    faces = r.get("faces")
    if faces is not None:
        hit = sum(1 for s in faces if s["count"])
        lines.append(f"  faces: found in {hit}/{len(faces)} sampled frames")
        for s in faces:
            desc = ", ".join(f"{f['width']:.0f} px wide at ({f['box'][0]:.0f},{f['box'][1]:.0f}) "
                             f"score {f['score']:.2f}" for f in s["faces"]) or "no face"
            lines.append(f"    t={s['time']:7.2f} s  {s['count']} face(s): {desc}")
    return "\n".join(lines)
