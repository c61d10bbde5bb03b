# pictor serve in a container: the REST API, the OpenAI-compatible endpoint and the web page.
#
#   docker build -t pictor .
#   docker run -p 8000:8000 -e PICTOR_TOKEN="$(openssl rand -hex 32)" pictor
#
# The shipped model (models/shapes-v11) is baked in; mount another model folder and point
# PICTOR_MODEL at it to serve that instead:
#   docker run -v "$PWD/runs/shapes/final:/models/mine:ro" -e PICTOR_MODEL=/models/mine ...
#
# CPU by default (torch's CPU wheel). For a GPU image, a CUDA base and the matching torch wheel
# index (torch brings its own CUDA libraries), then serve with --device cuda:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t pictor:cuda .
#   docker run --gpus all -p 8000:8000 -e PICTOR_TOKEN pictor:cuda \
#                serve --host 0.0.0.0 --port 8000 --device cuda
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# torch pinned as in the Makefile; from the CPU wheel index unless a CUDA index is given
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# which folder of models/ to bake in
ARG MODEL=shapes-v11

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA base images carry no Python: install it there (the python: base already has it). The
# distribution's python3 is left unpinned (DL3008): its version differs per CUDA base image.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    PICTOR_MODEL=/opt/pictor/models/${MODEL}

WORKDIR /opt/pictor
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY src ./src
# the project and its serve extra; torch stays the wheel installed above
RUN pip install --no-cache-dir "./[serve]" "torch==${TORCH_VERSION}"
COPY models/${MODEL} ./models/${MODEL}

# a fixed numeric id, so that Kubernetes' runAsNonRoot can check it
RUN groupadd --system --gid 10001 pictor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pictor
USER 10001

EXPOSE 8000
# healthy = ready to serve: the model loaded and warmed (/readyz; /healthz is liveness)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# Bound to every interface, pictor serve refuses to start without a token: pass it as
# PICTOR_TOKEN (docker run -e, or a Kubernetes Secret; see deploy/k8s/).
ENTRYPOINT ["pictor"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
