# fsd developer entry points. `make test` and `make demo` install everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: setup venv testbed test check demo bench clean

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

check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup check
	$(PY) -m pytest

demo: setup
	$(PY) contrib/demo.py --allowlist

clean:
	rm -rf build $(VENV)
