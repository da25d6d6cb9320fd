"""FaceAligner: tracked faces -> aligned crops, the one alignment of inference, training and evaluation.

Per frame, the similarity of the face's raw (unfiltered) mesh landmarks to the canonical template
(:func:`lipsync.face.align.estimate_alignment`); over frames, those matrices smoothed without lag
(:mod:`lipsync.face.steady`) and registered on the upper face's pixels (:mod:`lipsync.face.register`).
The pipeline cuts the crops it regenerates with it (``lipsync.pipeline.job``), preprocessing cuts
the training crops with it (``lipsync.train.prepare``) and ``lipsync eval`` cuts the SyncNet's
crops with it, so the three see the same crops of the same video.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from lipsync.face.align import estimate_alignment, warp_to_crop


def face_landmarks(face) -> np.ndarray:
    """The landmarks the composite and the mouth measures read: the tracker's One-Euro-smoothed
    points when it has them, else the raw fit."""
    lm = getattr(face, "smoothed_landmarks", None)
    return face.landmarks if lm is None else lm


class FaceAligner:
    """Crops of ``size`` px (``aspect``: 1 = similarity; 4/3 = LatentSync's stretched crops)."""

    def __init__(self, size: int, aspect: float = 1.0):
        self.size = int(size)
        self.aspect = float(aspect)

    @classmethod
    def of_profile(cls, profile) -> "FaceAligner":
        """The aligner of a model profile: its ``resolution`` and ``crop_aspect``."""
        return cls(int(profile.resolution), float(profile.crop_aspect))

    def matrix(self, face) -> np.ndarray:
        """The face's raw (unsmoothed) alignment, frame -> crop, from its unfiltered landmarks."""
        return estimate_alignment(face.landmarks, self.size, aspect=self.aspect)

    def crop(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return warp_to_crop(image, matrix, self.size)

    def points(self, face, matrix: np.ndarray) -> np.ndarray:
        """The person composite's mesh points in crop coordinates (:func:`lipsync.face.composite.crop_points`)."""
        from lipsync.face.composite import crop_points

        return crop_points(face_landmarks(face), matrix)

    def aligned(self, items: Iterable, face_of: Callable = lambda item: item.face,
                index_of: Callable = lambda item: item.index, image_of: Callable = lambda item: item.image,
                breaks: Callable | None = None) -> Iterator[tuple[object, np.ndarray | None]]:
        """(item, its alignment or None without a face), in order, a few frames behind the input:
        landmark fits smoothed over time (lipsync.face.steady), then registered on the upper face's
        pixels (lipsync.face.register). ``breaks(item)``: smoothing must not reach across this item
        (a shot cut)."""
        from lipsync.face.steady import steady_alignments

        def raw(item):
            face = face_of(item)
            return None if face is None else self.matrix(face)

        return steady_alignments(items, index_of, raw, self.size, breaks, image_of)
