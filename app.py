"""Compatibility entry point of the original documentation: ``python app.py --mode web --port 7860``
(page + API) or ``python app.py --mode api --port 8000``. Same as ``lipsync serve ...``."""

import sys

from lipsync.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
