# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use (Python 3.11, the package set pinned in pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean samples

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (the first run downloads the packages: a few minutes) ..."
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipsync generate --video_path samples/face.mp4 --audio_path samples/speech.wav \
		--output_path out/demo.mp4
	@echo "Open out/demo.mp4"

# The bundled sample media (regenerate with `make samples`): a synthetic talking head (the bundled
# public-domain portrait) and a different sentence to dub it with.
samples: $(STAMP)
	rm -rf out/samples
	$(VENV)/bin/lipsync synth --out out/samples --num 1 --seconds 3 --seed 7 --identity 0 --langs en --size 256
	cp out/samples/clip_00000/video.mp4 samples/face.mp4
	$(VENV)/bin/lipsync tts --text "Welcome to lip sync. This voice was never spoken by her." \
		--lang en --voice f2 --rate 165 --out samples/speech.wav

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
