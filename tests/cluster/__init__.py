"""Real components for tests: a local Kubernetes cluster (and PostgreSQL)."""
