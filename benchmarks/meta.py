"""The machine and software a run measured, for the header of RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys

PACKAGES = (
    "asgi-groups",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "picows",
    "django",
    "channels",
    "channels-redis",
    "python-socketio",
    "python-engineio",
    "redis",
    "hiredis",
)


def versions(redis_bin: str) -> dict[str, str]:
    out = {"Python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        text = subprocess.run(
            [redis_bin, "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        out["redis-server"] = next(
            (w.split("=", 1)[1] for w in text.split() if w.startswith("v=")), text.strip()
        )
    except (OSError, subprocess.SubprocessError):
        out["redis-server"] = "not found"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "python": sys.executable,
    }
