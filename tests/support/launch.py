"""Start an ASGI server with the settings of :mod:`asgi_groups.servers`, as a deployment would.

``python -m tests.support.launch KIND TARGET FD_OR_PORT``: KIND is ``uvicorn-<ws>`` (``<ws>``
one of uvicorn's ``--ws`` implementations), ``hypercorn`` or ``granian``. uvicorn and hypercorn
serve the listening socket inherited as file descriptor FD (made by ``listen_socket``, so it
carries ``TCP_USER_TIMEOUT``); granian binds 127.0.0.1:PORT itself. ``LAUNCH_GRACE`` sets the
graceful-shutdown timeout in seconds.
"""

from __future__ import annotations

import os
import socket
import sys

from asgi_groups.servers import (
    GRACEFUL_SHUTDOWN_TIMEOUT,
    granian_options,
    hypercorn_options,
    uvicorn_options,
)

#: What the tests run, and how each is started.
KINDS = (
    "uvicorn-websockets",
    "uvicorn-websockets-sansio",
    "uvicorn-wsproto",
    "hypercorn",
    "granian",
)
#: Servers that take the library's listening socket (the others bind their own).
TAKES_SOCKET = {kind for kind in KINDS if kind != "granian"}


def main(kind: str, target: str, where: str) -> None:
    grace = int(os.environ.get("LAUNCH_GRACE", str(GRACEFUL_SHUTDOWN_TIMEOUT)))
    if kind.startswith("uvicorn-"):
        import uvicorn

        config = uvicorn.Config(
            target,
            ws=kind.removeprefix("uvicorn-"),
            log_level="warning",
            lifespan="on",
            **uvicorn_options(graceful_shutdown_timeout=grace),
        )
        uvicorn.Server(config).run(sockets=[socket.socket(fileno=int(where))])
    elif kind == "hypercorn":
        from hypercorn.config import Config
        from hypercorn.run import run

        sock = socket.socket(fileno=int(where))
        hyper = Config.from_mapping(hypercorn_options(sock, graceful_shutdown_timeout=grace))
        hyper.application_path = target
        hyper.loglevel = "WARNING"
        run(hyper)
    elif kind == "granian":
        from granian import Granian
        from granian.constants import Interfaces
        from granian.log import LogLevels

        Granian(
            target,
            address="127.0.0.1",
            port=int(where),
            interface=Interfaces.ASGI,
            log_level=LogLevels.warning,
            **granian_options(graceful_shutdown_timeout=grace),
        ).serve()
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
