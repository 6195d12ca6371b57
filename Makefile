# etad — every target that needs Python depends on `install`, so a fresh clone only needs `make demo` / `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ETAD   := $(VENV)/bin/etad
STAMP  := $(VENV)/.installed
WORK   ?= work

DEMO_DIR    ?= $(WORK)/demo
DEMO_CONFIG ?= examples/demo.yaml
DEMO_VIDEOS ?= 60
DEMO_PRETRAIN_VIDEOS ?= 24
SYNTH_EXTRA ?=

.PHONY: help install test test-fast lint demo demo-data demo-seeds study-multilabel bench bench-gpu docs clean clean-all anet-features anet-e2e thumos-features features study-snippets study-proposals

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

install: $(STAMP)  ## create .venv and install etad with its dev extras (a second run does nothing)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

PYTEST = $(PY) -m pytest -q -n auto --dist worksteal --durations=15
test: install  ## run the whole test suite in parallel (one worker per core), the 15 slowest listed
	$(PYTEST)

test-fast: install  ## the unit tests only (no real videos or training runs)
	$(PYTEST) -m "not slow"

lint: install  ## ruff: the linter and the formatter (ruff format writes the layout)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

DEMO_SETS = --set work_dir=$(abspath $(DEMO_DIR)) --set data.annotations=$(abspath $(DEMO_DIR))/data/anet.json \
  --set data.video_dir=$(abspath $(DEMO_DIR))/data/videos \
  --set model.encoder.checkpoint=$(abspath $(DEMO_DIR))/encoder/encoder_tsp.pth $(SET)
DEMO_RUN  = --config $(DEMO_CONFIG) $(DEMO_SETS)
DEMO_CKPT = $(abspath $(DEMO_DIR))
demo-data: install  ## the synthetic dataset, extracted, cached, its encoder pretrained (the first steps of `make demo`)
	$(ETAD) synth $(DEMO_DIR)/data --videos $(DEMO_VIDEOS) --pretrain-videos $(DEMO_PRETRAIN_VIDEOS) --movers --classes 4 --seed 0 $(SYNTH_EXTRA)
	$(ETAD) config validate $(DEMO_CONFIG) $(DEMO_SETS)
	$(ETAD) extract $(DEMO_RUN) --workers 2
	$(ETAD) cache $(DEMO_RUN) --what snippets --workers 2
	$(ETAD) train $(DEMO_RUN) --encoder --resume
	$(ETAD) cache $(DEMO_RUN) --what features

# the control: the end-to-end schedule with the encoder frozen (in its own folder, same caches)
DEMO_CONTROL = $(DEMO_RUN) --set work_dir=$(DEMO_CKPT)/control --set cache.snippets_dir=$(DEMO_CKPT)/cache/snippets \
  --set e2e.encoder_lr=0
# end to end starts from the frozen-feature detector (the demo's protocol: README), the control too
DEMO_INIT = --init-from $(DEMO_CKPT)/pretrain/checkpoints/last.pt
demo_infer = $(ETAD) infer $(DEMO_RUN) --checkpoint $(DEMO_CKPT)/$(1)/checkpoints/last.pt --eval \
  --set infer.output=results/$(2).json $(3) && \
  $(ETAD) infer $(DEMO_RUN) --checkpoint $(DEMO_CKPT)/$(1)/checkpoints/last.pt --eval \
  --set infer.output=results/$(2)_proposals.json --set infer.classifier=none
demo: demo-data  ## run the whole pipeline on the built-in synthetic dataset (everything goes under work/demo)
	$(ETAD) train $(DEMO_RUN) --resume
	$(call demo_infer,pretrain,frozen,--plot --plot-videos 2)
	$(ETAD) train $(DEMO_RUN) --e2e --resume $(DEMO_INIT)
	$(call demo_infer,e2e,e2e)
	$(ETAD) train $(DEMO_CONTROL) --e2e --resume $(DEMO_INIT)
	$(call demo_infer,control/e2e,control)
	$(ETAD) diagnose $(DEMO_RUN) --set infer.output=results/e2e.json
	$(ETAD) view $(DEMO_RUN) --set infer.output=results/e2e.json --subtitles srt
	$(ETAD) report $(DEMO_RUN)

# demo-seeds: its own dataset, twice the demo's videos (at 60, 18 validation videos: one video
# relabelled moves the mAP by points); DEMO_SEEDS_VIDEOS=60 DEMO_SEEDS_DIR=work/demo reuses `make demo`'s
DEMO_SEEDS_VIDEOS ?= 120
DEMO_SEEDS_DIR    ?= $(WORK)/demo-seeds
demo-seeds: DEMO_VIDEOS = $(DEMO_SEEDS_VIDEOS)
demo-seeds: DEMO_DIR = $(DEMO_SEEDS_DIR)
demo-seeds: demo-data  ## the demo's three models over 3 seeds, 120 videos: mean ± std of mAP (also truth labels), AUC
	$(ETAD) study $(DEMO_RUN) --stages train --seeds 3 --truth-labels --out $(DEMO_CKPT)/seeds/frozen
	$(ETAD) study $(DEMO_RUN) --stages train,e2e --seeds 3 --truth-labels --out $(DEMO_CKPT)/seeds/from_frozen \
	  --vary e2e.encoder_lr=5.0e-4,0  # each seed's e2e from its own frozen detector; control: encoder frozen

# study-multilabel: the demo's recipe on a synthetic set whose videos hold instances of several
# classes that may overlap (`etad synth --multi-label`): the video-level classifier head against the
# per-proposal one (model.classifier), frozen features, 3 seeds (docs/method.md, "Labelling proposals")
MULTILABEL_DIR ?= $(WORK)/multilabel
study-multilabel: DEMO_VIDEOS = 120
study-multilabel: DEMO_DIR = $(MULTILABEL_DIR)
study-multilabel: SYNTH_EXTRA = --multi-label
study-multilabel: demo-data  ## video vs per-proposal classifier on a multi-label synthetic set, 3 seeds
	$(ETAD) study $(DEMO_RUN) --stages train --seeds 3 --truth-labels --out $(DEMO_CKPT)/study \
	  --vary model.classifier=video,proposal

# ---- Pipelines for real datasets -------------------------------------------------------------
# Paths are make variables (made absolute, so they do not depend on the config's folder); the
# recipe is the example config; SET="--set train.epochs=1 ..." adds overrides to every command.
# CLASSIFIER: a CUHK json (anet) or UntrimmedNet npy (thumos); unset: the built-in classifier head.
# BLOCKED: a JSON list of video ids left out of evaluation (ETAD's blocked.json); unset: the recipe's.
# INIT_FROM (anet-e2e): start the detector from this checkpoint; unset: from scratch, as the original.
# RECIPE: another example config, e.g. RECIPE=examples/opentad_anet_tsp.yaml for OpenTAD's variant.
SET        ?=
CLASSIFIER ?=
BLOCKED    ?=
ANET_FEATURES_WORK ?= $(WORK)/anet-features
ANET_E2E_WORK      ?= $(WORK)/anet-e2e
THUMOS_WORK        ?= $(WORK)/thumos-features

need = @$(if $(strip $($(1))),true,{ echo "make $@: set $(1)=... ($(2))" >&2; exit 2; })
classes = $(if $(CLASSIFIER),--set infer.classifier=file --set infer.classifier_file=$(abspath $(CLASSIFIER)),\
  --set infer.classifier=builtin --set infer.classifier_file=null --set model.classifier_head=true)
blocked = $(if $(BLOCKED),--set data.blocked=$(abspath $(BLOCKED)))
common  = --set data.annotations=$(abspath $(ANNOTATIONS)) --set data.missing=skip $(blocked) $(classes) $(SET)

ANET_FEATURES_RUN = --config $(or $(RECIPE),examples/anet_tsp_feature.yaml) --set work_dir=$(abspath $(ANET_FEATURES_WORK)) $(common)
anet-features: install  ## ActivityNet from TSP features: ANET_FEATURES=dir of v_<id>.npy ANNOTATIONS=json
	$(call need,ANET_FEATURES,folder of v_<id>.npy TSP features)
	$(call need,ANNOTATIONS,ActivityNet-1.3 annotation JSON)
	$(ETAD) cache $(ANET_FEATURES_RUN) --from-npy $(abspath $(ANET_FEATURES))
	$(ETAD) train $(ANET_FEATURES_RUN) --resume
	$(ETAD) infer $(ANET_FEATURES_RUN) --checkpoint $(abspath $(ANET_FEATURES_WORK))/pretrain/checkpoints/last.pt --eval
	$(ETAD) report $(ANET_FEATURES_RUN)

ANET_E2E_RUN = --config $(or $(RECIPE),examples/anet_tsp_e2e.yaml) --set work_dir=$(abspath $(ANET_E2E_WORK)) \
  --set data.video_dir=$(abspath $(ANET_VIDEOS)) --set model.encoder.checkpoint=$(abspath $(TSP_CHECKPOINT)) $(common)
anet-e2e: install  ## ActivityNet end to end (the original recipe): ANET_VIDEOS=dir ANNOTATIONS=json TSP_CHECKPOINT=pth
	$(call need,ANET_VIDEOS,folder of v_<id>.mp4 videos)
	$(call need,ANNOTATIONS,ActivityNet-1.3 annotation JSON)
	$(call need,TSP_CHECKPOINT,TSP R(2+1)D-34 checkpoint .pth)
	$(ETAD) cache $(ANET_E2E_RUN) --what snippets --dry-run
	$(ETAD) cache $(ANET_E2E_RUN) --what snippets  # straight from the mp4s: frames stored once, JPEG
	$(ETAD) train $(ANET_E2E_RUN) --e2e --resume $(if $(INIT_FROM),--init-from $(abspath $(INIT_FROM)))
	$(ETAD) infer $(ANET_E2E_RUN) --checkpoint $(abspath $(ANET_E2E_WORK))/e2e/checkpoints/last.pt --eval
	$(ETAD) report $(ANET_E2E_RUN)

THUMOS_RUN = --config $(or $(RECIPE),examples/opentad_thumos_i3d.yaml) --set work_dir=$(abspath $(THUMOS_WORK)) $(common)
thumos-features: install  ## THUMOS-14 from I3D features, OpenTAD's recipe: THUMOS_FEATURES=dir ANNOTATIONS=json CLASSIFIER=uNet_test.npy
	$(call need,THUMOS_FEATURES,folder of <video id>.npy I3D features)
	$(call need,ANNOTATIONS,THUMOS-14 annotation JSON such as thumos14.json)
	$(ETAD) cache $(THUMOS_RUN) --from-npy $(abspath $(THUMOS_FEATURES))
	$(ETAD) train $(THUMOS_RUN) --resume
	$(ETAD) infer $(THUMOS_RUN) --checkpoint $(abspath $(THUMOS_WORK))/pretrain/checkpoints/last.pt --eval
	$(ETAD) report $(THUMOS_RUN)

# Any recipe from its benchmark's public features (examples/: HACS, FineAction, EPIC-KITCHENS-100,
# MultiTHUMOS, Charades, Ego4D-MQ; docs/annotations.md): scored with the recipe's eval.benchmark.
# paths made absolute by the shell, quoted, so that a folder with a space stays one path
FEATURES_WORK ?= $(WORK)/$(basename $(notdir $(RECIPE)))
real = "$$($(PY) -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$(1)")"
FEATURES_RUN = --config "$(RECIPE)" --set work_dir=$(call real,$(FEATURES_WORK)) \
  --set data.annotations=$(call real,$(ANNOTATIONS)) --set data.missing=skip $(blocked) $(SET)
features: install  ## a benchmark's recipe from its features: RECIPE=examples/x.yaml FEATURES=dir ANNOTATIONS=json
	$(call need,RECIPE,a recipe such as examples/epic100_slowfast_verb.yaml)
	$(call need,FEATURES,folder of <video id>.npy features)
	$(call need,ANNOTATIONS,the benchmark's annotations converted by etad annotations convert)
	$(ETAD) cache $(FEATURES_RUN) --from-npy $(call real,$(FEATURES))
	$(ETAD) train $(FEATURES_RUN) --resume
	$(ETAD) infer $(FEATURES_RUN) --checkpoint $(call real,$(FEATURES_WORK))/pretrain/checkpoints/last.pt --eval
	$(ETAD) report $(FEATURES_RUN)

# ---- ETAD's sampling study (docs/study.md) -----------------------------------------------------
# Demo scale (default): the synthetic dataset on CPU. SCALE=paper: the ActivityNet end-to-end recipe
# on a GPU, after `make anet-e2e` has extracted and cached the videos (same ANET_* variables).
SCALE ?= demo
STUDY_JOBS ?= 1
STUDY_SNIPPETS_RUN  = $(if $(filter paper,$(SCALE)),$(ANET_E2E_RUN),--config examples/study_snippets.yaml $(DEMO_SETS) \
  --set e2e.init_from=$(DEMO_CKPT)/pretrain/checkpoints/last.pt)
STUDY_PROPOSALS_RUN = $(if $(filter paper,$(SCALE)),$(ANET_FEATURES_RUN),$(DEMO_RUN))
STUDY_DIR = $(if $(filter paper,$(SCALE)),$(WORK)/study-paper,$(DEMO_DIR))
study-snippets: $(if $(filter paper,$(SCALE)),install,demo-data)  ## snippet ratio x strategy (+ checkpoint, full) end to end
	$(if $(filter paper,$(SCALE)),,$(ETAD) train $(DEMO_RUN) --resume)
	$(ETAD) study $(STUDY_SNIPPETS_RUN) --stages e2e --jobs $(STUDY_JOBS) --out $(abspath $(STUDY_DIR))/study-snippets \
	  --vary e2e.snippet_ratio=0.1,0.3,0.5,1.0 --vary e2e.snippet_sampling=random,uniform,block \
	  --also e2e.grad_mode=checkpoint --also e2e.grad_mode=full

study-proposals: $(if $(filter paper,$(SCALE)),install,demo-data)  ## proposal ratio x strategy, frozen features
	$(ETAD) study $(STUDY_PROPOSALS_RUN) --stages train --jobs $(STUDY_JOBS) --out $(abspath $(STUDY_DIR))/study-proposals \
	  --vary model.proposal_ratio=0.02,0.06,0.2,1.0 --vary model.proposal_sampling=random,grid,block

docs: install  ## regenerate docs/settings.md from the settings models
	$(ETAD) config reference > docs/settings.md

bench: install  ## benchmarks; results go to docs/benchmarks.md by hand, with the machine
	$(PY) benchmarks/run.py

bench-gpu: install  ## on a CUDA machine: the cuda tests and the paper-setting GPU figures (~8 min; one line without CUDA)
	$(PY) benchmarks/gpu.py

clean:  ## remove outputs (work/) and caches, keep .venv
	rm -rf $(WORK) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-all: clean  ## also remove .venv
	rm -rf $(VENV) *.egg-info
