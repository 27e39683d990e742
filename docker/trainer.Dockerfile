# syntax=docker/dockerfile:1
# A GPU trainer node: `trainer-client train` (ModernBERT MLM, FSDP2) pulling batches over HTTP.
#   docker build -f docker/trainer.Dockerfile -t language-curriculum/trainer:0.1.0 .   (repository root)
#   docker run --gpus all language-curriculum/trainer:0.1.0 train --server http://HOST:8080 --model base ...
# The base image brings CUDA, cuDNN, NCCL and a torch built against them; BASE_IMAGE takes another
# pytorch/pytorch CUDA runtime tag (torch >= 2.6, which transformers 5 requires).
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The trainer imports neither curriculum nor sampler_server (no numba, no FastAPI on a GPU node).
COPY pyproject.toml README.md constraints.txt ./
COPY trainer_client ./trainer_client
# constraints.txt pins torch==2.13.0, the CPU build of the dev environment. Used as is, pip would
# replace the base image's CUDA torch with a PyPI wheel (GBs, its own CUDA libraries) or fail to
# resolve. So the pins go in without torch and the wheels only torch pulls (triton, nvidia-*):
# every other dependency stays pinned, and pip keeps the installed CUDA torch because it already
# satisfies the [trainer] extra's `torch>=2.6`. The last line fails the build if torch lost CUDA.
RUN grep -v -i -E '^(torch|triton|nvidia-[a-z0-9-]+)==' constraints.txt > /tmp/constraints-trainer.txt \
 && python -m pip install --constraint /tmp/constraints-trainer.txt '.[trainer]' \
 && rm -rf build *.egg-info /tmp/constraints-trainer.txt \
 && python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' has no CUDA: the base image torch was replaced')" \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
 && mkdir -p /checkpoints /home/app/.cache/huggingface \
 && chown -R app:app /checkpoints /home/app

# Hugging Face caches in the non-root user's home.
ENV HF_HOME=/home/app/.cache/huggingface

USER app
VOLUME ["/checkpoints"]
ENTRYPOINT ["trainer-client"]
CMD ["--help"]
