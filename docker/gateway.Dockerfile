# syntax=docker/dockerfile:1
# cuvis-gateway: the stateless gRPC router. Slim Python, no torch, no CUDA.
#
#   docker build -f docker/gateway.Dockerfile -t ghcr.io/cuvis-ai/cuvis-gateway:0.1.0 .
#
# Pin the base by digest in CI (python:3.11.13-slim-bookworm@sha256:...) for byte-identical rebuilds.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- build: a venv with the gateway
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY docker/constraints-gateway.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY services ./services
# The base dependencies only: no worker extra, so no torch.
RUN /opt/venv/bin/pip install --constraint /tmp/constraints.txt . \
 && /opt/venv/bin/python -c "import cuvis_cluster.gateway.main, cuvis_cluster.deploy.healthcheck"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cuvis-gateway" \
      org.opencontainers.image.description="CUVIS.AI gRPC gateway: routes each session to the GPU worker that holds it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="cuvis-ai" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --system --gid 10001 cuvis \
 && useradd --system --uid 10001 --gid cuvis --home-dir /home/cuvis --create-home --shell /usr/sbin/nologin cuvis
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUVIS_LISTEN=0.0.0.0:50050 \
    CUVIS_METRICS_HOST=0.0.0.0 \
    CUVIS_METRICS_PORT=9090
USER 10001:10001
WORKDIR /home/cuvis
EXPOSE 50050 9090
# grpc.health.v1 on CUVIS_LISTEN; SERVING needs Redis and at least one live worker.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "cuvis_cluster.deploy.healthcheck", "--mode", "ready", "--timeout", "4"]
ENTRYPOINT ["cuvis-gateway"]
