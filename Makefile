# The README's two commands: `make demo` (sets up, then runs the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EPIC := $(VENV)/bin/epic
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENFWI ?= ../shared/openfwi
DEMO_DIR ?= runs/demo

.PHONY: setup demo test bench lint clean docker-base

setup: $(VENV)/.installed

# torch first: the pinned CPU build; any other torch request pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@command -v mosquitto >/dev/null && command -v mosquitto_passwd >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; }
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq chromium; } || \
		echo "setup: chromium not installed; the dashboard's browser tests will skip"
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[dev,export,docker,dashboard,sweeps]'
	# bytecode now: with PYTHONDONTWRITEBYTECODE set, every agent launch would compile ~800
	# modules (0.25 s) otherwise
	$(PY) -m compileall -q -j 0 epic devices central emulation epic_cli
	@touch $@

# The main job: synthesise DEMO_SHOTS shot-gathers from real FlatVel-A test maps (generated maps when
# ../shared/openfwi is absent), bring the process-mode testbed up (own Mosquitto, link proxies,
# central), replay them in EPIC and raw mode over the same links (raw gathers decoded by the
# shipped InversionNet), write the report, bring the testbed down (also on failure), and print the virtual-time prediction for the same topology.
DEMO_MAPS := $(if $(wildcard $(OPENFWI)/FlatVelA_test.zip),--maps $(OPENFWI)/FlatVelA_test.zip,)
DEMO_SHOTS ?= 6
REPORT_DIR ?= reports/demo

demo: setup
	$(EPIC) data synth --dataset flatvel-a --count $(DEMO_SHOTS) --seed 0 --overwrite \
		--no-progress $(DEMO_MAPS) --out $(DEMO_DIR)/flatvel-a
	$(EPIC) data plot $(DEMO_DIR)/flatvel-a --index 0 --out $(REPORT_DIR)/sample-0.png
	$(EPIC) testbed down --dir $(DEMO_DIR)/testbed
	set -e; trap '$(EPIC) testbed down --dir $(DEMO_DIR)/testbed' EXIT; \
	$(EPIC) testbed up --topology topology.yaml --dir $(DEMO_DIR)/testbed \
		--truth $(DEMO_DIR)/flatvel-a --raw-checkpoint artifacts/inversionnet-flatvel-a.pt \
		--dashboard; \
	$(EPIC) replay --data $(DEMO_DIR)/flatvel-a --shots $(DEMO_SHOTS) --mode both --rate realtime \
		--dir $(DEMO_DIR)/testbed --json $(REPORT_DIR)/replay.json; \
	$(EPIC) report $(DEMO_DIR)/testbed --out $(REPORT_DIR)
	$(EPIC) simulate --topology topology.yaml --shots 100 --json $(REPORT_DIR)/simulate.json
	@echo; echo "Report: $(REPORT_DIR)/report.md"

test: setup docker-base
	$(VENV)/bin/pytest

# Base images for the container tests (tests/integration/test_compose.py): where a Docker engine
# answers but cannot pull python:3.11-slim / eclipse-mosquitto:2, build local stand-ins
# (docker/build-local-base.sh: debootstrap + docker import; minutes cold, a second warm).
# Without an engine there is nothing to do (those tests skip and say why).
docker-base:
	@if ! docker info >/dev/null 2>&1; then echo "docker-base: no Docker engine; container tests will skip"; \
	elif docker image inspect python:3.11-slim eclipse-mosquitto:2 >/dev/null 2>&1; then \
		echo "docker-base: registry base images present"; \
	else bash docker/build-local-base.sh || echo "docker-base: local base images failed; container tests will skip"; fi

bench: setup
	$(VENV)/bin/pytest -m benchmark -s bench tests
	$(PY) bench/bench_synthesis.py --count 16 --json runs/bench/synthesis.json
	$(PY) bench/bench_replay.py --count 80 --json runs/bench/replay.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs reports .pytest_cache
