"""Ray Serve application (HTTP API and web page) around lipsync.pipeline, no second implementation."""
