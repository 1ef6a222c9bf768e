# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Torch first, pinned to the CPU build this box carries, so no dependency can pull CUDA.
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(PY) -m platypus_ray demo --out out/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m platypus_ray.bench.refine

clean:
	rm -rf out .pytest_cache
