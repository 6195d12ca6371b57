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

DEMO_DIR    := $(WORK)/demo
DEMO_CONFIG := examples/demo.yaml

.PHONY: help install test lint demo bench clean clean-all

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

install: $(STAMP)  ## create .venv and install etad with its dev extras (a second run does nothing)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

test: install  ## run the test suite
	$(PY) -m pytest -q

lint: install  ## ruff
	$(VENV)/bin/ruff check .

demo: install  ## run the pipeline on the built-in synthetic dataset (everything goes under work/demo)
	$(ETAD) synth $(DEMO_DIR)/data --videos 24 --classes 4 --seed 0
	$(ETAD) config validate $(DEMO_CONFIG)
	$(ETAD) extract --config $(DEMO_CONFIG) --workers 2
	$(ETAD) cache --config $(DEMO_CONFIG) --what snippets --workers 2
	$(ETAD) cache --config $(DEMO_CONFIG) --what features
	$(ETAD) train --config $(DEMO_CONFIG)
	$(ETAD) infer --config $(DEMO_CONFIG) --checkpoint $(DEMO_DIR)/pretrain/checkpoints/last.pt \
	  --set infer.output=results/pretrain.json --eval --plot 2
	$(ETAD) train --config $(DEMO_CONFIG) --e2e --init-from $(DEMO_DIR)/pretrain/checkpoints/last.pt
	$(ETAD) infer --config $(DEMO_CONFIG) --checkpoint $(DEMO_DIR)/finetune/checkpoints/last.pt \
	  --set infer.output=results/e2e.json --eval

bench: install  ## benchmarks; results go to docs/benchmarks.md by hand, with the machine
	$(PY) benchmarks/run.py

clean:  ## remove outputs (work/) and caches, keep .venv
	rm -rf $(WORK) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-all: clean  ## also remove .venv
	rm -rf $(VENV) *.egg-info
