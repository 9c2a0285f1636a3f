"""The operator's health: its services' rounds, /healthz and /readyz.

The operator's long-running services (each pool's scaler, the workflow
status sync) report every round to `Health`. Guarantees:

- A round that fails is logged (with its traceback when the error is not one
  of the expected, transient kinds) and counted in
  `shoal_operator_service_failures_total`; the service retries with backoff.
- A service whose last `FAILING_AFTER` rounds all failed is failing: the
  gauge `shoal_operator_service_failing` is 1 and /readyz answers 503 naming
  it and its last error, until one of its rounds succeeds. (A scaler also
  says so on its pool, as condition ScalingActive=False, ScalerFailing.)
- A service whose loop ended with an exception is dead: it is logged with
  its traceback, /readyz answers 503, and the operator stops with status 1,
  so Kubernetes restarts it.
- /healthz answers 200 while the event loop runs (the liveness probe);
  /readyz answers 200 once kopf is ready and while no service is failing or
  dead (the readiness probe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from shoal_operator import metrics

log = logging.getLogger(__name__)

FAILING_AFTER = 3


class Health:
    """What the operator's services reported, and whether the operator may be ready."""

    def __init__(self, failing_after: int = FAILING_AFTER) -> None:
        self.failing_after = failing_after
        self.ready = asyncio.Event()  # kopf sets it once started
        self.stop = asyncio.Event()  # set when a service died: kopf stops
        self.failures: dict[str, tuple[int, str]] = {}  # service -> (in a row, last error)
        self.dead: dict[str, str] = {}

    def succeeded(self, service: str) -> None:
        """A round of `service` went well: it is no longer failing."""
        if self.failures.pop(service, None) is not None:
            log.info("%s: recovered", service)
        metrics.service_failing.labels(service).set(0)

    def failed(self, service: str, exc: BaseException, *, expected: bool) -> int:
        """A round of `service` failed with `exc`; returns how many rounds in a row have.

        `expected` errors (the API server or a database blinked) are logged in one
        line, others with their traceback.
        """
        count = self.failures.get(service, (0, ""))[0] + 1
        self.failures[service] = (count, f"{type(exc).__name__}: {exc}")
        metrics.service_failures.labels(service).inc()
        if expected:
            log.warning("%s: round failed (%d in a row): %s", service, count, exc)
        else:
            log.error("%s: round failed (%d in a row)", service, count, exc_info=exc)
        if self.is_failing(service):
            metrics.service_failing.labels(service).set(1)
        return count

    def is_failing(self, service: str) -> bool:
        return self.failures.get(service, (0, ""))[0] >= self.failing_after

    def forget(self, service: str) -> None:
        """A service that ended on purpose (its pool was deleted)."""
        self.failures.pop(service, None)
        metrics.forget_service(service)

    async def supervise(self, service: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `service` until it returns or is cancelled; if it raises, it is dead."""
        try:
            await run()
        except Exception as exc:  # its loop broke: the operator stops, Kubernetes restarts it
            self.dead[service] = f"{type(exc).__name__}: {exc}"
            log.critical("%s died; the operator stops", service, exc_info=exc)
            metrics.service_failing.labels(service).set(1)
            self.stop.set()

    def problems(self) -> list[str]:
        """Why the operator is not ready (empty: it is)."""
        found = [] if self.ready.is_set() else ["starting"]
        found += [f"{s}: died: {why}" for s, why in self.dead.items()]
        found += [f"{s}: failed {n} rounds in a row: {why}"
                  for s, (n, why) in self.failures.items() if n >= self.failing_after]
        return found

    async def serve(self, port: int, host: str = "0.0.0.0") -> web.AppRunner:
        """Serve /healthz and /readyz on `port`; the caller cleans the runner up."""
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            problems = self.problems()
            if problems:
                return web.Response(status=503, text="not ready:\n" + "\n".join(problems) + "\n")
            return web.Response(text="ready\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner
