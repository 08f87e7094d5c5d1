"""The code base stays lint- and type-clean: ruff and mypy run as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["asgi_groups", "adapters", "examples", "tests", "benchmarks"]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean() -> None:
    existing = [s for s in SOURCES if (ROOT / s).exists()]
    result = run(sys.executable, "-m", "ruff", "check", *existing)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    existing = [s for s in SOURCES if (ROOT / s).exists()]
    result = run(sys.executable, "-m", "ruff", "format", "--check", *existing)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy")  # the files pyproject names: asgi_groups, adapters
    assert result.returncode == 0, result.stdout + result.stderr
