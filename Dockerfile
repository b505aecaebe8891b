# syntax=docker/dockerfile:1
#
# controlplane-resolver server image.
#
#   docker build -t controlplane-resolver .
#   docker run --rm -p 50051:50051 \
#       -e CONTROL_PLANE_DATABASE_URL=postgresql://user:pass@db:5432/platform \
#       controlplane-resolver
#
# Configuration is environment variables (docs/configuration.md); the
# default command serves on 0.0.0.0:50051, which the HEALTHCHECK probes.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
# Wheels for both distributions (./client and .) *and* every dependency, so
# the runtime stage installs offline and needs no build tools.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the two wheels are built from (.dockerignore keeps out the rest).
# README.md is the server distribution's long description (pyproject.toml).
COPY pyproject.toml README.md ./
COPY client/ client/
COPY server/ server/
# Naming ./client here makes it satisfy the server's dependency on
# controlplane-resolver-client; it is never looked up on an index.
RUN pip wheel --wheel-dir /wheels ./client .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted, not copied: they never become an image layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels controlplane-resolver \
 && groupadd --system --gid 10001 resolver \
 && useradd --system --uid 10001 --gid resolver --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin resolver
# uid/gid 10001: deploy/kubernetes sets runAsUser/runAsGroup to match.
USER resolver
ENV RESOLVER_ADDR=0.0.0.0:50051
EXPOSE 50051
# gRPC health protocol (grpc.health.v1): healthy only while the server
# reports SERVING, which it does once start-up checks pass, every pool is
# open and the invalidation listener is connected. `controlplane-resolver
# health` reads RESOLVER_ADDR; for a TLS listener set RESOLVER_HEALTH_TLS_CA
# (and RESOLVER_HEALTH_TLS_CERT/KEY under mutual TLS).
HEALTHCHECK --interval=10s --timeout=5s --start-period=40s --retries=3 \
    CMD ["controlplane-resolver", "health"]
ENTRYPOINT ["controlplane-resolver"]
CMD ["serve"]
