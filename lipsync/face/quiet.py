"""Silence the start-up chatter that mediapipe's C++ graphs write straight to file descriptor 2.

TFLite's "Created TensorFlow Lite XNNPACK delegate" and absl's pre-init warnings bypass Python's
logging, so the only way to keep them off a user's terminal is to point fd 2 elsewhere while the
graphs are built and run for the first time. Anything written in that window that looks like an
error is replayed so real failures stay visible.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

_NOISE = ("XNNPACK delegate", "absl::InitializeLog", "inference_feedback_manager",
          "landmark_projection_calculator", "gl_context", "Feedback manager")


@contextlib.contextmanager
def quiet_native_logs():
    if os.environ.get("LIPSYNC_VERBOSE_NATIVE_LOGS"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip() and not any(n in line for n in _NOISE):
                    print(line, file=sys.stderr)
