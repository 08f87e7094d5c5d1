"""The documentation works: the site builds with ``mkdocs build --strict``, every ```python
block of README.md and docs/ runs, and every ``asgi-groups`` command shown in a shell block
exists. The conventions are in docs/CONTRIBUTING.md ("Code in the documentation").
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from asgi_groups.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: The Redis address the pages show; each run puts the suite's own redis-server in its place.
SHOWN_REDIS = "redis://127.0.0.1:6379/0"
#: Pages whose code cannot run as written yet, and why (strict: one that starts to run fails
#: the test until it is taken off this list).
NOT_RUNNABLE: dict[str, str] = {}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)")
HIDDEN = re.compile(r"^<!-- python\s*$")
SHELL = {"bash", "sh", "shell", "console"}
#: A command line's ``asgi-groups`` (after environment assignments), not a package name.
COMMAND = re.compile(
    r"(?:^|&&|;|\$)[ \t]*(?:\w+=\S*[ \t]+)*asgi-groups((?:[ \t]+[a-z][\w-]*)*)", re.M
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the first line of code, 1-based
    lang: str
    code: str
    hidden: bool = False


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, and its hidden ``<!-- python ... -->`` ones, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        hidden = HIDDEN.match(lines[i])
        if opening is None and hidden is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        if hidden is not None:
            while lines[i].strip() != "-->":
                body.append(lines[i])
                i += 1
            found.append(Block(page, start + 1, "python", "\n".join(body), hidden=True))
        else:
            assert opening is not None
            indent, fence = len(opening["indent"]), opening["fence"]
            while not lines[i].strip().startswith(fence):
                body.append(lines[i][indent:])
                i += 1
            found.append(Block(page, start + 1, opening["lang"].lower(), "\n".join(body)))
        i += 1
    return found


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Every logger as it was before: a page may configure logging (the JSON logs recipe
    stops ``asgi_groups`` propagating), which would blind later tests' ``caplog``."""
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    saved = [
        (lg, lg.level, lg.handlers[:], lg.filters[:], lg.propagate, lg.disabled) for lg in loggers
    ]
    try:
        yield
    finally:
        for g, level, handlers, filters, propagate, disabled in saved:
            g.setLevel(level)
            g.handlers[:], g.filters[:] = handlers, filters
            g.propagate, g.disabled = propagate, disabled


def run_page(page: Path, redis_url: str | None) -> None:
    """Run the page's python blocks in order in one namespace; a block with a top-level
    ``await`` runs on the page's event loop."""
    namespace: dict[str, object] = {"__name__": "docs_page"}
    with logging_restored(), asyncio.Runner() as runner:
        for block in blocks(page):
            if block.lang != "python":
                continue
            source = block.code
            if redis_url is not None:
                source = source.replace(SHOWN_REDIS, redis_url)
            code = compile(
                "\n" * (block.line - 1) + source,
                str(page),
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,
            )
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                runner.run(result)


RUNNABLE = [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=pytest.mark.xfail(reason=NOT_RUNNABLE[name(p)], strict=True))
        if name(p) in NOT_RUNNABLE
        else p
        for p in RUNNABLE
    ],
    ids=name,
)
def test_python_blocks_run(
    page: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # databases and files a page makes land here
    needs_redis = any(SHOWN_REDIS in b.code for b in blocks(page))
    redis_url = request.getfixturevalue("redis_url") if needs_redis else None
    run_page(page, redis_url)


def test_every_page_with_code_is_checked() -> None:
    names = {name(p) for p in RUNNABLE}
    assert {"README.md", "docs/quickstart.md", "docs/views.md"} <= names
    assert set(NOT_RUNNABLE) <= names


def shell_commands() -> list[tuple[str, ...]]:
    """Every ``asgi-groups <subcommand ...>`` of the pages' shell blocks, once each."""
    commands: dict[tuple[str, ...], None] = {}
    for page in PAGES:
        for block in blocks(page):
            if block.lang in SHELL:
                for match in COMMAND.finditer(block.code):
                    commands[tuple(match[1].split())] = None
    return list(commands)


@pytest.mark.parametrize("command", shell_commands(), ids=" ".join)
def test_shell_blocks_name_existing_commands(command: tuple[str, ...]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli([*command, "--help"])
    assert code == 0, f"asgi-groups {' '.join(command)} --help: {out.getvalue()}"


def test_site_builds_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's end-of-life banner
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "reference" / "registry" / "index.html").exists()
