# syntax=docker/dockerfile:1
# cuvis-worker: hosts sessions and runs pipelines on one GPU. Built on the CUDA-enabled PyTorch
# image, whose torch and torchvision are used as is (the venv sees them through --system-site-packages).
# The image carries upstream CUVIS.AI (the `upstream` extra: cuvis-ai, cuvis-ai-core, cuvis-ai-dataloader),
# so upstream node classes and plugins written against cuvis_ai_core's Node run in it; cuvis-ai needs
# torch >= 2.11 and a torchvision built for that torch, which is why the base image is pinned to match.
#
#   docker build -f docker/worker.Dockerfile -t ghcr.io/cuvis-ai/cuvis-worker:0.1.0 .
#   # CPU-only variant (tag it <version>-cpu; the chart's cpu-only values use it):
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_IMAGE=python:3.11.13-slim-bookworm \
#     --build-arg TORCH_INSTALL="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu" \
#     -t ghcr.io/cuvis-ai/cuvis-worker:0.1.0-cpu .
#
# Pin the base by digest in CI for byte-identical rebuilds.
ARG TORCH_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# ---------------------------------------------------------------- build: a venv over the base's torch
FROM ${TORCH_IMAGE} AS build
# Empty: torch comes from the base image. For a base without torch: "torch==X --index-url URL".
ARG TORCH_INSTALL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv --system-site-packages /opt/venv \
 && if [ -n "${TORCH_INSTALL}" ]; then /opt/venv/bin/pip install ${TORCH_INSTALL}; fi \
 && /opt/venv/bin/python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY docker/constraints-worker.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY services ./services
RUN /opt/venv/bin/pip install --constraint /tmp/constraints.txt ".[worker,upstream]" \
 && /opt/venv/bin/python -c "import cuvis_cluster.worker.main, cuvis_cluster.deploy.healthcheck, cuvis_ai_core.node"

# ---------------------------------------------------------------- runtime
FROM ${TORCH_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG TORCH_IMAGE
LABEL org.opencontainers.image.title="cuvis-worker" \
      org.opencontainers.image.description="CUVIS.AI worker: hyperspectral pipelines, training and inference on one GPU" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="cuvis-ai" \
      org.opencontainers.image.base.name="${TORCH_IMAGE}"
# graphviz: `dot` renders pipeline graphs. libgl1 and libglib2.0-0: cuvis-ai pulls in opencv-python,
# whose cv2 needs them even without a screen.
RUN apt-get update \
 && apt-get install -y --no-install-recommends graphviz libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cuvis \
 && useradd --system --uid 10001 --gid cuvis --home-dir /home/cuvis --create-home --shell /usr/sbin/nologin cuvis \
 && mkdir -p /data /outputs \
 && chown cuvis:cuvis /outputs
COPY --from=build /opt/venv /opt/venv
COPY configs /opt/cuvis/configs
# Caches go to /tmp: the chart mounts the root filesystem read-only and /tmp as an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    CUVIS_LISTEN=0.0.0.0:50051 \
    CUVIS_METRICS_HOST=0.0.0.0 \
    CUVIS_METRICS_PORT=9091 \
    CUVIS_CONFIGS_DIR=/opt/cuvis/configs \
    CUVIS_DATA_DIR=/data \
    CUVIS_OUTPUT_DIR=/outputs
USER 10001:10001
WORKDIR /home/cuvis
EXPOSE 50051 9091
# grpc.health.v1 on CUVIS_LISTEN; a draining worker reports NOT_SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "cuvis_cluster.deploy.healthcheck", "--mode", "ready", "--timeout", "4"]
ENTRYPOINT ["cuvis-worker"]
