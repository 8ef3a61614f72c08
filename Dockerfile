# amperity-auth-proxy: a small sidecar image.
# Build stage: a virtualenv with the package and its runtime dependencies, bytecode compiled.
FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /venv \
    && /venv/bin/pip install . \
    && /venv/bin/python -m compileall -q /venv

# Runtime stage: only the virtualenv, run as a numeric non-root user; nothing is written at run time.
FROM python:3.12-slim
LABEL org.opencontainers.image.title="amperity-auth-proxy" \
      org.opencontainers.image.description="Local reverse proxy that injects Amperity API credentials"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/venv/bin:$PATH
COPY --from=build /venv /venv
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["amperity-proxy"]
CMD ["run", "--config", "/etc/amperity-proxy/config.yaml"]
