"""Errors the operator reports on a resource's status: each says what to fix."""

from shoal.errors import BackendUnavailable, InvalidInput, ShoalError


class PoolNotFound(ShoalError, LookupError):
    """A WorkerPool that a name refers to does not exist."""


class InvalidPoolSpec(InvalidInput):
    """A WorkerPool spec the CRD schema accepted but the operator cannot run."""


class DatabaseSecretError(ShoalError, ValueError):
    """The database Secret of a pool is missing, lacks its key, or holds no usable DSN."""


class SchemaNotReady(BackendUnavailable):
    """The database answers, but Shoal's schema could not be created or upgraded there."""
