"""Child-process entry that runs one system's server: ``python -m benchmarks.serve SYSTEM``.

Every ASGI system runs under the same uvicorn configuration (one worker, uvloop, httptools,
the same WebSocket implementation, keepalive pings off so idle sockets cost nothing); the
no-ASGI limit runs its own picows (or websockets) server on uvloop.

``SYSTEM@SERVER`` (the fan-out benchmark's ``--servers``) runs the system's app under one of
:data:`benchmarks.systems.SERVERS` instead, configured as ``asgi_groups.servers`` recommends
(its listening socket, frame limit and shutdown timeout) with keepalive pings off; see
:func:`run_server`.
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


#: ``uvicorn.Config`` arguments every uvicorn of the benchmarks shares (with ``ws``).
UVICORN: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "auto",
    "log_level": "warning",
    "access_log": False,
    "ws_ping_interval": None,
    "ws_ping_timeout": None,
    "workers": 1,
}


def run_asgi(app: Any, host: str, port: int, ws: str) -> None:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, ws=ws, backlog=4096, **UVICORN)
    uvicorn.Server(config).run()


def run_server(server: str, app: Any, host: str, port: int) -> None:
    """``app`` under ``server`` (a name from :data:`benchmarks.systems.SERVERS`), on uvloop."""
    if server.startswith("uvicorn-"):
        from asgi_groups.servers import run_uvicorn

        run_uvicorn(app, host, port, ws=server.removeprefix("uvicorn-"), **UVICORN)
    elif server == "hypercorn":
        run_hypercorn(app, host, port)
    elif server == "granian":
        run_granian(app, host, port)
    else:
        raise SystemExit(f"unknown server {server!r}")


def run_hypercorn(app: Any, host: str, port: int) -> None:
    """hypercorn's asyncio worker on uvloop (what its ``uvloop`` worker class runs), bound to
    ``asgi_groups.servers.listen_socket``; ``mode="asgi"`` because Python 3.11's ``inspect``
    cannot tell that ``GroupsMiddleware`` is an ASGI app."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from asgi_groups.servers import hypercorn_options, listen_socket

    sock = listen_socket(host, port)
    options = hypercorn_options(sock, ping_interval=None)
    sock.detach()  # hypercorn's own socket object takes the descriptor over (fd://)
    config = Config.from_mapping(options, loglevel="WARNING", accesslog=None, errorlog="-")
    uvloop.run(serve(app, config, mode="asgi"))


def run_granian(app: Any, host: str, port: int) -> None:
    """granian's ASGI interface (lifespan on), one worker, as its embedded server: the worker
    runs in this process, so its CPU time is counted like every other server's (a standalone
    granian starts its worker as a child process). ``granian_options`` (the workers' kill
    timeout) has nothing to set here, and granian has neither a frame limit nor pings."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        log_level=LogLevels.warning,
        backlog=2048,  # listen_socket's, which the other servers get
    )
    uvloop.run(server.serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis")
    parser.add_argument("--ws", default=DEFAULT_WS)
    args = parser.parse_args()
    raise_nofile()
    system, _, server = args.system.partition("@")
    if system.startswith("native-"):
        run_native(system.removeprefix("native-"), args.host, args.port)
    elif server:
        run_server(server, build_app(system, args.redis), args.host, args.port)
    else:
        run_asgi(build_app(args.system, args.redis), args.host, args.port, args.ws)


if __name__ == "__main__":
    main()
