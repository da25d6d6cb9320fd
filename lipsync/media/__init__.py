"""Media I/O: files or s3:// URIs in, upright RGB frames and mono audio out, H.264 + AAC back.

Every failure is one of the typed errors in :mod:`lipsync.errors`, naming the file or URI.
"""

from lipsync.media.audio import load_audio, load_audio_native, save_wav
from lipsync.media.probe import AudioStreamInfo, MediaInfo, VideoStreamInfo, probe
from lipsync.media.uri import (
    atomic_output,
    is_remote,
    local_input,
    read_bytes,
    storage_options,
    write_bytes,
)
from lipsync.media.video import (
    VideoFrame,
    is_image_path,
    iter_frames,
    read_frame_range,
    read_image,
    sample_frames,
)
from lipsync.media.writer import VideoWriter, encode_video

__all__ = [
    "AudioStreamInfo",
    "MediaInfo",
    "VideoFrame",
    "VideoStreamInfo",
    "VideoWriter",
    "atomic_output",
    "encode_video",
    "is_image_path",
    "is_remote",
    "iter_frames",
    "load_audio",
    "load_audio_native",
    "local_input",
    "probe",
    "read_bytes",
    "read_frame_range",
    "read_image",
    "sample_frames",
    "save_wav",
    "storage_options",
    "write_bytes",
]
