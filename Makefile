# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export NUMBA_THREADING_LAYER := omp
DEMO_OUT ?= demo-out

.PHONY: install system-deps test demo clean bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel setuptools
	$(PIP) install --quiet -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the browser tests need (root on CI; skipped when already present).
system-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing chromium + chromium-driver (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: install system-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m curriculum.demo --out $(DEMO_OUT)

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT)
