"""The face mesh of a generated crop: where the model put the jaw.

The person composite keeps the source frame below the regenerated face. When the model closes a
mouth the source holds open, the generated chin sits higher than the source's, and the source's own
chin shows below it (a double chin). Knowing the generated jaw lets the composite move the source's
chin and neck up (or down) to meet it (:func:`lipsync.face.composite.composite_person`'s
``gen_points``). The mesh runs on the crop scaled to 288 px (mediapipe's mesh wants a face of about
200 px: 3x for the tiny profile's 96 px crops, about half for 512 px ones) with a replicated border
around it (its detector misses faces that fill the image).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from lipsync.face.detect import _warmup_image, box_iou, landmark_box
from lipsync.face.quiet import quiet_native_logs

SIDE = 288  # the crop's side as the mesh sees it
PAD = 96  # pixels of replicated border around the scaled crop


class CropMesh:
    """Mesh points (``composite.POINT_INDICES``) of a generated crop, in crop pixels. mediapipe
    graphs are not shared between threads: :meth:`for_thread` gives each thread its own, kept for
    the thread's life (a server's jobs reuse it). The graph is built on first use (~0.3 s)."""

    _local = threading.local()

    def __init__(self) -> None:
        self._mesh = None

    @classmethod
    def for_thread(cls) -> "CropMesh":
        mesh = getattr(cls._local, "mesh", None)
        if mesh is None:
            mesh = cls._local.mesh = cls()
        return mesh

    def _graph(self):
        if self._mesh is None:
            import mediapipe as mp

            with quiet_native_logs():
                self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2,
                                                             refine_landmarks=False, min_detection_confidence=0.5)
                # The graph logs its (harmless) start-up warnings on the first image it processes.
                self._mesh.process(_warmup_image(SIDE + 2 * PAD))
        return self._mesh

    def points(self, crop: np.ndarray, source_points: np.ndarray) -> np.ndarray | None:
        """(K, 2) float32 crop-space points of the face in ``crop`` (uint8 RGB) that matches
        ``source_points`` (the source face's :func:`composite.crop_points`), or None when the mesh
        finds no such face (then the composite keeps the source's jaw)."""
        from lipsync.face.composite import POINT_INDICES

        img = np.ascontiguousarray(np.asarray(crop, np.uint8))
        scale = SIDE / img.shape[1]
        big = cv2.resize(img, (SIDE, int(round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        big = cv2.copyMakeBorder(big, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
        res = self._graph().process(big)
        if not res.multi_face_landmarks:
            return None
        n_h, n_w = big.shape[:2]
        want = landmark_box(np.asarray(source_points, np.float64))
        best, best_iou = None, 0.2  # the lower face's box: a different face would not overlap it
        for fl in res.multi_face_landmarks:
            pts = np.array([(p.x * n_w, p.y * n_h) for p in fl.landmark], np.float64)[POINT_INDICES]
            pts = (pts - PAD) / scale - 0.5  # mediapipe's pixel-edge coordinates -> pixel centres, as detect.py
            iou = box_iou(landmark_box(pts), want)
            if iou > best_iou and np.isfinite(pts).all():
                best, best_iou = pts, iou
        return None if best is None else best.astype(np.float32)
