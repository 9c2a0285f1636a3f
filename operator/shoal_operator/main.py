"""`shoal operator`: argument parsing and the kopf run of every handler module.

Importing a handler module registers its handlers with kopf; adding a
resource kind to the operator is one import line below.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

import shoal_operator.pools.handlers  # noqa: F401  (registers WorkerPool handlers)
from shoal import logs
from shoal.errors import InvalidInput
from shoal_operator import context, metrics
from shoal_operator.context import Operator, OperatorConfig
from shoal_operator.health import Health
from shoal_operator.pools import pods as _pods  # noqa: F401  (registers the pool Pods' handler)
from shoal_operator.pools.oom_watch import POD_RESOURCE, POD_SELECTOR
from shoal_operator.workflows import handlers as _workflows  # noqa: F401  (registers them)
from shoal_operator.workflows.status import PHASE_LABEL_FIELD


def build_parser() -> argparse.ArgumentParser:
    """The parser of `shoal operator` (its docs come from it too: hack/gen_docs.py)."""
    parser = argparse.ArgumentParser(
        prog="shoal operator",
        description="Run the Shoal operator: WorkerPool and Workflow custom resources.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--namespace", "-n", action="append", dest="namespaces", default=[],
                       metavar="NS", help="watch this namespace (repeatable; globs allowed)")
    where.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (needs cluster-wide RBAC)")
    parser.add_argument("--liveness-port", type=int, default=8080,
                        help="serve GET /healthz (liveness) and /readyz (readiness) on this "
                             "port (0: off; default 8080)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="serve Prometheus /metrics on this port (0: off; default 9090)")
    parser.add_argument("--schema", default="shoal",
                        help="database schema for resources that name none (default shoal)")
    parser.add_argument("--recheck-interval", type=float, default=10.0, metavar="SECONDS",
                        help="re-evaluate every pool at least this often (default 10)")
    parser.add_argument("--peering", default=None, metavar="NAME",
                        help="coordinate with other operator replicas through this "
                             "KopfPeering object (default: standalone)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="debug logging (--log-level debug)")
    logs.add_flags(parser)
    return parser


def parse_args(argv: list[str]) -> OperatorConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recheck_interval <= 0:
        parser.error("--recheck-interval must be positive")
    return OperatorConfig(
        namespaces=tuple(args.namespaces), all_namespaces=args.all_namespaces,
        liveness_port=args.liveness_port, metrics_port=args.metrics_port, schema=args.schema,
        recheck_seconds=args.recheck_interval, peering=args.peering,
        log_format=args.log_format or os.environ.get("SHOAL_LOG_FORMAT", "text"),
        log_level=args.log_level or ("debug" if args.verbose else
                                     os.environ.get("SHOAL_LOG_LEVEL", "info")))


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: object) -> None:
    """kopf settings: state kept in annotations, only warnings posted as Events by kopf,
    only pool Pods watched; and the operator's context (`memo.shoal`, see context.py).

    Peering comes from `kopf.operator(standalone=..., peering_name=...)` in `run`.
    """
    memo.shoal = await Operator.start(memo.config, memo.health)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="kopf.shoal.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.shoal.dev", key="last-handled-configuration",
        ignored_fields=[PHASE_LABEL_FIELD])
    settings.persistence.finalizer = "kopf.shoal.dev/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.label_selectors[POD_RESOURCE] = POD_SELECTOR
    settings.networking.request_timeout = 60


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: object) -> None:
    """Stop the operator's services; close the shared database pools and the API client."""
    await context.of(memo).close()


async def run(config: OperatorConfig) -> int:
    """Serve until SIGINT/SIGTERM (0) or until one of the services died (1)."""
    health = Health()
    server = await health.serve(config.liveness_port) if config.liveness_port else None
    try:
        await kopf.operator(
            clusterwide=config.all_namespaces, namespaces=config.namespaces,
            standalone=config.peering is None, peering_name=config.peering,
            ready_flag=health.ready, stop_flag=health.stop,
            memo=kopf.Memo(config=config, health=health))
    finally:
        if server is not None:
            await server.cleanup()
    return 1 if health.dead else 0


def main(argv: list[str]) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    config = parse_args(argv)
    try:
        logs.configure(config.log_format, config.log_level)
    except InvalidInput as exc:  # a bad $SHOAL_LOG_FORMAT or $SHOAL_LOG_LEVEL
        print(f"shoal operator: error: {exc}", file=sys.stderr)
        return 2
    metrics.start(config.metrics_port)
    return asyncio.run(run(config))
