# The one Shoal image: `shoal operator ...` (what the Helm chart runs) and
# `shoal worker ...` (what WorkerPool pods run). Build it from the repository root:
#
#   docker build -t shoal:0.1.0 .
#
# Your task code goes in an image derived from this one. The WorkerPool's
# `spec.app` names it as path/to/file.py:APP (relative to /app, or absolute) or
# MODULE:APP (a module installed into /opt/shoal):
#
#   FROM shoal:0.1.0
#   COPY tasks.py /app/tasks.py               # spec.app: tasks.py:app
#
#   FROM shoal:0.1.0
#   USER root
#   RUN /opt/shoal/bin/pip install --no-cache-dir my-tasks==1.2.3   # spec.app: my_tasks:app
#   USER 10001:10001
#
# Or mount a module without dependencies of its own from a ConfigMap through the
# WorkerPool's spec.template.volumes/volumeMounts (spec.app: /opt/tasks/etl.py:app).
#
# tests/packaging/test_dockerfile.py runs this file's build commands and the
# final stage's entry point without a container engine; keep the two in step.
#
# The base is pinned by tag (Python patch release and Debian release). Pinning
# it by digest as well needs a registry lookup, which this repository's
# machines cannot make: add `@sha256:...` when building where you can resolve it.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY operator ./operator
# A wheel, then a venv with the wheel and its dependencies: the venv is all the
# final stage needs (no source tree, no build backend, no compiler).
RUN python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && python -m venv /opt/shoal \
 && /opt/shoal/bin/pip install /tmp/wheels/shoal-*.whl


FROM python:3.11.14-slim-bookworm

ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/shoal /opt/shoal
WORKDIR /app
# The demo app, so examples/workerpool.yaml (spec.app: examples/tasks.py:app) runs as is.
COPY examples ./examples

# Numeric, so `runAsNonRoot: true` can verify it; the chart and the worker Pods run as 10001.
RUN groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid shoal --no-create-home --home-dir /nonexistent shoal
USER 10001:10001

ENTRYPOINT ["shoal"]
CMD ["--help"]
