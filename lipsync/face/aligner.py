"""FaceAligner: tracked faces -> aligned crops, the one alignment of inference, training and evaluation.

Two framings (a profile's ``align``):

* ``template`` (ours, the default): per frame, the similarity of the face's raw (unfiltered) mesh
  landmarks to the canonical template (:func:`lipsync.face.align.estimate_alignment`, stretched by
  the profile's ``crop_aspect``); over frames, those matrices smoothed without lag
  (:mod:`lipsync.face.steady`) and registered on the upper face's pixels (:mod:`lipsync.face.register`).
* ``latentsync``: LatentSync's AlignRestore exactly, per frame: their three points (brow centres
  and nose centre, :func:`lipsync.pipeline.latentsync_exact.three_points`) fitted to their 75 x 100
  box resized to the square, with the small translation bias their restorer carries from one frame
  with a face to the next (0.2 old + 0.8 new), and their crop's pixels (bilinear into the box,
  Lanczos to the square). No smoothing and no registration: LatentSync has none, and their public
  weights were trained on such crops. ``latentsync-steady`` is their fit followed by our smoothing
  and registration (steadier crops, no longer their per-frame framing).

The pipeline cuts the crops it regenerates with it (``lipsync.pipeline.job``), preprocessing cuts
the training crops with it (``lipsync.train.prepare``) and ``lipsync eval`` cuts the SyncNet's
crops with it, so the three see the same crops of the same video.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from lipsync.face.align import estimate_alignment, warp_to_crop

ALIGN_MODES = ("template", "latentsync", "latentsync-steady")


def face_landmarks(face) -> np.ndarray:
    """The landmarks the composite and the mouth measures read: the tracker's One-Euro-smoothed
    points when it has them, else the raw fit."""
    lm = getattr(face, "smoothed_landmarks", None)
    return face.landmarks if lm is None else lm


def cut_crop(image: np.ndarray, matrix: np.ndarray, size: int, align: str = "template") -> np.ndarray:
    """The aligned crop of ``image`` cut by ``matrix`` as the ``align`` framing cuts it."""
    if align == "template":
        return warp_to_crop(image, matrix, size)
    from lipsync.pipeline.latentsync_exact import cut_crop as their_crop

    return their_crop(image, matrix, size)


class FaceAligner:
    """Crops of ``size`` px. ``aspect`` (template framing; 1 = similarity, 4/3 = LatentSync's
    stretched crops); ``align``: one of :data:`ALIGN_MODES` (see the module doc)."""

    def __init__(self, size: int, aspect: float = 1.0, align: str = "template"):
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.size = int(size)
        self.aspect = float(aspect)
        self.align = align

    @classmethod
    def of_profile(cls, profile) -> "FaceAligner":
        """The aligner of a model profile: its ``resolution``, ``crop_aspect`` and ``align``."""
        return cls(int(profile.resolution), float(profile.crop_aspect), str(getattr(profile, "align", "template")))

    @property
    def steadied(self) -> bool:
        """Whether :meth:`aligned` smooths and registers the per-frame matrices."""
        return self.align != "latentsync"

    def matrix(self, face, prev_bias: np.ndarray | None = None) -> np.ndarray:
        """The face's raw (unsmoothed) alignment, frame -> crop, from its unfiltered landmarks. In
        the latentsync framings, ``prev_bias`` is their restorer's bias from the previous frame
        (None: the first frame's fit, see :meth:`fit`)."""
        return self.fit(face, prev_bias)[0]

    def fit(self, face, prev_bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(matrix, the bias to carry to the next frame; None in the template framing)."""
        if self.align == "template":
            return estimate_alignment(face.landmarks, self.size, aspect=self.aspect), None
        from lipsync.pipeline.latentsync_exact import fit_three_points, three_points

        return fit_three_points(three_points(face.landmarks), self.size, prev_bias)

    def crop(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return cut_crop(image, matrix, self.size, self.align)

    def points(self, face, matrix: np.ndarray) -> np.ndarray:
        """The person composite's mesh points in crop coordinates (:func:`lipsync.face.composite.crop_points`)."""
        from lipsync.face.composite import crop_points

        return crop_points(face_landmarks(face), matrix)

    def aligned(self, items: Iterable, face_of: Callable = lambda item: item.face,
                index_of: Callable = lambda item: item.index, image_of: Callable = lambda item: item.image,
                breaks: Callable | None = None) -> Iterator[tuple[object, np.ndarray | None]]:
        """(item, its alignment or None without a face), in order. Template and latentsync-steady
        framings: a few frames behind the input, landmark fits smoothed over time
        (lipsync.face.steady), then registered on the upper face's pixels (lipsync.face.register);
        ``breaks(item)``: smoothing must not reach across this item (a shot cut). Latentsync: each
        frame's own fit, at once (their bias carries over faceless frames and cuts, as theirs does)."""
        bias = [None]

        def raw(item):
            face = face_of(item)
            if face is None:
                return None
            m, bias[0] = self.fit(face, bias[0])
            return m

        if not self.steadied:
            return ((item, raw(item)) for item in items)
        from lipsync.face.steady import steady_alignments

        return steady_alignments(items, index_of, raw, self.size, breaks, image_of)
