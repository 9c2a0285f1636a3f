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
# The base is pinned by tag (Python patch release and Debian release). Pinning
# it by digest as well needs a registry lookup, which this repository's
# machines cannot make: add `@sha256:...` when building where you can resolve it.
# Where it cannot be pulled, any Debian bookworm image with python3 (3.11),
# python3-venv and python3-pip builds this file unchanged:
#
#   docker build --build-arg PYTHON_IMAGE=my-local/python:3.11-bookworm -t shoal:0.1.0 .
#
# (tests/cluster/images.py makes such a stand-in from debootstrap when offline.)

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Dependencies first, in a layer only a change of pyproject.toml rebuilds: the
# runtime venv gets the project's dependencies, a build venv gets the build backend.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); open('/tmp/runtime.txt', 'w').write('\n'.join(p['project']['dependencies'])); open('/tmp/build.txt', 'w').write('\n'.join(p['build-system']['requires']))" \
 && python -m venv /opt/shoal \
 && /opt/shoal/bin/pip install -r /tmp/runtime.txt \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install -r /tmp/build.txt
COPY README.md ./
COPY worker ./worker
COPY operator ./operator
# A wheel, installed into the runtime venv: the venv is all the final stage
# needs (no source tree, no build backend, no compiler).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/shoal/bin/pip install --no-deps /tmp/wheels/shoal-*.whl


FROM ${PYTHON_IMAGE}

ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so `runAsNonRoot: true` can verify it; the chart and the worker Pods run as 10001.
RUN groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid shoal --no-create-home --home-dir /nonexistent shoal

COPY --from=build /opt/shoal /opt/shoal
WORKDIR /app
# The demo app, so examples/workerpool.yaml (spec.app: examples/tasks.py:app) runs as is.
COPY examples ./examples
USER 10001:10001

ENTRYPOINT ["shoal"]
CMD ["--help"]
