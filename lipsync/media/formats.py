"""The media facts every part shares: the model's frame rate and audio sample rate, and which file
names are taken for videos, images and audio (one list, so a ``.tif`` is an image everywhere)."""

FPS = 25  # every input is resampled to 25 frames/s (LatentSync's rate: one Whisper token pair a frame)
SAMPLE_RATE = 16000  # speech is resampled to 16 kHz mono (Whisper's and SyncNet's rate)

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".wma")
OUTPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv")  # containers the writer muxes H.264 + AAC into
