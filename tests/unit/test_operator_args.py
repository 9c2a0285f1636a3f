"""`shoal operator` arguments: where to watch, ports, schema, re-check interval, logs."""

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


def test_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_LOG_FORMAT", raising=False)
    monkeypatch.delenv("SHOAL_LOG_LEVEL", raising=False)
    config = parse_args(["-A"])
    assert (config.log_format, config.log_level) == ("text", "info")
    assert parse_args(["-A", "--verbose"]).log_level == "debug"
    config = parse_args(["-A", "--log-format", "json", "--log-level", "warning", "-v"])
    assert (config.log_format, config.log_level) == ("json", "warning")  # explicit wins
    monkeypatch.setenv("SHOAL_LOG_FORMAT", "json")
    assert parse_args(["-A"]).log_format == "json"
    with pytest.raises(SystemExit):
        parse_args(["-A", "--log-format", "xml"])
