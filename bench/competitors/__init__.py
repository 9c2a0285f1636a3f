"""Adapters for the competing Postgres-backed task queues."""
