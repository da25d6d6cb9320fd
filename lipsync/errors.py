"""Typed errors. Every error that reaches a user names the file (or URI) and the problem."""

from __future__ import annotations


class LipSyncError(Exception):
    """Base class of every error this project raises on purpose."""


class PathError(LipSyncError):
    """An error about one file or URI. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so the error survives a trip between processes (Ray workers)
        return type(self), (self.path, self.problem)


class MediaError(PathError):
    """A media file that cannot be used."""


class MediaNotFoundError(MediaError):
    """The file or object does not exist or cannot be opened for reading."""


class CorruptMediaError(MediaError):
    """The container or a stream cannot be decoded."""


class UnsupportedFormatError(MediaError):
    """The file is not a format this project reads (or not media at all)."""


class NoVideoStreamError(MediaError):
    """A video was expected but the file has no video stream."""


class NoAudioStreamError(MediaError):
    """Audio was expected but the file has no audio stream."""


class EmptyMediaError(MediaError):
    """The file decodes but holds zero frames / zero samples / zero duration."""


class MediaTooLargeError(MediaError):
    """The file claims more than this project will decode: frames over the pixel limit or a
    stream over the duration limit (``lipsync.media.limits``), refused before decoding."""


class NoFaceError(MediaError):
    """A face was required (e.g. a corpus portrait) but none was found. Videos never raise this
    for single frames: frames without a face pass through untouched."""


class CheckpointError(PathError):
    """A weight file that is missing, corrupt, unsafe or does not fit the model."""


class StorageError(PathError):
    """A read or write that the storage refused or could not finish: a full disk, or an object
    store still failing (5xx, throttling, dropped connections) after the retries.
    No partial output is left under the name."""


class SpeechError(LipSyncError):
    """Text-to-speech failed (unknown language, empty text, engine not loadable)."""
