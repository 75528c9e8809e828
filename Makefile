# fsd developer entry points. `make test` and `make demo` install everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: setup venv testbed lint check test demo bench bench-quick clean

setup: venv testbed

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PLUGINS) contrib/setup-host.sh
	contrib/setup-host.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

testbed:
	contrib/testbed/build.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The fast loop: lint, types and the tests that need neither a guest (no test bed is built),
# nor /dev/fuse, nor root.
check: lint
	$(PY) -m pytest -q -m "not guest and not devfuse"

# Everything, as CI runs it: the guest test bed, then every test.
test: setup lint
	$(PY) -m pytest

demo: setup
	$(PY) contrib/demo.py --allowlist

# The benchmarks beside the references (docs/performance.md): guest (TCG), transport, scale
# and `fsd mount`; peers fetched and built into build/bench-deps by contrib/bench-deps.sh.
# About 25 minutes on a 2-core host; bench-quick about 6.
bench: setup
	contrib/bench-all.sh

bench-quick: setup
	contrib/bench-all.sh --quick

clean:
	rm -rf build $(VENV)
