"""The media facts every part shares: the model's frame rate and audio sample rate, and which file
names are taken for videos, images and audio (one list, so a ``.tif`` is an image everywhere)."""

FPS = 25  # every input is resampled to 25 frames/s (LatentSync's rate: one Whisper token pair a frame)
SAMPLE_RATE = 16000  # speech is resampled to 16 kHz mono (Whisper's and SyncNet's rate)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".wma")
OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")  # containers the writer muxes H.264 + AAC into


def files_in(folder, suffixes: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The files of ``folder`` with one of ``suffixes``, sorted; a clear error naming the folder when
    it is no folder or holds none (``what``: e.g. "portrait photos")."""
    from pathlib import Path

    from lipsync.errors import MediaNotFoundError

    d = Path(folder)
    if not d.is_dir():
        raise MediaNotFoundError(str(d), f"is not a folder of {what}")
    found = tuple(str(p) for p in sorted(d.iterdir()) if p.suffix.lower() in suffixes)
    if not found:
        raise MediaNotFoundError(str(d), f"holds no {what} ({', '.join(suffixes)})")
    return found
