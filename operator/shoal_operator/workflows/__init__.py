"""The `Workflow` custom resource: a DAG on a WorkerPool's backend, steered by annotations.

- `spec`: the CR's spec (the `shoal.dag.WorkflowSpec` DAG plus `poolRef`).
- `annotations`: `pause=true` / `cancel=true` (bare or `shoal.dev/`-prefixed) → commands.
- `status`: a backend `WorkflowStatus` → the CR's status, phase and conditions.
- `sync`: the tracked CRs and the service that keeps their status equal to the backend's.
- `handlers`: the kopf handlers that submit, steer and finalize Workflow CRs.
"""
