"""The backend layer: Shoal's schema, migrations and every query (asyncpg).

It knows nothing of Kubernetes or of the worker runtime; both call `Backend`.
"""

from shoal.backend.codec import MAX_JSON_BYTES, check_text, json_text, printable
from shoal.backend.connections import TRANSIENT_ERRORS
from shoal.backend.driver import FINAL_WORKFLOW_STATES, Backend, parse_handoff
from shoal.backend.models import (
    DEFAULT_LEASE_EXPIRIES,
    Backlog,
    ClaimedTask,
    CommandRecord,
    DeadLetter,
    DeadLetterFilter,
    HeartbeatReply,
    NewTask,
    Outcome,
    StepStatus,
    TaskRow,
    WorkerIdentity,
    WorkerRow,
    WorkflowStatus,
)
from shoal.backend.notifications import Subscription

__all__ = [
    "DEFAULT_LEASE_EXPIRIES",
    "FINAL_WORKFLOW_STATES",
    "MAX_JSON_BYTES",
    "TRANSIENT_ERRORS",
    "Backend",
    "Backlog",
    "ClaimedTask",
    "CommandRecord",
    "DeadLetter",
    "DeadLetterFilter",
    "HeartbeatReply",
    "NewTask",
    "Outcome",
    "StepStatus",
    "Subscription",
    "TaskRow",
    "WorkerIdentity",
    "WorkerRow",
    "WorkflowStatus",
    "check_text",
    "json_text",
    "parse_handoff",
    "printable",
]
