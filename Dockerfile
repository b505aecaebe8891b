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
#
# Reproducible: every Python package is pinned by constraints.txt (make lock),
# and the base image should be pinned by digest where a registry is reachable:
#
#   make image PYTHON_IMAGE=python:3.11-slim@sha256:<digest>
#   (= docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> \
#        --build-arg VERSION=<pyproject version> --build-arg REVISION=<git commit> .)
#
# The digest is not recorded here: it was written where no registry could be
# reached. docs/operations.md#pinning-the-base-image says how to find it.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
# Wheels for the server distribution (which ships the client package too) *and*
# every dependency, so the runtime stage installs offline and needs no build
# tools. PIP_CONSTRAINT pins the dependencies and, unlike -c, also the build
# backend pip installs for the isolated build.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/src/constraints.txt
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps out the rest).
# README.md is the server distribution's long description (pyproject.toml).
COPY constraints.txt pyproject.toml README.md ./
COPY client/ client/
COPY server/ server/
RUN pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted, not copied: they never become an image layer.
# They are exactly the pinned versions (built under constraints.txt above), and
# --no-index installs nothing else, hence no version pins here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels controlplane-resolver \
 && groupadd --system --gid 10001 resolver \
 && useradd --system --uid 10001 --gid resolver --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin resolver
# uid/gid 10001: deploy/kubernetes sets runAsUser/runAsGroup to match. Numeric,
# so that runAsNonRoot can verify it without a runAsUser of its own.
USER 10001:10001
ENV RESOLVER_ADDR=0.0.0.0:50051
EXPOSE 50051
# gRPC health protocol (grpc.health.v1): healthy only while the server
# reports SERVING, which it does once start-up checks pass, every pool is
# open and the invalidation listener is connected. `controlplane-resolver
# health` reads RESOLVER_ADDR; for a TLS listener set RESOLVER_HEALTH_TLS_CA
# (and RESOLVER_HEALTH_TLS_CERT/KEY under mutual TLS).
HEALTHCHECK --interval=10s --timeout=5s --start-period=40s --retries=3 \
    CMD ["controlplane-resolver", "health"]
# Labels (OCI image annotations), after the install so that a new VERSION or
# REVISION does not rebuild the layers above. `make image` passes VERSION from
# pyproject.toml and REVISION from git; SOURCE_URL is the repository's public
# address, which this repository does not record (pass it when publishing).
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="controlplane-resolver" \
      org.opencontainers.image.description="gRPC service that resolves control-plane facts and reads runs across the control-plane and run-ops databases" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENTRYPOINT ["controlplane-resolver"]
CMD ["serve"]
