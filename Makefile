# dcsp_dist: `make demo` runs the whole DCSP schedule on the built-in synthetic dataset;
# `make test` runs the test suite. Both first run the idempotent set-up.
PY        := .venv/bin/python
HVDRUN    := .venv/bin/horovodrun
GPU       ?= 0
NP        ?= 2
DEMO_DIR  ?= demo_run
SEED      ?= 0
SYNTH     ?=

.PHONY: setup lint test test-unit test-parallel demo clean benchmarks check-gpu-build image

setup:
	@GPU=$(GPU) bash scripts/setup.sh

# ruff, pinned in requirements.txt, configured in pyproject.toml; then the architecture's
# import contracts (scripts/check_imports.py, docs/architecture.md).
lint: setup
	$(PY) -m ruff check .
	$(PY) scripts/check_imports.py

test: setup lint
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -rs -p no:cacheprovider --durations=20 tests

# The tests that start no horovodrun: the inner loop.
test-unit: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -rs -p no:cacheprovider tests --ignore=tests/parallel

test-parallel: setup
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -rs -p no:cacheprovider tests/parallel

demo: setup
	NP=$(NP) SEED=$(SEED) DEMO_DIR=$(DEMO_DIR) SYNTH="$(SYNTH)" bash scripts/demo.sh

# Horovod's GPU (NCCL) build against TF 2.21, compiled, linked and loaded without a GPU.
check-gpu-build:
	bash scripts/check_gpu_build.sh

# The cluster image (Dockerfile): needs a Docker engine.
IMAGE ?= dcsp_dist:gpu
image:
	@command -v docker >/dev/null || { echo "make image: docker is not installed; build the Dockerfile where Docker runs" >&2; exit 1; }
	docker build -t $(IMAGE) .

benchmarks: setup
	bash benchmarks/run_all.sh

clean:
	rm -rf $(DEMO_DIR)
