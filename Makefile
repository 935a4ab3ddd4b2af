# Two commands on a fresh clone: `make serve` and `make test`. Both create .venv when missing.
# The venv must come from the system Python: the Python-backend stub that the nvidia-pytriton wheel
# ships embeds Debian's libpython3.11 (see ARCHITECTURE.md).
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3)
VENV ?= .venv
# The CPU build of torch; on a GPU machine pass TORCH_SPEC='torch==<your CUDA build>'.
TORCH_SPEC ?= torch==2.13.0
# GPU=1: also the GPU engines (onnxruntime-gpu, tensorrt: the `gpu` extra). The default stays CPU-only.
GPU ?=
comma := ,
EXTRAS := models,quant,eval,test,triton-wheel$(if $(GPU),$(comma)gpu)
BIN := $(VENV)/bin
MODELS ?= build/models
REPOSITORY ?= build/model_repository
TINY ?= tiny-sd tiny-pixart tiny-sdxl tiny-sd3 tiny-flux
# Video: 10 steps by default instead of the pipelines' 50/25, so that the README's 4-second clip
# (32 frames) takes seconds on a CPU; a request's num_inference_steps still goes up to 100.
TINY_VIDEO ?= tiny-animatediff tiny-svd

.PHONY: install test test-fast serve lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install "$(TORCH_SPEC)" "numpy<2"
	# torch pinned again: an unpinned torchvision (eval extra) would upgrade torch to its CUDA build.
	$(BIN)/pip install -e ".[$(EXTRAS)]" "$(TORCH_SPEC)"
	# Plain `python` in the venv gets the torchvision fix that every dgate process installs.
	echo "import dgate.torchvision_ops as t; t.install()" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/dgate-torchvision.pth"
	$(BIN)/python -c "import dgate.core, dgate.export, dgate.frontend, dgate.model_repository"
	touch $@

install: $(VENV)/.installed

# The job-store tests start a real PostgreSQL server (tests/postgres_server.py), never a mock: install
# Debian's server package when its binaries are missing (CI runs as root; elsewhere through sudo).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "PostgreSQL is missing and installing it needs root or sudo: apt-get install postgresql" >&2; exit 1; fi; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends postgresql; }

.PHONY: postgres

# The playground's browser test (tests/test_playground.py) drives Debian's Chromium through the
# playwright package: install it from apt when missing. `playwright install` is never run, nothing
# downloads a browser build.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "Chromium is missing and installing it needs root or sudo: apt-get install chromium" >&2; exit 1; fi; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends chromium fonts-dejavu-core; }

.PHONY: browser

# The monitoring tests (tests/test_monitoring.py) run promtool and a real Prometheus server: install
# Debian's prometheus package (server and promtool) when missing.
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "Prometheus is missing and installing it needs root or sudo: apt-get install prometheus" >&2; exit 1; fi; \
	  $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y --no-install-recommends prometheus; }

.PHONY: prometheus

test: install postgres browser prometheus
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python .ci/typecheck
	$(BIN)/python -m pytest -v -rA

# Without the e2e tier (tritonserver, the exported session repository) and the slow one (training,
# calibration, evaluation runs): see the markers in tests/conftest.py.
test-fast: install postgres browser prometheus
	$(BIN)/python -m pytest -m "not e2e and not slow"

$(REPOSITORY)/.exported: $(VENV)/.installed
	$(BIN)/dgate tiny --out $(MODELS)
	$(BIN)/dgate export $(foreach m,$(TINY),--model $(MODELS)/$(m)) --out $(REPOSITORY)
	$(BIN)/dgate export $(foreach m,$(TINY_VIDEO),--model $(MODELS)/$(m)) --default-steps 10 --out $(REPOSITORY)
	touch $@

serve: $(REPOSITORY)/.exported
	$(BIN)/dgate serve --model-repository $(REPOSITORY)

BENCH_MODEL ?= tiny-sd
bench: $(REPOSITORY)/.exported
	$(BIN)/dgate bench --model-repository $(REPOSITORY) --model $(MODELS)/$(BENCH_MODEL)

# Prometheus (UI and API on MONITOR_LISTEN) against `make serve` in another terminal: Triton's metrics on
# :8002, the frontend on :9000, the alert rules of monitoring/alerts.yml; its data under build/prometheus.
MONITOR_LISTEN ?= 127.0.0.1:9090
monitor: install prometheus
	$(BIN)/python -m dgate.monitor --config monitoring/prometheus.yml --listen $(MONITOR_LISTEN) --data build/prometheus

.PHONY: monitor

lint: install
	$(BIN)/ruff check .

typecheck: install
	PYTHON=$(BIN)/python .ci/typecheck

clean:
	rm -rf build
