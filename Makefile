# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

READERS ?= .venv-readers
READERS_STAMP := $(READERS)/.installed
ZARRITA_STAMP := tests/readers/node_modules/.installed
SUDO = $$( [ "$$(id -u)" = 0 ] || echo sudo )

.PHONY: install browser readers demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the local CPU wheel; anything else would pull CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium + chromedriver for tests/test_ui.py (Debian packages); does nothing when both are there.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "browser: chromium and chromedriver present"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

# The independent readers of tests/test_interop.py (README "Readers"): tensorstore, the oldest supported
# zarr-python with xarray and the CF compliance checker in their own venv (pinned in tests/readers/requirements.txt),
# zarrita (npm, tests/readers/package-lock.json), fitsverify (Debian). Each step does nothing when done already.
$(READERS_STAMP): tests/readers/requirements.txt
	test -x $(READERS)/bin/python || python3 -m venv $(READERS)
	$(READERS)/bin/python -m pip install -q --only-binary :all: -r tests/readers/requirements.txt
	touch $(READERS_STAMP)

$(ZARRITA_STAMP): tests/readers/package.json tests/readers/package-lock.json
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs npm; }
	npm ci --prefix tests/readers --no-audit --no-fund --loglevel=error
	touch $(ZARRITA_STAMP)

readers: $(READERS_STAMP) $(ZARRITA_STAMP)
	@command -v fitsverify >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q fitsverify; }

demo: $(STAMP)
	$(VENV)/bin/ood demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(READERS) tests/readers/node_modules out .pytest_cache .mypy_cache .ruff_cache
