"""Face geometry: detection + 478-point mesh, tracking and smoothing, alignment, masks, paste-back.

mediapipe is imported lazily (by FaceDetector), so importing this package is cheap.
"""

from lipsync.face.align import (
    LATENTSYNC_ASPECT,
    TEMPLATE,
    TEMPLATE_INDICES,
    TEMPLATE_WEIGHTS,
    estimate_alignment,
    fit_similarity,
    paste_back,
    warp_landmarks,
    warp_to_crop,
)
from lipsync.face.aligner import FaceAligner, face_landmarks
from lipsync.face.detect import Face, FaceDetector, plan_tiles
from lipsync.face.landmarks import MESH_TO_68, inter_ocular_distance, mouth_opening, mouth_width, to_68
from lipsync.face.mask import feather, landmark_mask, lower_face_mask
from lipsync.face.smooth import OneEuroFilter
from lipsync.face.track import FaceTracker, TrackedFace, select_target, track_video

__all__ = [
    "Face",
    "FaceAligner",
    "FaceDetector",
    "FaceTracker",
    "LATENTSYNC_ASPECT",
    "MESH_TO_68",
    "OneEuroFilter",
    "TEMPLATE",
    "TEMPLATE_INDICES",
    "TEMPLATE_WEIGHTS",
    "TrackedFace",
    "estimate_alignment",
    "face_landmarks",
    "feather",
    "fit_similarity",
    "inter_ocular_distance",
    "landmark_mask",
    "lower_face_mask",
    "mouth_opening",
    "mouth_width",
    "paste_back",
    "plan_tiles",
    "select_target",
    "to_68",
    "track_video",
    "warp_landmarks",
    "warp_to_crop",
]
