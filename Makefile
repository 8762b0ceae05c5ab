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

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

# torch first: the pinned CPU build; any other torch request pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	@command -v mosquitto >/dev/null && command -v mosquitto_passwd >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -e '.[dev,export]'
	@touch $@

# Until the testbed lands, the main job synthesises a small dataset from real FlatVel-A maps
# (or generated ones when ../shared/openfwi is absent) plus one generated family, and draws them.
DEMO_MAPS := $(if $(wildcard $(OPENFWI)/FlatVelA_test.zip),--maps $(OPENFWI)/FlatVelA_test.zip,)

demo: setup
	$(EPIC) data synth --dataset flatvel-a --count 8 --seed 0 --threads 2 --overwrite \
		$(DEMO_MAPS) --out $(DEMO_DIR)/flatvel-a
	$(EPIC) data synth --dataset curvefault-b --count 4 --seed 0 --threads 2 --overwrite \
		--out $(DEMO_DIR)/curvefault-b
	$(EPIC) data info $(DEMO_DIR)/flatvel-a
	$(EPIC) data info $(DEMO_DIR)/curvefault-b
	$(EPIC) data plot $(DEMO_DIR)/flatvel-a --index 0 --out $(DEMO_DIR)/flatvel-a-0.png
	$(EPIC) data plot $(DEMO_DIR)/curvefault-b --index 0 --out $(DEMO_DIR)/curvefault-b-0.png

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/pytest -m benchmark -s bench tests
	$(PY) bench/bench_synthesis.py --count 16 --json runs/bench/synthesis.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs reports .pytest_cache
