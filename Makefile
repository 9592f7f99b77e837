# LLM Field Lab: two commands.
#   make lab    set up (first time) and open the course in JupyterLab
#   make test   set up (first time) and run every test: lint, labkit unit tests, all notebooks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := labkit/tested_versions.txt
# What a pip user installs (labkit/course.py EXTRAS): every notebook's Colab cell, README's pip line, and the wheel
# the notebook tests run on.
EXTRAS := lab,llama
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

.PHONY: lab test setup setup-dev unit notebooks wheel lint clean strip help browser sandbox gpu-check

help:
	@echo "make lab    - set up and open the course (JupyterLab on 127.0.0.1:$(PORT))"
	@echo "make test   - set up and run all tests (lint, unit tests, notebooks)"
	@echo "make gpu-check - on a CUDA machine: every notebook at full size and capped to 15/7.5 GiB + the GPU benchmarks"

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
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python 3 (LLM Field Lab)" >/dev/null
	$(PY) -m labkit doctor --quiet
	touch $@

$(VENV)/.dev-installed: $(VENV)/.lab-installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS),dev]"
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

# The notebooks run as a pip user (Colab) has them: labkit built as a wheel and installed, not editable, with the
# extras every Colab cell installs (checked against this environment, offline, at the tested versions), and the
# notebooks alone in a folder outside the checkout. So a file a notebook reads that the wheel lacks fails here.
NB_RUN := $(or $(TMPDIR),/tmp)/labkit-notebooks-$(shell printf %s "$(CURDIR)" | cksum | cut -d' ' -f1)
WHEEL_SITE := $(NB_RUN)/site

wheel: setup-dev
	@rm -rf build/wheel $(NB_RUN) && mkdir -p $(NB_RUN)/notebooks
	$(PIP) wheel --quiet --no-deps --no-build-isolation -w build/wheel .
	$(PIP) install --quiet --no-deps --no-index --target $(WHEEL_SITE) build/wheel/labkit-*.whl
	$(PIP) install --quiet --dry-run --no-index -c $(CONSTRAINTS) "labkit[$(EXTRAS)] @ file://$(CURDIR)/$$(ls build/wheel/labkit-*.whl)"
	@cd $(NB_RUN)/notebooks && PYTHONPATH=$(WHEEL_SITE) $(CURDIR)/$(PY) -c "import labkit, labkit.paths as p; \
	    assert labkit.__file__.startswith('$(WHEEL_SITE)') and p.datasets_dir().is_relative_to('$(WHEEL_SITE)'), labkit.__file__; \
	    print('notebooks run on labkit', labkit.__version__, 'installed from its wheel in', p.datasets_dir().parent.parent)"

# Every notebook once, under nbmake, in its paired form (labkit/grading/paired.py): each exercise first as the
# student gets it (its check must fail with its hint), then solved (it must pass); every other cell as written.
# tests/test_student_versions.py proves statically that the cells after an exercise run the same either way.
notebooks: wheel
	PYTHONPATH=$(WHEEL_SITE) $(VENV)/bin/labkit paired notebooks/[0-9][0-9]_*.ipynb -o $(NB_RUN)/notebooks >/dev/null
	PYTHONPATH=$(WHEEL_SITE) $(NB_ENV) $(WORKER_ENV) $(VENV)/bin/pytest -q -p no:cacheprovider -n $(WORKERS) \
	    --nbmake $(NB_RUN)/notebooks tests/test_student_versions.py \
	    --nbmake-timeout=$(CELL_TIMEOUT) --timeout=$(NOTEBOOK_TIMEOUT) --durations=0

test: lint unit notebooks

strip: setup-dev
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

# On a CUDA machine, one uninterrupted run: every notebook at full size and capped to 15 and 7.5 GiB (LABKIT_GPU_MEMORY),
# then every GPU benchmark; time and peak GPU memory per step, summary printed last (outputs/gpu-course-run/summary.md).
# A subset: make gpu-check GPU_CHECK_ARGS="--caps 15GiB 7.5GiB --jobs 6 --benchmarks none" (benchmarks/gpu_course_run.py -h)
GPU_CHECK_ARGS ?=
gpu-check: setup-dev
	$(PY) benchmarks/gpu_course_run.py --out outputs/gpu-course-run $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
