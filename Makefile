# Two commands work on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing (torch pinned first: an unpinned torch pulls CUDA
# wheels of several GB), and does nothing extra when it exists.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast test-slow lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev,serve,spark,emoji,databricks]" "torch==$(TORCH_VERSION)"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pictor.cli.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
