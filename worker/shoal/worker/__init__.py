"""The worker layer: the task registry users write against and the pooled runtime."""

from shoal.worker.app import App, PermanentError, TaskContext, TaskDefinition, load_app
from shoal.worker.config import WorkerConfig
from shoal.worker.runtime import Worker

__all__ = ["App", "PermanentError", "TaskContext", "TaskDefinition", "Worker", "WorkerConfig",
           "load_app"]
