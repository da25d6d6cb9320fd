"""Compatibility entry point of the original documentation's command-line tool::

    python cli.py --video_path input_video.mp4 --audio_path input_audio.wav --output_path output_video.mp4 \
        --batch_size 4 --num_steps 50

The same as ``lipsync generate ...`` (every flag of it: ``python cli.py --help``)."""

import sys

from lipsync.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
