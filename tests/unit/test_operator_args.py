"""`shoal operator` arguments: where to watch, ports, schema, re-check interval."""

from __future__ import annotations

import pytest

from shoal_operator.main import parse_args


def test_namespaces_repeat_and_defaults() -> None:
    config = parse_args(["--namespace", "a", "-n", "b"])
    assert config.namespaces == ("a", "b") and not config.all_namespaces
    assert (config.liveness_port, config.metrics_port, config.schema) == (8080, 9090, "shoal")
    assert config.peering is None and config.recheck_seconds == 10


def test_all_namespaces_and_options() -> None:
    config = parse_args(["--all-namespaces", "--schema", "jobs", "--metrics-port", "0",
                         "--recheck-interval", "2.5", "--peering", "shoal"])
    assert config.all_namespaces and config.namespaces == ()
    assert (config.schema, config.metrics_port, config.recheck_seconds, config.peering) == (
        "jobs", 0, 2.5, "shoal")


@pytest.mark.parametrize("argv", [[], ["-A", "-n", "x"], ["-A", "--recheck-interval", "0"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
