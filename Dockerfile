# The one Shoal image: `shoal operator ...` (the Helm chart) and
# `shoal worker ...` (WorkerPool pods; bring your tasks in a derived image).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY operator ./operator
# The demo app (examples/tasks.py:app), so examples/workerpool.yaml runs as is.
COPY examples ./examples
RUN pip install . \
 && groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid shoal --no-create-home --home-dir /nonexistent shoal

# Numeric, so `runAsNonRoot: true` can verify it.
USER 10001:10001
ENTRYPOINT ["shoal"]
CMD ["--help"]
