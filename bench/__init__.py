"""Throughput and latency benchmark of Shoal against other Postgres task queues."""
