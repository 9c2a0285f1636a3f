"""Bad input gets one clear error and writes nothing: unknown task names, payloads that
are not JSON, DAGs with a cycle or a missing step, unreachable or misnamed databases, a
wrong password, an invalid --app reference, invalid durations, unknown ids."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal import BackendUnavailable, Client, Job, WorkflowSpec
from shoal.backend import Backend
from shoal.errors import InvalidInput, InvalidWorkflow, NotFound, UnknownTask
from tests.apps.recorder import app
from tests.cluster.postgres import ExternalPostgres, PostgresServer, free_port
from tests.support import RECORDER, cli, row_counts

EMPTY = {"tasks": 0, "workflows": 0, "workflow_commands": 0, "workers": 0}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


async def test_unknown_task_name_is_refused_before_writing(backend: Backend) -> None:
    client = Client(backend, app)
    with pytest.raises(UnknownTask, match="unknown task 'resize'; registered tasks: add, "):
        await client.enqueue("resize", {})
    with pytest.raises(UnknownTask):  # one bad job in a batch: none is written
        await client.enqueue_many([Job("echo", 1), Job("echo", 2), Job("nope")])
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize("payload", [object(), {"when": object()}, float("nan"), {1j: 2},
                                     [b"bytes"]])
async def test_payload_that_is_not_json_is_refused(backend: Backend, payload: object) -> None:
    client = Client(backend)
    with pytest.raises(InvalidInput, match="payload of task 'echo' is not JSON-serialisable"):
        await client.enqueue_many([Job("echo", {"fine": True}), Job("echo", payload)])
    assert await row_counts(backend) == EMPTY


async def test_payload_that_does_not_fit_the_input_model_is_refused(backend: Backend) -> None:
    with pytest.raises(InvalidInput, match="payload for task 'add' is invalid"):
        await Client(backend, app).enqueue("add", {"a": 1, "b": "two"})
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize(("options", "message"), [
    ({"tags": ["ok", "not ok"]}, "invalid tag"),
    ({"tags": ["a,b"]}, "invalid tag"),
    ({"retries": -1}, "retries must be >= 0"),
    ({"delay": "tomorrow"}, "invalid duration 'tomorrow'"),
    ({"timeout": "-5s"}, "invalid duration '-5s'"),
    ({"timeout": -1}, "must not be negative"),
])
async def test_bad_options_are_refused(backend: Backend, options: dict[str, object],
                                       message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await Client(backend).enqueue("echo", None, **options)
    assert await row_counts(backend) == EMPTY


CYCLE = {"steps": [{"name": "a", "task": "echo", "dependsOn": ["c"]},
                   {"name": "b", "task": "echo", "dependsOn": ["a"]},
                   {"name": "c", "task": "echo", "dependsOn": ["b"]}]}
MISSING = {"steps": [{"name": "a", "task": "echo"},
                     {"name": "b", "task": "echo", "dependsOn": ["a", "ghost"]}]}


async def test_cycle_and_missing_step_write_no_workflow(backend: Backend) -> None:
    client = Client(backend, app)
    with pytest.raises(InvalidWorkflow, match=r"dependency cycle: (\w -> ){3}\w"):
        await client.submit_workflow(CYCLE, name="cyclic")
    with pytest.raises(InvalidWorkflow,
                       match=r"step 'b' depends on missing step\(s\): ghost"):
        await client.submit_workflow(MISSING, name="dangling")
    # the backend checks too, whoever calls it
    for spec in (CYCLE, MISSING):
        with pytest.raises(InvalidWorkflow):
            await backend.submit_workflow(WorkflowSpec.model_validate(spec), name="raw")
    with pytest.raises(UnknownTask, match="unknown task 'resize'"):
        await client.submit_workflow({"steps": [{"name": "a", "task": "echo"},
                                                {"name": "b", "task": "resize"}]}, name="x")
    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        await client.submit_workflow({"input": {"x": object()},
                                      "steps": [{"name": "a", "task": "echo"}]}, name="x")
    assert await row_counts(backend) == EMPTY


async def test_cli_submit_refuses_a_cycle(dsn: str, backend: Backend, tmp_path: Path) -> None:
    spec = tmp_path / "cyclic.yaml"
    spec.write_text("steps:\n"
                    "  - {name: a, task: echo, dependsOn: [b]}\n"
                    "  - {name: b, task: echo, dependsOn: [a]}\n")
    result = await cli("submit", "--dsn", dsn, str(spec))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("shoal: error: dependency cycle: ")
    result = await cli("submit", "--dsn", dsn, str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read" in one_line(result.stderr)
    assert await row_counts(backend) == EMPTY


async def test_cli_enqueue_bad_input_exits_2_with_one_line(dsn: str, backend: Backend) -> None:
    result = await cli("enqueue", "--dsn", dsn, "echo", "--payload", "{bad")
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result.stderr).startswith("shoal: error: --payload is not valid JSON: ")
    result = await cli("enqueue", "--dsn", dsn, "resize", "--app", RECORDER)
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("shoal: error: unknown task 'resize'")
    result = await cli("enqueue", "--dsn", dsn, "echo", "--delay", "2x")
    assert result.returncode == 2
    assert one_line(result.stderr) == ("shoal: error: invalid duration '2x': use a number "
                                       "with a unit, e.g. 30s, 5m, 1h30m, 250ms")
    assert await row_counts(backend) == EMPTY
    # no worker ever served `echo` here and no --app says it exists: a typo would sit
    # ready forever, so it is refused unless --force
    result = await cli("enqueue", "--dsn", dsn, "echo", "--payload", '{"ok": 1}')
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "shoal: error: no worker has served task 'echo' in namespace 'default': check the "
        "name, pass --app to check it against your app, or --force")
    assert await row_counts(backend) == EMPTY
    good = await cli("enqueue", "--dsn", dsn, "echo", "--payload", '{"ok": 1}', "--key", "k",
                     "--force")
    again = await cli("enqueue", "--dsn", dsn, "echo", "--payload", '{"ok": 2}', "--key", "k",
                      "--force")
    assert good.returncode == again.returncode == 0
    assert good.stdout == again.stdout  # the idempotency key returns the same id
    assert (await row_counts(backend))["tasks"] == 1


async def test_unreachable_database_is_a_clear_error(postgres: PostgresServer
                                                     | ExternalPostgres) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/shoal"
    with pytest.raises(BackendUnavailable, match="cannot reach the database at "
                                                 f"{closed}: .*Connect call failed"):
        await Backend.connect(closed)
    missing = postgres.dsn.rpartition("/")[0] + "/no_such_database"
    with pytest.raises(BackendUnavailable, match="database does not exist at "):
        await Backend.connect(missing)
    for dsn, message in ((closed, "cannot reach the database"),
                         (missing, "database does not exist")):
        result = await cli("migrate", "--dsn", dsn)
        assert result.returncode == 2
        assert one_line(result.stderr).startswith(f"shoal: error: {message} at {dsn}")
    result = await cli("status", str(uuid.uuid4()), env={"SHOAL_DSN": ""})
    assert result.returncode == 2 and "no database: pass --dsn or set SHOAL_DSN" in result.stderr


@pytest.fixture
async def password_role(postgres: PostgresServer | ExternalPostgres,
                        dsn: str) -> AsyncIterator[str]:
    """A role that must log in with a password (scram-sha-256), on the session server.

    The server trusts everyone else; one pg_hba.conf line, removed afterwards,
    makes this role the exception. Yields a DSN template with {password}.
    """
    if not isinstance(postgres, PostgresServer):
        pytest.skip("SHOAL_TEST_DSN: pg_hba.conf of an external server is not ours to edit")
    admin = await Backend.connect(postgres.dsn, max_size=1)
    hba = postgres.data / "pg_hba.conf"
    original = hba.read_text()
    try:
        await admin.pool.execute("DROP ROLE IF EXISTS shoal_pw")
        await admin.pool.execute("CREATE ROLE shoal_pw LOGIN PASSWORD 'right-password'")
        hba.write_text("host all shoal_pw 127.0.0.1/32 scram-sha-256\n" + original)
        await admin.pool.execute("SELECT pg_reload_conf()")
        database = dsn.rpartition("/")[2]
        yield f"postgresql://shoal_pw:{{password}}@127.0.0.1:{postgres.port}/{database}"
    finally:
        hba.write_text(original)
        await admin.pool.execute("SELECT pg_reload_conf()")
        await admin.close()


async def test_wrong_password_is_a_clear_error_that_hides_the_password(
        password_role: str) -> None:
    wrong = password_role.format(password="wrong-secret")
    with pytest.raises(BackendUnavailable, match="database refused the credentials for "
                                                 "postgresql://shoal_pw:\\*\\*\\*@") as info:
        await Backend.connect(wrong)
    assert "wrong-secret" not in str(info.value)
    result = await cli("migrate", "--dsn", wrong)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("shoal: error: database refused the credentials for "
                           "postgresql://shoal_pw:***@")
    assert "password authentication failed" in line and "wrong-secret" not in line
    right = await Backend.connect(password_role.format(password="right-password"))
    await right.close()


@pytest.mark.parametrize(("reference", "message"), [
    ("no.such.module:app", "cannot import 'no.such.module'"),
    ("examples/tasks.py:nothing", "'nothing' in 'examples/tasks.py' is not a shoal.App"),
    ("examples/missing.py:app", "no such file"),
    ("examples.tasks", "use MODULE:APP or path/to/file.py:APP"),
])
async def test_invalid_app_reference(dsn: str, reference: str, message: str) -> None:
    result = await cli("worker", "--dsn", dsn, "--app", reference, "--metrics-port", "0")
    assert result.returncode == 2
    assert message in one_line(result.stderr)


async def test_worker_refuses_a_task_name_its_app_lacks(dsn: str) -> None:
    result = await cli("worker", "--dsn", dsn, "--app", RECORDER, "--tasks", "echo,resize",
                       "--metrics-port", "0")
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("shoal: error: unknown task 'resize'")


@pytest.mark.parametrize("args", [
    ["worker", "--app", RECORDER, "--claim-ttl", "2x"],
    ["worker", "--app", RECORDER, "--drain-timeout", "soon"],
    ["worker", "--app", RECORDER, "--poll-interval", "1y"],
    ["migrate", "--aging-interval", "5 minutes"],
])
async def test_invalid_duration_flags(dsn: str, args: list[str]) -> None:
    result = await cli(*args, "--dsn", dsn)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]  # argparse: usage, then the error
    flag, value = args[-2:]
    assert error.endswith(f"error: argument {flag}: invalid duration {value!r}: use a number "
                          "with a unit, e.g. 30s, 5m, 1h30m, 250ms"), result.stderr
    assert "Traceback" not in result.stderr


async def test_commands_on_unknown_ids(dsn: str, backend: Backend) -> None:
    ghost = uuid.uuid4()
    with pytest.raises(NotFound, match=f"no workflow with id {ghost}"):
        await Client(backend).pause(ghost)
    with pytest.raises(NotFound, match="no task with id 424242"):
        await backend.get_task(424242)
    for verb in ("pause", "resume", "cancel", "status"):
        result = await cli(verb, "--dsn", dsn, str(ghost))
        assert result.returncode == 2
        assert one_line(result.stderr) == f"shoal: error: no workflow with id {ghost}"
    result = await cli("pause", "--dsn", dsn, "not-a-uuid")
    assert result.returncode == 2 and "invalid UUID value" in result.stderr
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize(("options", "message"), [
    ({"priority": 2**31}, "task 'echo': priority must be between -10,000 and 10,000, not "
                          "2,147,483,648"),
    ({"retries": 2**31}, "task 'echo': retries must be between 0 and 1,000"),
    ({"lease_expiries": -1}, "task 'echo': lease expiries must be between 0 and 1,000"),
    ({"timeout": "25d"}, "task 'echo': timeout must be between 0 and 24 days, not 2.16e+06s"),
    ({"delay": float("inf")}, "task 'echo': delay must be between 0 and 10 years, not infs"),
    ({"delay": "nan"}, "task 'echo': delay must be between 0 and 10 years, not nans"),
    ({"delay": "4000d"}, "task 'echo': delay must be between 0 and 10 years"),
    ({"idempotency_key": "k\x00"}, "task 'echo': idempotency key contains a NUL character"),
])
async def test_out_of_range_options_are_refused_before_any_sql(
        backend: Backend, options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        await Client(backend).enqueue("echo", None, **options)
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize(("payload", "message"), [
    ("a\x00b", "a string contains a NUL character (U+0000)"),
    ({"k\x00": 1}, "a string contains a NUL character (U+0000)"),
    ("\udc80", "a string contains an unpaired surrogate"),
    ("x" * (16 * 2**20), "16,777,218 bytes of JSON, over the limit of 16,777,216"),
])
async def test_payloads_postgres_cannot_store_are_refused(backend: Backend, payload: object,
                                                         message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(
            f"payload of task 'echo' is not JSON-serialisable: {message}")):
        await Client(backend).enqueue("echo", payload)
    assert await row_counts(backend) == EMPTY


async def test_names_that_do_not_fit_are_refused(backend: Backend) -> None:
    with pytest.raises(InvalidInput, match="namespace must have 1 to 253 characters, not 9,000"):
        await Client(backend, namespace="n" * 9000).enqueue("echo")
    with pytest.raises(InvalidInput, match="task name contains a NUL character"):
        await Client(backend).enqueue("ec\x00ho")
    with pytest.raises(InvalidInput, match="workflow name contains a NUL character"):
        await Client(backend).submit_workflow({"steps": [{"name": "a", "task": "echo"}]},
                                              name="w\x00")
    with pytest.raises(InvalidInput, match="invalid workflow spec: priority: Input should be "
                       "less than or equal to 2147483647"):
        await Client(backend).submit_workflow(
            {"priority": 2**40, "steps": [{"name": "a", "task": "echo"}]}, name="w")
    with pytest.raises(InvalidInput, match="reason contains a NUL character"):
        await Client(backend).cancel(uuid.uuid4(), reason="bad\x00")
    with pytest.raises(InvalidInput, match="step 'a': timeout must be between 0 and 24 days"):
        await Client(backend).submit_workflow(
            {"steps": [{"name": "a", "task": "echo", "timeout": "600h"}]}, name="w")
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize(("args", "message"), [
    (["enqueue", "echo", "--force", "--priority", "3000000000"],
     "task 'echo': priority must be between -10,000 and 10,000, not 3,000,000,000"),
    (["enqueue", "echo", "--force", "--timeout", "30d"],
     "task 'echo': timeout must be between 0 and 24 days, not 2.592e+06s"),
    (["enqueue", "echo", "--force", "--retries", "99999999999"],
     "task 'echo': retries must be between 0 and 1,000, not 99,999,999,999"),
    (["enqueue", "echo", "--force", "--payload", '"a\\u0000b"'],
     "payload of task 'echo' is not JSON-serialisable: a string contains a NUL character"),
    (["enqueue", "echo", "--force", "--payload", "NaN"],
     "payload of task 'echo' is not JSON-serialisable: Out of range float values"),
    (["enqueue", "echo", "--force", "--namespace", "n" * 9000],
     "task 'echo': namespace must have 1 to 253 characters, not 9,000"),
    (["worker", "--app", RECORDER, "--concurrency", "0"],
     "--concurrency: Input should be greater than or equal to 1"),
    (["worker", "--app", RECORDER, "--claim-ttl", "2d"],
     "--claim-ttl: Input should be less than or equal to 86400"),
    (["worker", "--app", RECORDER, "--metrics-port", "70000"],
     "--metrics-port: Input should be less than or equal to 65535"),
    (["migrate", "--aging-interval", "60d"],
     "aging interval must be positive and at most 30 days, not 5.184e+06s"),
    (["dead-letters", "list", "--limit", "-1"], "limit must be between 0 and 100,000, not -1"),
    (["dead-letters", "count", "--id", "99999999999999999999"],
     "task id must be between 1 and 9,223,372,036,854,775,807"),
])
async def test_cli_bad_input_is_one_line_and_exit_2(dsn: str, backend: Backend,
                                                    args: list[str], message: str) -> None:
    result = await cli(*args, "--dsn", dsn)
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr).startswith(f"shoal: error: {message}"), result.stderr
    assert await row_counts(backend) == EMPTY


@pytest.mark.parametrize("args", [
    ["enqueue", "echo", "--force"],
    ["status", str(uuid.UUID(int=1))],
    ["dead-letters", "count"],
    ["submit", "examples/workflow.yaml"],
])
async def test_an_unmigrated_database_says_run_shoal_migrate(dsn: str,
                                                             args: list[str]) -> None:
    result = await cli(*args, "--dsn", dsn)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("shoal: error: schema 'shoal' is missing or not up to date (")
    assert line.endswith("): run `shoal migrate`")
