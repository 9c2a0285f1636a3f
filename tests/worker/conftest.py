"""Fixtures of the worker tests (a migrated database per test)."""

from tests.support import backend, log, spawn

__all__ = ["backend", "log", "spawn"]
