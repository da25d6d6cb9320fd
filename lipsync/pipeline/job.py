"""One job's setup and preparation, shared by ``lipsync generate`` (``LipSyncPipeline``, also what
the server's model replicas run) and the batch job's prepare stage (``PrepareVideo``).

:class:`JobSetup` is built once per worker (it holds the two halves of preparation:
:class:`~lipsync.pipeline.stages.SpeechFeatures` and :class:`~lipsync.face.aligner.FaceAligner`);
:meth:`JobSetup.open` sets one job up::

    setup = JobSetup(profile, audio_encoder)
    with setup.open(video=..., audio=..., options=opts, detector=detector) as job:
        for step in job.steps():          # frames, aligned, cut into windows with crops + tokens
            ...
        job.check_faces(frames_with_face)  # no face anywhere: NoFaceError, or True (passthrough)
    job.notes()                            # e.g. "video looped"

Opening a job: the driving speech is loaded (an audio file is fetched once and decoded once for
both the model and the output track; a text is spoken) and encoded; the denoise settings and the
window planner come from the profile and the options; the source video or image is fetched once
(a remote one is downloaded to one local copy, which the header check, the face-tracking pass and
any loop read), and errors about that copy name the original URI, never the temporary file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lipsync.errors import NoFaceError
from lipsync.face.aligner import FaceAligner
from lipsync.pipeline.denoise import DenoiseSettings
from lipsync.pipeline.frames import FrameItem, FrameSource
from lipsync.media.formats import FPS
from lipsync.pipeline.inputs import renamed_errors
from lipsync.pipeline.stages import SpeechFeatures, Speech, WindowInput, settings_of_options, window_planner
from lipsync.pipeline.windows import Window, WindowPlanner


NO_FACE_NOTE = "no_face: no face in any frame; the source frames, untouched, with the new speech (no_face=passthrough)"


def no_face_policy(options, default: str = "error") -> str:
    """The job's ``no_face`` policy: its option, or ``default`` (the entry point's) when not given."""
    policy = getattr(options, "no_face", None) or default
    if policy not in ("error", "passthrough"):
        raise ValueError(f"no_face: {policy!r} must be error or passthrough")
    return policy


@dataclass
class PrepareStep:
    """What :meth:`Job.steps` yields per frame (and once more, with ``item=None``, at the end)."""

    item: FrameItem | None  # the frame (None on the final step)
    matrix: np.ndarray | None  # its 2 x 3 alignment (frame -> crop), None without a face
    windows: list[WindowInput]  # windows completed by this frame
    settled: int  # no window yielded later starts before this frame index
    points: np.ndarray | None = None  # the composite's mesh points in crop coordinates (crop_points)


class JobSetup:
    """Per worker: what every job is prepared with. Reuse one instance for many jobs."""

    def __init__(self, profile, audio_encoder):
        self.profile = profile
        self.speech = SpeechFeatures(audio_encoder)  # speech -> features -> per-window tokens
        self.faces = FaceAligner.of_profile(profile)  # faces -> alignments -> crops

    @contextlib.contextmanager
    def open(self, *, video: str | None = None, image: str | None = None, audio: str | None = None,
             text: str | None = None, lang: str = "en", voice: str | None = None, options=None,
             detector=None) -> Iterator["Job"]:
        """Set up one job (see the module doc); the source's local copy lives until the block ends.
        ``options``: a ``GenerateOptions`` (None: the defaults); ``detector``: a ``FaceDetector``."""
        from lipsync.media.probe import probe
        from lipsync.media.uri import is_remote, local_input
        from lipsync.options import GenerateOptions

        opts = options or GenerateOptions()
        if (video is None) == (image is None):
            raise ValueError("give exactly one of a video or an image")
        source_uri = video if video is not None else image
        speech = self.speech.speech(audio, text, lang, voice, opts.silence_gating)
        settings = settings_of_options(self.profile, opts)  # each option given, else the profile's
        planner = window_planner(self.profile, opts.overlap)
        with local_input(source_uri) as local, renamed_errors(local, source_uri):
            if is_remote(source_uri):
                probe(local)  # a bad remote file fails here, before any frame, under its URI
            frames = FrameSource(local, speech.num_frames, detector, face=opts.face, loop=opts.loop,
                                 is_image=image is not None, name=source_uri)
            yield Job(self, source_uri, video is not None, opts, speech, settings, planner, frames)


@dataclass
class Job:
    """One job, set up: its speech, settings, planner and frames."""

    setup: JobSetup
    source: str  # the video or image URI as given (what errors name)
    is_video: bool
    options: object  # GenerateOptions
    speech: Speech
    settings: DenoiseSettings
    planner: WindowPlanner
    frames: FrameSource

    @property
    def num_frames(self) -> int:
        """Output frames: the speech's length at 25 fps."""
        return self.speech.num_frames

    def steps(self) -> Iterator[PrepareStep]:
        """Align each frame's face and cut windows as soon as their frames are known.

        Crops are kept only while a window still to come may need them, so memory is bounded by
        the window size (plus the alignment's lookahead), not the video's length.
        """
        faces, speech, planner = self.setup.faces, self.setup.speech, self.planner
        crops: dict[int, np.ndarray] = {}

        def inputs(windows: list[Window]) -> list[WindowInput]:
            return [WindowInput(w, np.stack([crops[j] for j in w.frames]), speech.window_tokens(self.speech, w))
                    for w in windows]

        last = -1
        for item, matrix in faces.aligned(self.frames):
            points = None
            if matrix is not None:
                crops[item.index] = faces.crop(item.image, matrix)
                points = faces.points(item.face, matrix)
            windows = inputs(planner.push(item.index, matrix is not None))
            settled = planner.earliest_future_start()
            for j in [k for k in crops if k < settled]:
                del crops[j]
            last = item.index
            yield PrepareStep(item, matrix, windows, settled, points)
        yield PrepareStep(None, None, inputs(planner.finish()), last + 1)

    def check_faces(self, frames_with_face: int, default: str = "error") -> bool:
        """What to do when no frame had a face, by the job's ``no_face`` option (None: ``default``,
        the entry point's: error in generate and the API, passthrough in dub). ``error``: raise
        NoFaceError (nothing is written). ``passthrough``: return True, and the caller writes the
        source frames untouched with the new speech (its result says ``no_face``). False when a
        face was found."""
        if frames_with_face > 0:
            return False
        policy = no_face_policy(self.options, default)
        if policy == "passthrough":
            return True
        raise NoFaceError(self.source, "no face found in any frame (nothing to lip-sync; --no_face passthrough "
                                       "writes the video with the new speech instead)")

    def notes(self) -> list[str]:
        """What the job's result should tell its user (call after :meth:`steps` ran)."""
        notes = []
        n_src = self.frames.n_src
        if self.is_video and n_src is not None and n_src < self.num_frames:
            notes.append(f"speech ({self.speech.driving.duration:.2f} s) is longer than the video "
                         f"({n_src / FPS:.2f} s): video looped ({self.options.loop})")
        return notes
