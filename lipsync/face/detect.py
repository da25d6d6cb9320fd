"""Find every face in a frame and its 478-point mesh, with mediapipe 0.10.21's bundled models.

Two stages, because neither mediapipe model does the whole job alone:

1. Boxes: the full-range BlazeFace detector (``model_selection=1``). It sees a 192 x 192
   letterboxed copy of its input and, measured on the bundled portrait pasted on textured
   backgrounds, finds a face reliably only when the face is at least ~12 % of the input's long side
   (``DETECTABLE_FRACTION``); below ~6 % it finds nothing. So a wide shot is searched on a pyramid
   of overlapping square tiles (``plan_tiles``): the whole frame first, then levels of smaller tiles
   until a ``min_face_px`` face is >= 12 % of a tile. Each level's tiles overlap by 1.5 x the largest
   face the coarser level can miss, so every face lies whole inside some tile of the level that has
   to find it. Duplicates across tiles and levels are merged by NMS.
2. Mesh: for each box, the face mesh (static mode, irises refined) runs on an upscaled square crop
   of ``crop_scale`` x the box, resized to ``mesh_size`` px; its own short-range detector is happy
   there because the face fills about half the crop. Landmarks are mapped back to frame pixels.
   A box on which the mesh finds no face, or a different face, is rejected: this is also what keeps
   the tiled detector's rare false positives out.

The mediapipe graphs are created once per FaceDetector and reused (creating one costs ~50-100 ms).
They are not thread-safe: use one FaceDetector per thread / actor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from lipsync.face import landmarks as lmk
from lipsync.face.quiet import quiet_native_logs

# Smallest face / tile-side ratio the full-range detector finds reliably. Measured with the
# portrait on textured 256-1024 px tiles: all found from 0.12 up (to 0.9), 7-10 of 8-10 at 0.10,
# about half at 0.06, none at 0.05; the confidence threshold (0.2-0.5) does not change it.
DETECTABLE_FRACTION = 0.12
# Overlap of tiles, in faces: a face needs some context around it to be detected.
_TILE_OVERLAP_FACES = 1.5
# Ratio between the tile sides of two pyramid levels (fewer levels vs more overlap per level).
_LEVEL_RATIO = 2.4


@dataclass(eq=False)  # arrays inside: compare faces by identity, not by value
class Face:
    """One face in a frame. ``bbox`` is the tight box around the mesh points (frame pixels; it
    can reach past the frame's edge for a face the edge cuts), ``landmarks`` the 478 x 3 mesh
    (x, y in frame pixels, OpenCV convention: pixel (i, j) is centred on (i, j); z mediapipe's
    depth in the same pixel scale, smaller = nearer),
    ``score`` the box detector's confidence (refine() carries the previous one over)."""

    bbox: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def center(self) -> tuple[float, float]:
        return (float(self.bbox[0] + self.bbox[2]) / 2.0, float(self.bbox[1] + self.bbox[3]) / 2.0)

    @property
    def landmarks68(self) -> np.ndarray:
        return lmk.to_68(self.landmarks)

    @property
    def mouth_opening(self) -> float:
        return lmk.mouth_opening(self.landmarks)

    @property
    def mouth_width(self) -> float:
        return lmk.mouth_width(self.landmarks)


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    p = np.asarray(points)[:, :2]
    return (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max()))


def box_iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _overlap_min(a, b) -> float:
    """Intersection over the smaller box: catches a partial-face box inside a whole-face box,
    which IoU alone misses."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller) if smaller > 0 else 0.0


def _nms(boxes: list, scores: list, iou_thr: float = 0.3, overlap_thr: float = 0.6) -> list[int]:
    """Indices kept, best score first. A box is a duplicate of a kept one when IoU > iou_thr or
    when most of it lies inside it (overlap_thr, for faces cut by a tile border)."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[k]) <= iou_thr and _overlap_min(boxes[i], boxes[k]) <= overlap_thr
               for k in keep):
            keep.append(i)
    return keep


def _positions(length: int, side: int, stride: float) -> list[int]:
    if side >= length:
        return [0]
    n = int(math.ceil((length - side) / stride)) + 1
    # Spread the tiles evenly so the last one ends exactly at the border.
    return [int(round(i * (length - side) / (n - 1))) for i in range(n)]


def plan_tiles(height: int, width: int, min_face_px: float) -> list[tuple[int, int, int]]:
    """Square tiles (x0, y0, side) to run the box detector on, coarse to fine (see module doc).
    The first entry is the whole frame (side = long side; mediapipe letterboxes it); the others
    lie inside the frame."""
    long_side = max(height, width)
    tiles = [(0, 0, long_side)]
    finest = max(min_face_px / DETECTABLE_FRACTION, 64.0)
    prev = float(long_side)
    while prev > finest * 1.05:
        # Square tiles no larger than the short side (a larger one would be letterboxed anyway).
        side = min(max(finest, prev / _LEVEL_RATIO), float(min(height, width)))
        if side >= prev * 0.95:
            break
        overlap = _TILE_OVERLAP_FACES * DETECTABLE_FRACTION * prev
        stride = max(side - overlap, side * 0.25)
        s = int(round(side))
        for y0 in _positions(height, s, stride):
            for x0 in _positions(width, s, stride):
                tiles.append((x0, y0, s))
        prev = side
    return tiles


def square_crop(image: np.ndarray, cx: float, cy: float, side: float, out: int):
    """Axis-aligned square crop centred on (cx, cy), `side` frame pixels, resized to `out` px,
    zero-padded where it leaves the frame. Returns (crop, x0, y0, scale); in pixel-edge
    coordinates (0 = left edge of the first pixel) frame = crop / scale + (x0, y0)."""
    side_i = max(2, int(round(side)))
    x0 = int(round(cx - side_i / 2))
    y0 = int(round(cy - side_i / 2))
    h, w = image.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side_i, w), min(y0 + side_i, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return None, x0, y0, out / side_i
    region = image[sy0:sy1, sx0:sx1]
    if (sx0, sy0, sx1, sy1) != (x0, y0, x0 + side_i, y0 + side_i):
        region = cv2.copyMakeBorder(region, sy0 - y0, y0 + side_i - sy1, sx0 - x0, x0 + side_i - sx1,
                                    cv2.BORDER_CONSTANT, value=0)
    # Area averaging only from 2x down: below that its aliasing gain is nil for the mesh and it
    # costs ~2 ms on a 1080p face (bilinear: ~0.3 ms).
    interp = cv2.INTER_AREA if side_i >= 2 * out else cv2.INTER_LINEAR
    crop = cv2.resize(region, (out, out), interpolation=interp)
    return np.ascontiguousarray(crop), x0, y0, out / side_i


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _warmup_image(size: int) -> np.ndarray:
    """The bundled portrait: the mesh logs its last start-up warning only once it sees a face."""
    from importlib import resources

    data = resources.files("lipsync.assets").joinpath("faces", "astronaut.jpg").read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[20:276, 100:356, ::-1]
    return np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))


class FaceDetector:
    """Every face of a frame with its mesh; see the module doc for the method and its costs.

    max_faces: at most this many faces are returned (largest first).
    min_detection_confidence: threshold of the box detector.
    min_face_px: faces narrower than this (mesh box width) are neither searched for nor returned;
        the tiling cost grows as (frame size / min_face_px)^2.
    mesh_size: side of the crop the mesh runs on; crop_scale: crop side / face box side.
    """

    def __init__(self, max_faces: int = 8, min_detection_confidence: float = 0.5, min_face_px: float = 40,
                 mesh_size: int = 256, crop_scale: float = 2.0):
        import mediapipe as mp  # deferred: importing mediapipe costs ~1 s

        self.max_faces = int(max_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_face_px = float(min_face_px)
        self.mesh_size = int(mesh_size)
        self.crop_scale = float(crop_scale)
        with quiet_native_logs():
            self._boxes = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_detection_confidence)
            # The short-range model is better at close-ups (face > ~30 % of the frame), where the
            # full-range one occasionally misses a perfectly clear face; it runs once per frame.
            self._boxes_near = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=self.min_detection_confidence)
        # Two faces, not one: a crop around a face in a crowd can hold a neighbour that the mesh's
        # own detector ranks first; we keep whichever matches the box we asked about.
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=2, refine_landmarks=True, min_detection_confidence=0.5)
            # The graphs log their (harmless) start-up warnings on the first frame they process.
            warm = _warmup_image(self.mesh_size)
            for graph in (self._boxes, self._boxes_near, self._mesh):
                graph.process(warm)
        self._plans: dict[tuple[int, int], list] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        for g in (getattr(self, "_boxes", None), getattr(self, "_boxes_near", None), getattr(self, "_mesh", None)):
            if g is not None:
                g.close()
        self._boxes = self._boxes_near = self._mesh = None

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- stage 1: boxes ----------------------------------------------------------------------
    def detect_boxes(self, image_rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Candidate face boxes (x0, y0, x1, y1) with scores, deduplicated, best score first."""
        img = as_rgb_uint8(image_rgb)
        h, w = img.shape[:2]
        plan = self._plans.get((h, w))
        if plan is None:
            plan = self._plans[(h, w)] = plan_tiles(h, w, self.min_face_px)
        boxes, scores = [], []
        for x0, y0, side in plan:
            tile = img if side >= max(h, w) else np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side])
            th, tw = tile.shape[:2]
            res = self._boxes.process(tile)
            for d in res.detections or []:
                rb = d.location_data.relative_bounding_box
                bx0, by0 = x0 + rb.xmin * tw, y0 + rb.ymin * th
                bx1, by1 = bx0 + rb.width * tw, by0 + rb.height * th
                # A box touching an inner tile border is probably a cut face; the tile that holds
                # it whole reports it too, with a higher score, and NMS keeps that one.
                boxes.append((bx0, by0, bx1, by1))
                scores.append(float(d.score[0]))
        for d in self._boxes_near.process(img).detections or []:
            rb = d.location_data.relative_bounding_box
            boxes.append((rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h))
            scores.append(float(d.score[0]))
        keep = _nms(boxes, scores)
        return [(boxes[i], scores[i]) for i in keep]

    # -- stage 2: mesh ------------------------------------------------------------------------
    def _mesh_on_crop(self, img: np.ndarray, ref_box, ref_is_mesh_box: bool) -> np.ndarray | None:
        """Mesh of the face at ref_box, or None. Landmarks in frame pixels."""
        bw, bh = ref_box[2] - ref_box[0], ref_box[3] - ref_box[1]
        cx, cy = (ref_box[0] + ref_box[2]) / 2, (ref_box[1] + ref_box[3]) / 2
        side = self.crop_scale * max(bw, bh)
        crop, x0, y0, scale = square_crop(img, cx, cy, side, self.mesh_size)
        if crop is None:
            return None
        res = self._mesh.process(crop)
        if not res.multi_face_landmarks:
            return None
        best, best_iou = None, 0.0
        n = float(self.mesh_size)
        for fl in res.multi_face_landmarks:
            # mediapipe's normalised coordinates are pixel-edge based (x * width); we return
            # OpenCV's convention (pixel centres at integers), which warpAffine works in.
            pts = np.array([(p.x, p.y, p.z) for p in fl.landmark], dtype=np.float64) * n
            pts[:, 0] = pts[:, 0] / scale + x0 - 0.5
            pts[:, 1] = pts[:, 1] / scale + y0 - 0.5
            pts[:, 2] = pts[:, 2] / scale
            mb = landmark_box(pts)
            iou = box_iou(mb, ref_box)
            # The detector's box is squarer than the mesh's extent; judge the match by IoU and by
            # the box centre lying inside the mesh box.
            if iou > best_iou and mb[0] <= cx <= mb[2] and mb[1] <= cy <= mb[3]:
                best, best_iou = pts, iou
        if best is None or best_iou < (0.3 if ref_is_mesh_box else 0.25):
            return None
        return best.astype(np.float32)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces (up to max_faces), largest first; [] when there is none."""
        img = as_rgb_uint8(image_rgb)
        candidates = self.detect_boxes(img)
        min_box = self.min_face_px * 0.8  # detector boxes are ~10 % wider than mesh boxes
        candidates = [c for c in candidates if c[0][2] - c[0][0] >= min_box][: 2 * self.max_faces + 2]
        faces: list[Face] = []
        for box, score in candidates:
            pts = self._mesh_on_crop(img, box, ref_is_mesh_box=False)
            if pts is None:
                continue
            face = Face(bbox=landmark_box(pts), score=score, landmarks=pts)
            if face.width < self.min_face_px:
                continue
            faces.append(face)
        # Two boxes can lead the mesh to the same face: deduplicate on mesh boxes.
        keep = _nms([f.bbox for f in faces], [f.score for f in faces], iou_thr=0.4, overlap_thr=0.7)
        faces = [faces[i] for i in keep]
        faces.sort(key=lambda f: -f.width)
        return faces[: self.max_faces]

    def refine(self, image_rgb: np.ndarray, prev_face: Face) -> Face | None:
        """Mesh only, on a crop around `prev_face`'s landmarks (no box detector): the cheap per-frame
        update between detector keyframes. None when the face is no longer there (or the mesh found
        a different face)."""
        img = as_rgb_uint8(image_rgb)
        box = landmark_box(prev_face.landmarks)
        pts = self._mesh_on_crop(img, box, ref_is_mesh_box=True)
        if pts is None:
            return None
        face = Face(bbox=landmark_box(pts), score=float(prev_face.score), landmarks=pts)
        if face.width < self.min_face_px * 0.5:
            return None
        return face
