"""Index constants for mediapipe's 478-point face mesh, the iBUG-68 mapping, mouth measures.

Sides follow mediapipe's naming, i.e. the *subject's* left/right: ``RIGHT_EYE`` (33 ... 133) is the
eye on the image's left for a frontal face, which is also iBUG-68's first eye (points 36-41).
Points 468-477 exist only with ``refine_landmarks=True`` (irises); every function here works on
the first 468 points, so 468- and 478-point arrays are both accepted.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# --- single points ------------------------------------------------------------------------------
NOSE_TIP = 1
NOSE_BOTTOM = 2  # subnasale
NOSE_BRIDGE = 168  # between the eyes
FOREHEAD = 10  # top of the face oval
CHIN = 152
RIGHT_EYE_OUTER = 33
RIGHT_EYE_INNER = 133
LEFT_EYE_INNER = 362
LEFT_EYE_OUTER = 263
EYE_OUTER_CORNERS = (RIGHT_EYE_OUTER, LEFT_EYE_OUTER)  # inter-ocular distance is measured here
EYE_INNER_CORNERS = (RIGHT_EYE_INNER, LEFT_EYE_INNER)
MOUTH_RIGHT = 61  # subject's right = image left
MOUTH_LEFT = 291
MOUTH_CORNERS = (MOUTH_RIGHT, MOUTH_LEFT)
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473

# --- contours (ordered, closed where it makes sense) --------------------------------------------
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
# Inner contour halves, both from the right corner (78) to the left corner (308), so that
# UPPER_LIP_INNER[i] and LOWER_LIP_INNER[i] face each other.
UPPER_LIP_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_LIP_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# The three central facing pairs (upper, lower) the mouth-opening measure averages.
MOUTH_OPENING_PAIRS = ((13, 14), (82, 87), (312, 317))

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# Lower part of the oval: from the right cheek (234, about eye level) over the chin to the left (454).
JAW = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361,
       323, 454)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYEBROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_EYEBROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
# Lower rim of the nose, right wing to left wing, used to close the lower-face hull.
NOSE_BOTTOM_ARC = (129, 98, 97, 2, 326, 327, 358)

# --- iBUG-68 ------------------------------------------------------------------------------------
# Source: the correspondence table of PeizhiYan/Mediapipe_2_Dlib_Landmarks (also used by
# flame-head-tracker and many others). That table averages two mesh points for five iBUG points
# (jaw 3, 4, 12, nose 27, 28); to keep a plain index mapping we take one point of each pair,
# chosen so the result stays left/right symmetric: [132,58]->132, [58,172]->58, [397,288]->288
# (mirror of 58), [168,6]->168, [197,195]->197. Everything else is the table's single index.
MESH_TO_68 = np.array(
    [
        # jaw 0-16, image left -> chin -> image right
        127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
        # brows 17-21 (subject's right), 22-26 (subject's left)
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
        # nose bridge 27-30, lower nose 31-35
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        # eyes 36-41 (subject's right), 42-47 (subject's left)
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        # outer lips 48-59
        61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
        # inner lips 60-67
        78, 82, 13, 312, 308, 317, 14, 87,
    ],
    dtype=np.int64,
)
assert MESH_TO_68.shape == (68,)


def to_68(landmarks: np.ndarray) -> np.ndarray:
    """(478|468, 2|3) mesh points -> (68, 2) iBUG-68 layout (x, y only)."""
    lm = np.asarray(landmarks)
    return lm[MESH_TO_68, :2].astype(np.float32)


def _inter_ocular(lm: np.ndarray) -> float:
    # 3-D when depth is present: mediapipe's z has roughly x's scale, and the 3-D distance does not
    # shrink when the head turns (yaw), which would otherwise inflate every normalised measure.
    a, b = lm[RIGHT_EYE_OUTER], lm[LEFT_EYE_OUTER]
    return float(np.linalg.norm(a - b))


def _down_axis(lm: np.ndarray) -> np.ndarray:
    """Unit 2-D vector pointing from the eyes towards the chin, perpendicular to the eye line."""
    eye = lm[LEFT_EYE_OUTER, :2] - lm[RIGHT_EYE_OUTER, :2]
    n = float(np.linalg.norm(eye))
    if n < 1e-9:
        return np.array([0.0, 1.0])
    down = np.array([-eye[1], eye[0]]) / n
    # Orient it towards the chin whatever the roll (upside-down faces included).
    if np.dot(lm[CHIN, :2] - (lm[RIGHT_EYE_OUTER, :2] + lm[LEFT_EYE_OUTER, :2]) / 2, down) < 0:
        down = -down
    return down


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap / inter-ocular distance: THE mouth-opening measure of the project.

    The gap is the mean over the three central facing pairs of inner-lip points (13/14, 82/87,
    312/317) of the lower point's offset from the upper one along the face's own vertical axis
    (perpendicular to the eye line), so head roll does not change it; lips that the mesh places
    slightly crossed count as 0, not negative. The divisor is the distance between the outer eye
    corners 33 and 263 (3-D when z is given). Closed mouth ~0, wide-open speech ~0.3-0.6.
    Returns 0.0 for degenerate input (all points equal).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    iod = _inter_ocular(lm)
    if iod < 1e-9:
        return 0.0
    down = _down_axis(lm)
    gaps = [max(0.0, float(np.dot(lm[lo, :2] - lm[up, :2], down))) for up, lo in MOUTH_OPENING_PAIRS]
    return float(np.mean(gaps)) / iod


def mouth_width(landmarks: np.ndarray) -> float:
    """Distance between the mouth corners 61 and 291 / inter-ocular distance (both 3-D when z is
    given, so a turned head keeps its value)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    iod = _inter_ocular(lm)
    if iod < 1e-9:
        return 0.0
    return float(np.linalg.norm(lm[MOUTH_LEFT] - lm[MOUTH_RIGHT])) / iod


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners (3-D when z is given), the project's face scale."""
    return _inter_ocular(np.asarray(landmarks, dtype=np.float64))
