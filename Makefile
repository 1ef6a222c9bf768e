# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Torch first, pinned to the CPU build this box carries, so no dependency can pull CUDA.
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast lint bench clean local-cluster gpu-bundle

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,embed]"
	touch $@

# The whole recipe on the embedded local Ray, on the shipped sample data and a tiny LLaMA
# (jobs/configs/demo.yaml): tiny base model -> refine (Ray Data) -> LoRA with ZeRO-3 on
# 2 workers (Ray Train) -> merge, each stage feeding the next.
demo: setup
	rm -rf out/demo
	$(PY) -m platypus_ray pipeline --config jobs/configs/demo.yaml

# A real two-node Ray cluster on this machine (own temp dirs and ports; Ctrl-C stops it).
local-cluster: setup   # CLUSTER=cluster.yaml (or kuberay/rayjob.yaml): rehearse that file's autoscaling
	$(PY) -m platypus_ray.devtools.local_cluster $(if $(CLUSTER),--autoscaling $(CLUSTER),--nodes 2 --cpus-per-node 1)

# The whole suite (CI runs it after lint); test-fast leaves out the end-to-end tests marked slow.
test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# ruff (lint + format check) and mypy on the package: what CI runs before the tests.
lint: setup
	$(PY) -m ruff check platypus_ray tests jobs
	$(PY) -m ruff format --check platypus_ray tests jobs
	$(PY) -m mypy platypus_ray

bench: setup
	$(PY) -m platypus_ray.bench.refine
	$(PY) -m platypus_ray.bench.train

# The docs site (mkdocs.yml): the generated pages (python -m platypus_ray.devtools.docs writes them) must be
# current, then MkDocs builds it with --strict (a broken link or missing page fails) into out/site/ (git-ignored).
.PHONY: docs
docs: $(VENV)/.docs-installed
	$(PY) -m platypus_ray.devtools.docs --check
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet -d out/site

$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $@

# What the GPU check machine lacks, in .gpu/ (git-ignored; docs/guides/gpu.md). Needs PyPI.
gpu-bundle: setup
	scripts/gpu-bundle

clean:
	rm -rf out .pytest_cache
