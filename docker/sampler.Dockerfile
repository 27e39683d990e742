# syntax=docker/dockerfile:1
# The sampler service: `sampler-server serve` over a built manifest mounted at /data/manifest.
#   docker build -f docker/sampler.Dockerfile -t language-curriculum/sampler:0.1.0 .   (repository root)
#   docker run -v "$PWD/demo-out:/data:ro" -p 127.0.0.1:8000:8000 language-curriculum/sampler:0.1.0
# Same Python minor version as the dev environment and the build image.
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
# What the wheel is built from (README.md is its long description), the packages the server
# imports (trainer_client for its wire format only: numpy + pyarrow, no torch) and the recipes.
COPY pyproject.toml README.md constraints.txt ./
COPY curriculum ./curriculum
COPY sampler_server ./sampler_server
COPY trainer_client ./trainer_client
COPY manifests/recipes ./manifests/recipes
# Pinned versions from constraints.txt (torch is pinned there too, but nothing in [server] pulls it).
RUN python -m pip install --constraint constraints.txt '.[server]' \
 && rm -rf build *.egg-info \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
 && mkdir -p /data /var/cache/numba \
 && chown app:app /data \
 && chmod 1777 /var/cache/numba

# numba `cache=True` needs a writable cache dir (the package folder is not; any uid may run this
# image, hence a sticky world-writable one), and the `omp` layer: safe under concurrent requests,
# unlike `workqueue` (DEPENDENCIES.md traps 2 and 3). Bind 0.0.0.0: reached through the container
# network (publish the port on 127.0.0.1 or behind the load balancer only).
ENV NUMBA_CACHE_DIR=/var/cache/numba \
    NUMBA_THREADING_LAYER=omp \
    SAMPLER_HOST=0.0.0.0 \
    SAMPLER_PORT=8000 \
    SAMPLER_MANIFEST=/data/manifest \
    SAMPLER_RECIPE=/app/manifests/recipes/demo.toml

USER app
EXPOSE 8000
# curl is absent from slim images: the health check is Python's urllib (any non-2xx raises, exit 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SAMPLER_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["sampler-server"]
CMD ["serve"]
