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


class SessionRequired(ShoalError):
    """A transaction pooler where a session is needed: a worker, a LISTEN or `shoal migrate`
    given a DSN marked `prepared_statements=false`, or prepared statements failing
    through a pooler whose DSN was not marked."""


class SchemaNotMigrated(ShoalError):
    """Shoal's tables are missing or older than this version needs: run `shoal migrate`."""


class MigrationFailed(ShoalError):
    """Creating or upgrading the schema failed; `privileges` when the role may not."""

    def __init__(self, message: str, *, privileges: bool = False) -> None:
        super().__init__(message)
        self.privileges = privileges


class InvalidCommand(ShoalError):
    """A workflow command that the workflow's state does not allow (e.g. resume after cancel)."""


class TaskFailed(ShoalError):
    """A task waited for ended without a result: a dead letter, or cancelled."""

    def __init__(self, task_id: int, state: str, error: str | None) -> None:
        super().__init__(f"task {task_id} is {state}: {error or 'no error recorded'}")
        self.task_id = task_id
        self.state = state  # dead | cancelled
        self.error = error  # the error recorded with the task


class WorkflowFailed(ShoalError):
    """A workflow waited for ended without succeeding: failed or cancelled."""

    def __init__(self, workflow_id: object, state: str, message: str | None) -> None:
        super().__init__(f"workflow {workflow_id} is {state}: {message or 'no message'}")
        self.workflow_id = workflow_id
        self.state = state  # failed | cancelled
        self.message = message


class WaitTimeout(ShoalError, TimeoutError):
    """A task or workflow waited for did not finish within the timeout."""
