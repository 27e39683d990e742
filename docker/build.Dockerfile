# syntax=docker/dockerfile:1
# The corpus build: the `curriculum` CLI and a Ray node (head, worker or driver: the command says).
#   docker build -f docker/build.Dockerfile -t language-curriculum/build:0.1.0 .   (repository root)
#   head:    ray start --head --block --port=6379
#   worker:  ray start --address=HEAD:6379 --block
#   driver:  curriculum build /data/corpus --out /data/manifest --tokenizer T --executor ray --ray-address auto
# Ray needs the same Ray version and Python minor version on every node and on the driver: all of
# them run this image (Ray pinned by constraints.txt, Python 3.11 like the dev environment).
FROM python:3.11.14-slim-bookworm

# libgomp1: numba's `omp` threading layer loads the system OpenMP runtime, which slim images lack.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY curriculum ./curriculum
RUN python -m pip install --constraint constraints.txt '.[curriculum,ray]' \
 && rm -rf build *.egg-info \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
 && mkdir -p /data /var/cache/numba \
 && chown app:app /data \
 && chmod 1777 /var/cache/numba

# Ray workers inherit the environment of `ray start`, so these reach every task: a writable numba
# cache and the fork-unsafe but thread-safe `omp` layer (DEPENDENCIES.md traps 2 and 3). Not set
# here: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which pins Ray to 127.0.0.1 and makes
# `ray start --address` refuse to join a cluster.
ENV NUMBA_CACHE_DIR=/var/cache/numba \
    NUMBA_THREADING_LAYER=omp \
    RAY_USAGE_STATS_ENABLED=0

USER app
WORKDIR /home/app
CMD ["curriculum", "--help"]
