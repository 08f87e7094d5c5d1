"""Child-process entry that runs one system's server: ``python -m benchmarks.serve SYSTEM``.

Every ASGI system runs under the same uvicorn configuration (one worker, uvloop, httptools,
the same WebSocket implementation, keepalive pings off so idle sockets cost nothing); the
no-ASGI limit runs its own picows (or websockets) server on uvloop.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvloop

from .limits import raise_nofile

DEFAULT_WS = "websockets-sansio"


def build_app(system: str, redis_url: str | None) -> Any:
    """The ASGI app for ``system`` (see ``benchmarks.systems`` for the names)."""
    if system == "raw-asgi":
        from .apps import rawasgi

        return rawasgi.create_app()
    if system.startswith("recovery-"):  # benchmarks.recovery: history on and off
        from .apps import recoverable

        return recoverable.create_app(system.removeprefix("recovery-"), redis_url)
    if system.startswith("asgi_groups"):
        from .apps import groups

        return groups.create_app(redis_url, coalesce=system.endswith("coalesce"))
    if system.startswith("channels-"):
        from .apps import channels_app

        return channels_app.create_app(system.removeprefix("channels-"), redis_url)
    if system.startswith("socketio"):
        from .apps import sio

        return sio.create_app(redis_url)
    raise SystemExit(f"unknown system {system!r}")


def run_native(kind: str, host: str, port: int) -> None:
    if kind == "picows":
        from .apps.native import serve
    else:
        from .apps.native_websockets import serve
    uvloop.run(serve(host, port))


def run_asgi(app: Any, host: str, port: int, ws: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws=ws,
        lifespan="auto",
        log_level="warning",
        access_log=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=4096,
        workers=1,
    )
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis")
    parser.add_argument("--ws", default=DEFAULT_WS)
    args = parser.parse_args()
    raise_nofile()
    if args.system.startswith("native-"):
        run_native(args.system.removeprefix("native-"), args.host, args.port)
    else:
        run_asgi(build_app(args.system, args.redis), args.host, args.port, args.ws)


if __name__ == "__main__":
    main()
