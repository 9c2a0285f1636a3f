"""Shoal's version, from its installed metadata (one source: pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("shoal")
except PackageNotFoundError:  # imported from a source tree that was never installed
    VERSION = "unknown"
