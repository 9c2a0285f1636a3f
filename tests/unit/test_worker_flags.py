"""`shoal worker`'s flags are derived from WorkerSettings, and `to_argv` round-trips
through the real CLI parser: what the operator writes is what the worker reads."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from shoal.cli import build_parser
from shoal.cli.worker import add_settings, settings
from shoal.worker.config import WorkerConfig, WorkerSettings
from shoal_operator.pools.deployment import desired_deployment, worker_settings
from shoal_operator.pools.spec import PoolSpec

EVERY_FIELD = WorkerSettings(
    db_schema="jobs", namespace="etl", tags=("gpu", "eu-west"), tasks=("resize", "mail.send"),
    concurrency=7, batch_size=3, claim_ttl=90.0, poll_interval=0.25, drain_timeout=0.0,
    retention=3 * 86400.0, metrics_host="10.0.0.7", metrics_port=0, worker_id="w-1",
    pool="etl-pool")


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["worker", "--app", "tasks.py:app", *argv])


def test_every_field_set_round_trips() -> None:
    assert EVERY_FIELD.model_fields_set == set(WorkerSettings.model_fields)
    argv = EVERY_FIELD.to_argv()
    assert argv[:2] == ["--schema", "jobs"]
    assert "--claim-ttl" in argv and argv[argv.index("--claim-ttl") + 1] == "90s"
    assert WorkerSettings(**settings(parse(argv))) == EVERY_FIELD


def test_a_flag_left_out_leaves_the_default() -> None:
    given = WorkerSettings(concurrency=3)
    assert given.to_argv() == ["--concurrency", "3"]
    parsed = settings(parse(given.to_argv()))
    assert parsed == {"db_schema": "shoal", "concurrency": 3}  # --schema: the common default
    config = WorkerConfig(dsn="postgresql://x", **parsed)
    assert (config.batch_size, config.claim_ttl) == (10, 30.0)  # the model's defaults


def test_one_flag_per_field() -> None:
    """Every setting has its flag (--schema is every database command's own)."""
    parser = argparse.ArgumentParser()
    add_settings(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    expected = {WorkerSettings.flag(name) for name in WorkerSettings.model_fields}
    assert flags - {"-h", "--help"} == expected - {"--schema"}


@pytest.mark.parametrize("flag", [["--concurrency", "0"], ["--claim-ttl", "soon"],
                                  ["--tags", "no spaces"], ["--metrics-port", "70000"]])
def test_bad_values_are_refused_by_the_parser_or_the_model(flag: list[str]) -> None:
    with pytest.raises((SystemExit, ValueError)):
        WorkerConfig(dsn="postgresql://x", **settings(parse(flag)))


SPEC: dict[str, Any] = {
    "app": "examples/tasks.py:app", "template": {"image": "shoal:1", "args": ["--poll-interval",
                                                                            "2s"]},
    "database": {"secretRef": {"name": "pg"}},
    "tasks": {"namespace": "etl", "tags": ["gpu"], "names": ["sleep", "echo"]},
    "concurrency": 8, "batchSize": 2, "claimTTL": "1m", "drainTimeout": "0s",
}


def test_the_deployment_args_parse_back_to_the_pool_settings() -> None:
    spec = PoolSpec.from_body(SPEC)
    body = {"metadata": {"name": "etl", "namespace": "jobs", "uid": "u-1"}}
    container = desired_deployment(body, spec, replicas=1, schema="s1")["spec"]["template"][
        "spec"]["containers"][0]
    args = build_parser().parse_args(["worker", *container["args"]])
    assert args.app == spec.app
    expected = worker_settings("etl", spec, "s1").model_dump() | {"poll_interval": 2.0}
    assert WorkerSettings(**settings(args)).model_dump() == expected
    assert (expected["drain_timeout"], expected["claim_ttl"], expected["tasks"]) == (
        0.0, 60.0, ("sleep", "echo"))
