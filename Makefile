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

# Every benchmark in a small mode (~4 min here once .cache/bench holds the generated inputs; the
# first run also writes a 10^8-token corpus and a 120 MB index). The README's tables come from
# the full runs each section names.
bench: install
	$(PY) benchmarks/bench_mask.py --reps 100
	$(PY) benchmarks/bench_minhash.py --mb 2 --lsh-docs 20000
	$(PY) benchmarks/bench_tokenize.py --mb 2 --reps 3
	$(PY) benchmarks/bench_build.py --quick --skip-big
	$(PY) benchmarks/bench_lid_prefix.py --reps 1
	$(PY) benchmarks/bench_sampler.py --requests 100
	$(PY) benchmarks/bench_scale.py --requests 20
	$(PY) benchmarks/bench_http.py --quick --seconds 1
	$(PY) benchmarks/bench_load.py --rounds 1
	$(PY) benchmarks/bench_amend.py --requests 10 --follow 3 --repeats 1 --no-profile
	$(PY) benchmarks/bench_trainer.py --steps 30

clean:
	rm -rf $(VENV) .cache $(DEMO_OUT)
