"""A test app with a schedule every second: each run appends a JSON line to the file
named by $SHOAL_TEST_PERIODIC_LOG (read when the app is imported). Load with
`--app tests/apps/periodic.py:app`."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from shoal import App, TaskContext

app = App("periodic")


@app.task("tick", cron="* * * * * *",
          payload={"log": os.environ.get("SHOAL_TEST_PERIODIC_LOG", os.devnull)})
def tick(run: dict[str, Any], ctx: TaskContext) -> None:
    with open(run["log"], "a") as f:  # one small O_APPEND write: lines never interleave
        f.write(json.dumps({"task": ctx.task_id, "pid": os.getpid(), "t": time.time()}) + "\n")
