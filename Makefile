# dcsp_dist: `make demo` runs the whole DCSP schedule on the built-in synthetic dataset;
# `make test` runs the test suite. Both first run the idempotent set-up.
PY        := .venv/bin/python
HVDRUN    := .venv/bin/horovodrun
GPU       ?= 0
NP        ?= 2
DEMO_DIR  ?= demo_run

.PHONY: setup test test-unit test-parallel demo clean benchmarks

setup:
	@GPU=$(GPU) bash scripts/setup.sh

test: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/parallel

test-parallel: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -p no:cacheprovider tests/parallel

demo: setup
	NP=$(NP) DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

benchmarks: setup
	bash benchmarks/run_all.sh

clean:
	rm -rf $(DEMO_DIR)
