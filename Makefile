# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use (Python 3.11, the package set pinned in pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (the first run downloads the packages: a few minutes) ..."
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipsync synth --out out/demo --num 1 --seconds 4 --seed 1 --langs en
	$(VENV)/bin/lipsync probe out/demo/clip_00000/video.mp4

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
