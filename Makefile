# Quick start: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use (Python 3.11, the package set pinned in pyproject.toml).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean samples tiny-model tiny-model-teacher tiny-model-real tiny-model-distill tiny-model-quality real-faces-quality

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (the first run downloads the packages: a few minutes) ..."
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipsync generate --video_path lipsync/assets/samples/face.mp4 --audio_path lipsync/assets/samples/speech.wav \
		--output_path out/demo.mp4
	@echo "Open out/demo.mp4"

# The bundled sample media (regenerate with `make samples`): a synthetic talking head (the bundled
# public-domain portrait) and a different sentence to dub it with.
samples: $(STAMP)
	rm -rf out/samples
	$(VENV)/bin/lipsync synth --out out/samples --num 1 --seconds 3 --seed 7 --identity 0 --langs en --size 256
	cp out/samples/clip_00000/video.mp4 lipsync/assets/samples/face.mp4
	$(VENV)/bin/lipsync tts --text "Welcome to lip sync. This voice was never spoken by her." \
		--lang en --voice f2 --rate 165 --out lipsync/assets/samples/speech.wav

# The default `tiny` model from scratch on CPU, in two parts. `make tiny-model-teacher`: synthetic
# corpus -> shards -> the eight stages below, one shipped recipe each (lipsync/configs/train/tiny_*.yaml,
# named in the model card): VAE -> SyncNet (5 frames, the evaluator's) -> UNet stage 1 -> stage 1
# continued with the noise MSE weighted on the mouth -> SyncNet (16 frames, stage 2's supervisor only)
# -> UNet stage 2 and two continuations: the teacher, sampled with 20 guided DDIM steps
# ($(CKPT)/tiny-unet-reg2/model). `make tiny-model-distill`: that teacher folded into a 4-step
# student without a guidance pass, on the faces-kit's training talking clips. `make tiny-model` runs
# both and copies the student into the package (lipsync/assets/models/tiny/, the model card there stays).
# The recipes hold every setting, with this Makefile's paths (out/train/...) as their defaults; the
# lines below pass the paths again (data, save_dir, the earlier stages' exports) so that `make
# tiny-model TRAIN=elsewhere` works. synth and preprocess skip finished clips; add --resume to a
# `lipsync train` line to continue a run that stopped. `make tiny-model-quality` measures it against the bars.
TRAIN := out/train
CKPT = $(TRAIN)/ckpt
TRAIN_ARGS = --data $(TRAIN)/shards --save_dir $(CKPT) --log_dir $(TRAIN)/logs
LIPSYNC_TRAIN = $(VENV)/bin/lipsync train $(TRAIN_ARGS) --config
SYNCNET16 = --set syncnet=[$(CKPT)/tiny-syncnet/syncnet]
BUNDLED := lipsync/assets/models/tiny
KIT_MIRROR ?=
KIT_ARGS := $(if $(KIT_MIRROR),--mirror $(KIT_MIRROR),)
TEACHER = $(CKPT)/tiny-unet-reg2/model
tiny-model: $(STAMP)
	$(MAKE) tiny-model-teacher TRAIN=$(TRAIN) KIT_MIRROR=$(KIT_MIRROR)
	$(MAKE) tiny-model-distill TRAIN=$(TRAIN) KIT_MIRROR=$(KIT_MIRROR)
	mkdir -p $(BUNDLED)
	rm -rf $(BUNDLED)/unet $(BUNDLED)/vae $(BUNDLED)/audio_encoder $(BUNDLED)/scheduler $(BUNDLED)/syncnet
	cp -r $(CKPT)/tiny-distill/model/* $(BUNDLED)/
	cp -r $(CKPT)/tiny-syncnet5/syncnet $(BUNDLED)/syncnet

tiny-model-teacher: $(STAMP)
	$(VENV)/bin/lipsync synth --out $(TRAIN)/corpus --num 240 --seconds 5 --seed 100 --size 192 --split train
	$(VENV)/bin/lipsync synth --out $(TRAIN)/heldout --num 24 --seconds 5 --seed 9000 --size 192 --split test
	$(VENV)/bin/lipsync preprocess --input $(TRAIN)/corpus --output $(TRAIN)/shards --val_fraction 0.05
	$(LIPSYNC_TRAIN) tiny_vae
	$(LIPSYNC_TRAIN) tiny_syncnet5
	$(LIPSYNC_TRAIN) tiny_unet_stage1 --set init_from=$(CKPT)/tiny-vae/model
	$(LIPSYNC_TRAIN) tiny_unet_mouth --set init_from=$(CKPT)/tiny-unet-stage1/model
	$(LIPSYNC_TRAIN) tiny_syncnet16
	$(LIPSYNC_TRAIN) tiny_unet_stage2 --set init_from=$(CKPT)/tiny-unet-mouth/model $(SYNCNET16)
	$(LIPSYNC_TRAIN) tiny_unet_reg --set init_from=$(CKPT)/tiny-unet-stage2/model $(SYNCNET16)
	$(LIPSYNC_TRAIN) tiny_unet_reg2 --set init_from=$(CKPT)/tiny-unet-reg/model $(SYNCNET16)

# Real people, from the teacher (make tiny-model-teacher; not bundled: see the model card): the faces-kit by its manifest
# (KIT_MIRROR=DIR copies from a local mirror; without it the files are downloaded from their sources):
# training talking clips with their own speech, training portraits articulated by the synthetic mouth
# model (half of them speaking real training recordings, half espeak), 48 synthetic clips; VAE decoder, UNet continuation and the evaluator's SyncNet on them.
REAL_INIT ?= $(TEACHER)
tiny-model-real: $(STAMP)
	$(VENV)/bin/lipsync data fetch $(KIT_ARGS) -q --kind talking --split train --link $(TRAIN)/kit/talking
	$(VENV)/bin/lipsync data fetch $(KIT_ARGS) -q --kind portrait --split train --link $(TRAIN)/kit/portraits
	$(VENV)/bin/lipsync data fetch $(KIT_ARGS) -q --kind speech --split train --link $(TRAIN)/kit/speech
	$(VENV)/bin/lipsync synth --out $(TRAIN)/synth_real --faces $(TRAIN)/kit/portraits --speech $(TRAIN)/kit/speech --speech_fraction 0.5 --num 96 --seconds 4 --seed 300 --size 256 --split train
	$(VENV)/bin/lipsync synth --out $(TRAIN)/synth_base --num 48 --seconds 5 --seed 100 --size 192 --split train
	$(VENV)/bin/lipsync preprocess --input $(TRAIN)/kit/talking --output $(TRAIN)/shards_real --val_fraction 0.05
	$(VENV)/bin/lipsync preprocess --input $(TRAIN)/synth_real --output $(TRAIN)/shards_synreal --val_fraction 0.05
	$(VENV)/bin/lipsync preprocess --input $(TRAIN)/synth_base --output $(TRAIN)/shards_base --val_fraction 0.05
	$(VENV)/bin/lipsync train --config real_vae_decoder --save_dir $(CKPT) --log_dir $(TRAIN)/logs \
		--data $(TRAIN)/shards_real $(TRAIN)/shards_synreal --set init_from=$(REAL_INIT)
	$(VENV)/bin/lipsync train --config real_unet --save_dir $(CKPT) --log_dir $(TRAIN)/logs \
		--data $(TRAIN)/shards_real $(TRAIN)/shards_real $(TRAIN)/shards_synreal $(TRAIN)/shards_base \
		--set init_from=$(CKPT)/tiny-vae-real/model
	$(VENV)/bin/lipsync train --config real_syncnet5 --save_dir $(CKPT) --log_dir $(TRAIN)/logs \
		--data $(TRAIN)/shards_real $(TRAIN)/shards_real $(TRAIN)/shards_synreal

# Step distillation (lipsync/configs/train/tiny_distill.yaml): the teacher's 20 guided DDIM steps ->
# 4 unguided steps, 200 steps on the faces-kit's training talking clips (by the manifest; KIT_MIRROR=DIR
# copies from a local mirror), about 32 min on 2 cores; the student is the bundled model. Round 2
# (4 -> 2): lipsync train --config tiny_distill --name tiny-distill2 --set teacher=$(CKPT)/tiny-distill/model
# --set distill.num_steps=2 (not run).
tiny-model-distill: $(STAMP)
	$(VENV)/bin/lipsync data fetch $(KIT_ARGS) -q --kind talking --split train --link $(TRAIN)/kit/talking
	$(VENV)/bin/lipsync preprocess --input $(TRAIN)/kit/talking --output $(TRAIN)/shards_real --val_fraction 0.05
	$(VENV)/bin/lipsync train --config tiny_distill --data $(TRAIN)/shards_real --save_dir $(CKPT) --log_dir $(TRAIN)/logs \
		--set teacher=$(TEACHER)

tiny-model-quality: $(STAMP)
	$(VENV)/bin/python benchmarks/tiny_model_quality.py --heldout $(TRAIN)/heldout --out out/quality

# Fidelity and lip sync on held-out real people (faces-kit heldout split), e.g. KIT_MIRROR=../shared/data/faces-kit.
real-faces-quality: $(STAMP)
	$(VENV)/bin/python benchmarks/real_faces.py $(KIT_ARGS) --out out/real_faces

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf out .pytest_cache
