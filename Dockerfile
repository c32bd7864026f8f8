# syntax=docker/dockerfile:1
# NIM-style container for nemo_eagle: Triton Inference Server (the binary bundled with PyTriton) hosts the Eagle2
# model with dynamic batching; the OpenAI-compatible REST API listens on 8000 (Triton gRPC 8001, metrics 8002).
#
#   docker build -t nemo-eagle:latest .
#   docker run --rm --gpus all --shm-size=2g -p 8000:8000 -e NIM_MODEL_PATH=hf://nvidia/Eagle2-1B \
#     -e HF_TOKEN -v ~/.cache/nim:/opt/nim/.cache nemo-eagle:latest
#
# --shm-size: Triton's Python backend passes request tensors (images) through /dev/shm; Docker's 64 MB default
# is too small for batches of large images.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=ubuntu24.04

# ---------------------------------------------------------------------------------------------------- build
# The devel image has nvcc and the cuDNN headers that transformer-engine's PyTorch extension compiles against.
FROM nvcr.io/nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU_VERSION} AS build

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev python3.12-venv build-essential git \
    && rm -rf /var/lib/apt/lists/*

RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nemo_eagle/ nemo_eagle/
COPY triton_kernels/ triton_kernels/

# torch first and pinned, so nothing resolves a different build; then the package with the gpu and serve extras
# (transformer-engine builds against the installed torch, hence no build isolation). The local package is
# installed from this checkout, its dependencies bounded by pyproject.toml.
ARG TORCH_VERSION=2.13.0
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir --no-build-isolation ".[gpu,serve]" \
    && pip check

# ------------------------------------------------------------------------------------------------- runtime
FROM nvcr.io/nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU_VERSION}

LABEL org.opencontainers.image.title="nemo-eagle" \
      org.opencontainers.image.description="EAGLE2 vision-language models served NIM-style: OpenAI-compatible REST in front of Triton Inference Server" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive

# libpython3.12: Triton's Python-backend stub embeds the interpreter; curl: the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 libpython3.12 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 nim \
    && useradd --system --uid 10001 --gid nim --home-dir /opt/nim --shell /usr/sbin/nologin nim \
    && mkdir -p /opt/nim/.cache \
    && chown -R nim:nim /opt/nim

COPY --from=build /opt/venv /opt/venv
COPY conf/ /opt/nemo_eagle/conf/
COPY --chmod=755 nim/entrypoint.sh /opt/nim/entrypoint.sh

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    NIM_CACHE_PATH=/opt/nim/.cache \
    HF_HOME=/opt/nim/.cache/huggingface \
    NIM_HOST=0.0.0.0 \
    NIM_SERVER_PORT=8000 \
    NIM_TRITON_ADDRESS=0.0.0.0 \
    NIM_TRITON_GRPC_PORT=8001 \
    NIM_TRITON_HTTP_PORT=8080 \
    NIM_TRITON_METRICS_PORT=8002 \
    NIM_LOG_LEVEL=INFO

USER 10001:10001
WORKDIR /opt/nim
VOLUME ["/opt/nim/.cache"]
EXPOSE 8000 8001 8002

# Model download and load can take minutes on first start: a long start period before failures count.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${NIM_SERVER_PORT:-8000}/v1/health/ready || exit 1"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/nim/entrypoint.sh"]
