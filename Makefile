# LLM Field Lab: two commands.
#   make lab    set up (first time) and open the course in JupyterLab
#   make test   set up (first time) and run every test: lint, labkit unit tests, all notebooks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := labkit/tested_versions.txt
TORCH := $(shell grep '^torch==' $(CONSTRAINTS))
KERNEL_NAME := python3
PORT ?= 8888
# Notebooks run offline, in the cpu profile, with a per-cell and a per-notebook time limit.
NB_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LABKIT_PROFILE=cpu MPLBACKEND=Agg
# Tests run on 2 workers (pytest -n 2), one core each: llama.cpp's and torch's threads spin while they wait, and two
# processes of 2 threads on 2 cores made llama.cpp cells up to 5x slower (labkit.hardware.cpu_threads).
WORKERS ?= 2
WORKER_ENV := LABKIT_THREADS=1 OMP_NUM_THREADS=1
# JupyterLab refuses to run as root unless told; containers and GPU clouds often run as root.
LAB_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
CELL_TIMEOUT ?= 600
NOTEBOOK_TIMEOUT ?= 1200

.PHONY: lab test setup setup-dev unit notebooks lint clean strip help browser sandbox gpu-check

help:
	@echo "make lab    - set up and open the course (JupyterLab on 127.0.0.1:$(PORT))"
	@echo "make test   - set up and run all tests (lint, unit tests, notebooks)"
	@echo "make gpu-check - on a CUDA machine: every notebook in the gpu profile + the GPU benchmarks (outputs/gpu-check/)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, at the tested version, so no other requirement pulls a different (multi-GB) build.
# Then llama-cpp-python and llama.cpp's llama-server (notebook 09) in one compile, cached per machine under
# ~/.cache/labkit/wheels (labkit/llama_server_build.py); if that fails, pip's plain llama-cpp-python below.
$(VENV)/.lab-installed: pyproject.toml $(CONSTRAINTS) labkit/llama_server_build.py | $(PY)
	$(PIP) install --quiet "$(TORCH)"
	@wheel=$$($(PY) labkit/llama_server_build.py --quiet) && $(PIP) install --quiet --no-deps --force-reinstall "$$wheel" \
	    || echo "note: llama-server was not built (see above); notebook 09 falls back to one request at a time" >&2
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[lab,llama]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python 3 (LLM Field Lab)" >/dev/null
	$(PY) -m labkit doctor --quiet
	touch $@

$(VENV)/.dev-installed: $(VENV)/.lab-installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[lab,llama,dev]"
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory sandbox
	touch $@

# The browser test drives Debian's Chromium. Installed here when we may (root with apt, as in CI);
# elsewhere the test is skipped and says how to install it.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	else echo "note: no chromium; tests/test_browser.py will be skipped (apt install chromium)"; fi

# Class grading runs each submission in a bubblewrap sandbox (docs/instructors.md). Installed here when we may
# (root with apt, as in CI); elsewhere `labkit grade` runs submissions one at a time, unsandboxed, and says so.
sandbox:
	@if command -v bwrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing bubblewrap for class grading"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null; \
	else echo "note: no bubblewrap; labkit grade will run submissions unsandboxed, one at a time (apt install bubblewrap)"; fi

setup: $(VENV)/.lab-installed
setup-dev: $(VENV)/.dev-installed

lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) --notebook-dir=notebooks --ServerApp.open_browser=False $(LAB_ROOT_FLAG)

lint: setup-dev
	$(VENV)/bin/ruff check labkit tests benchmarks notebooks

unit: setup-dev
	$(NB_ENV) $(WORKER_ENV) $(VENV)/bin/pytest -q -p no:cacheprovider -n $(WORKERS) tests \
	    --ignore=tests/test_student_versions.py --durations=15

# Every notebook once, under nbmake, in its paired form (labkit/grading/paired.py): each exercise first as the
# student gets it (its check must fail with its hint), then solved (it must pass); every other cell as written.
# tests/test_student_versions.py proves statically that the cells after an exercise run the same either way.
notebooks: setup-dev
	@rm -rf build/paired
	$(VENV)/bin/labkit paired notebooks/[0-9][0-9]_*.ipynb -o build/paired >/dev/null
	$(NB_ENV) $(WORKER_ENV) $(VENV)/bin/pytest -q -p no:cacheprovider -n $(WORKERS) \
	    --nbmake build/paired tests/test_student_versions.py \
	    --nbmake-timeout=$(CELL_TIMEOUT) --timeout=$(NOTEBOOK_TIMEOUT) --durations=0

test: lint unit notebooks

strip: setup-dev
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

# On a CUDA machine: every notebook in the gpu profile, one at a time, then benchmarks/*; summary printed last.
gpu-check: setup-dev
	$(PY) benchmarks/gpu_check.py --out outputs/gpu-check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
