"""The ``asgi-groups`` command, run as a real process against a temporary SQLite file."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_groups.auth import SqlUserStore
from asgi_groups.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASGI_GROUPS_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "asgi_groups.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'users.sqlite3'}"


def test_users_and_groups_end_to_end(url: str) -> None:
    created = run("db", "create-all", "--url", url)
    assert created.returncode == 0, created.stderr
    assert "tables ready" in created.stdout

    ann_args = "users add ann --password pw-ann --group chat --group ops --first-name Ann --staff"
    ann = run(*ann_args.split(), "--url", url)
    assert ann.returncode == 0, ann.stderr
    assert "created user 'ann'" in ann.stdout and "chat, ops" in ann.stdout

    bob_env = {"ASGI_GROUPS_PASSWORD": "pw-bob"}
    bob = run("users", "add", "bob", "--group", "chat", "--url", url, env=bob_env)
    assert bob.returncode == 0, bob.stderr
    cy = run("users", "add", "cy", "--password-stdin", "--url", url, stdin="pw cy\n")
    assert cy.returncode == 0, cy.stderr

    duplicate = run("users", "add", "ann", "--password", "x", "--url", url)
    assert duplicate.returncode == 1
    assert duplicate.stderr == "error: user 'ann' already exists\n"

    users = run("users", "list", "--url", url)
    assert users.returncode == 0, users.stderr
    lines = users.stdout.splitlines()
    assert " ".join(lines[0].split()) == "ID USERNAME FIRST NAME ACTIVE STAFF SUPERUSER GROUPS"
    assert lines[1].split() == ["1", "ann", "Ann", "yes", "yes", "no", "chat,ops"]
    assert lines[2].split() == ["2", "bob", "yes", "no", "no", "chat"]
    assert lines[3].split() == ["3", "cy", "yes", "no", "no"]

    groups = run("groups", "list", "--url", url)
    assert groups.returncode == 0, groups.stderr
    assert [line.split() for line in groups.stdout.splitlines()] == [
        ["GROUP", "MEMBERS"],
        ["chat", "2"],
        ["ops", "1"],
    ]


async def test_users_added_by_the_cli_can_log_in(url: str) -> None:
    async with SqlUserStore(url) as store:
        await store.create_all()
    # main() runs its own event loop, so call it from a worker thread here.
    argv = ["users", "add", "ann", "--password", "s3cret", "--url", url]
    assert await asyncio.to_thread(main, argv) == 0
    async with SqlUserStore(url) as store:
        assert await store.authenticate("ann", "s3cret") is not None
        assert await store.authenticate("ann", "wrong") is None


def test_database_url_from_the_environment(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASGI_GROUPS_DATABASE_URL", url)
    monkeypatch.setenv("ASGI_GROUPS_PASSWORD", "pw")
    assert main(["db", "create-all"]) == 0
    assert main(["users", "add", "ann"]) == 0
    assert main(["users", "list"]) == 0
    assert "ann" in capsys.readouterr().out


def test_bad_url_is_a_one_line_usage_error() -> None:
    result = run("users", "list", "--url", "not a url")
    assert result.returncode == 2
    assert_one_line_error(result)
    assert "database URL" in result.stderr


@pytest.mark.parametrize("bad", ["nosuchdb://x", "sqlite:///sync.db", "mysql+nodriver://h/db"])
def test_unusable_url_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "list", "--url", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asgi-groups: error: ") and err.count("\n") == 1


def test_unreachable_database_is_an_operational_error() -> None:
    result = run("users", "list", "--url", "postgresql+asyncpg://u:hunter2@127.0.0.1:1/db")
    assert result.returncode == 1
    assert_one_line_error(result)
    assert "cannot reach the database" in result.stderr
    assert "hunter2" not in result.stderr


def test_missing_tables_say_to_run_create_all(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "list", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "asgi-groups db create-all" in err


def test_missing_password_is_a_usage_error(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ASGI_GROUPS_PASSWORD", raising=False)
    assert main(["users", "add", "ann", "--url", url]) == 2
    assert "password is required" in capsys.readouterr().err


def test_help_as_a_process() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("db", "users", "groups"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["db"],
        ["db", "create-all"],
        ["users"],
        ["users", "add"],
        ["users", "list"],
        ["groups"],
        ["groups", "list"],
    ],
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: asgi-groups")


@pytest.mark.parametrize("argv", [[], ["users"], ["nope"], ["users", "list", "--bogus"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_parser_takes_more_subcommands() -> None:
    parser = build_parser()

    def extra(args: argparse.Namespace) -> int:
        return 0

    parser.commands.add_parser("extra", help="run the demo").set_defaults(handler=extra)
    args = parser.parse_args(["extra"])
    assert (args.command, args.handler) == ("extra", extra)
