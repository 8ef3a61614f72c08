# amperity-auth-proxy: a small, non-root sidecar image.
# Build: make docker-build (or: docker build -t amperity-auth-proxy .)
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
# The release's version (proxy.__version__; make docker-build passes it): the image label.
ARG VERSION=0.1.0

# --- build stage: a virtualenv from the locked, hashed dependencies -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock ./
# The venv gets no pip of its own: the build image's pip fills it from outside (--python), so
# the runtime image, which copies only /venv, carries no installer.
RUN python -m venv --without-pip /venv \
    && pip --python /venv/bin/python install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The project itself has no hash (it is built here); its dependencies all came from the lock.
RUN pip --python /venv/bin/python install --no-deps . \
    && /venv/bin/python -m compileall -q /venv

# --- runtime stage: only the virtualenv; nothing is written at run time ----------------------
FROM ${PYTHON_IMAGE}
ARG VERSION
# The base image's own installer goes too: nothing in the running image can install code.
RUN python -m pip uninstall --yes pip setuptools
LABEL org.opencontainers.image.title="amperity-auth-proxy" \
      org.opencontainers.image.description="Local reverse proxy that injects Amperity API credentials and exports token expiry metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/venv/bin:$PATH
COPY --from=build /venv /venv
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 8080 9090
# No HEALTHCHECK: Kubernetes probes /livez and /readyz on the admin port (see README).
ENTRYPOINT ["amperity-proxy"]
# `run` reads /etc/amperity-proxy/config.yaml when it exists (a mounted ConfigMap), else the
# AMPERITY_PROXY_* route variables (README: "Run without a config file").
CMD ["run"]
