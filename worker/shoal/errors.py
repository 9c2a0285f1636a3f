"""Errors Shoal raises for bad input and unreachable backends.

Every error says what was wrong in words a user can act on; none is raised
after anything was half-written.
"""


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""


class InvalidInput(ShoalError, ValueError):
    """A payload, duration, tag or name that Shoal cannot accept."""


class UnknownTask(InvalidInput):
    """A task name that no registered handler serves."""


class InvalidWorkflow(InvalidInput):
    """A workflow DAG that cannot run: a cycle, a missing step, a bad reference."""


class NotFound(ShoalError, LookupError):
    """A task or workflow id that does not exist."""


class BackendUnavailable(ShoalError, ConnectionError):
    """The database could not be reached or refused the credentials."""


class InvalidCommand(ShoalError):
    """A workflow command that the workflow's state does not allow (e.g. resume after cancel)."""
