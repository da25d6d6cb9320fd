"""Files that ship inside the package: the bundled model, the public-domain portrait, the faces-kit
manifest and the sample media (``make demo``, the web page's example)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
SAMPLES = ASSETS / "samples"
SAMPLE_VIDEO = SAMPLES / "face.mp4"
SAMPLE_AUDIO = SAMPLES / "speech.wav"
