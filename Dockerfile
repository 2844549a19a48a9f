# syntax=docker/dockerfile:1
# The dms-headend image: the API server (`dms serve`) and, with the same image, the Ray head and
# workers that host the feeder actors (Ray client and cluster must share Ray and Python versions).
#
# Two stages: the builder installs the project and its locked-range dependencies into a venv
# (binary wheels only: no compiler is needed); the final stage copies that venv onto a clean slim
# base and runs as uid 10001 on a read-only root filesystem, writing only to /tmp and the data dir.
# Size: about 750 MiB of site-packages (ray 225, scipy 136, arcadedb-embedded 95 incl. its JRE,
# pandas 72, numpy 68) on a ~125 MiB base. arcadedb-embedded is the local default graph store only;
# production uses Neo4j, but it stays installed because it is a declared dependency.

# Debian bookworm (glibc 2.36): arcadedb-embedded ships manylinux_2_34 wheels only. Pin the digest
# (python:3.11.14-slim-bookworm@sha256:...) in CI once it is resolved there.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY actors ./actors
COPY graph_schema ./graph_schema
COPY protocols ./protocols
COPY security ./security
# The project's own wheel (hatchling, pure Python), then a venv from binary wheels only: a
# dependency that would need a compiler fails the build instead of pulling one in.
RUN python -m pip install --no-cache-dir "build>=1.2" \
    && python -m build --wheel --outdir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: /wheels/*.whl \
    && /opt/venv/bin/dms --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dms-headend" \
      org.opencontainers.image.description="DMS head-end: GraphQL server and Ray feeder actors" \
      org.opencontainers.image.licenses="Apache-2.0"
# Writable paths are /tmp (emptyDir) and /var/lib/dms (DMS_DATA_DIR, emptyDir or volume); every
# cache a library might create is pointed under /tmp so a read-only root filesystem works.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    RAY_TMPDIR=/tmp/ray \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    DMS_DATA_DIR=/var/lib/dms \
    DMS_HOST=0.0.0.0 \
    DMS_PORT=8000 \
    DMS_LOG_JSON=true
RUN groupadd --system --gid 10001 dms \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin dms \
    && mkdir -p /var/lib/dms \
    && chown 10001:10001 /var/lib/dms \
    && chmod 0750 /var/lib/dms
COPY --from=builder /opt/venv /opt/venv
WORKDIR /var/lib/dms
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DMS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["dms"]
CMD ["serve", "--host", "0.0.0.0"]
