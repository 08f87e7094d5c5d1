"""Recommended ASGI server settings, so that no client can pin a socket or the server's memory.

Plain ASGI cannot abort a transport: a server closes a socket by flushing what it has queued
first, and a client that never reads never lets that flush end. uvicorn and hypercorn then keep
the socket (and shutdown waits for it) until the kernel gives up on it, which without
``TCP_USER_TIMEOUT`` is never while the client's kernel still acknowledges the zero-window
probes. :func:`listen_socket` sets that option on the listening socket (accepted sockets
inherit it, Linux), so the kernel resets a connection whose sent data stays unacknowledged or
stuck behind a zero window for ``stalled_send_timeout`` seconds. granian drops the TCP
connection as soon as the app sends ``websocket.close``, so the library's 1013 close of a slow
reader already frees it.

The helpers only build settings (no server is imported here, except by :func:`run_uvicorn`):

- uvicorn: ``uvicorn.Config(app, **uvicorn_options())`` and ``Server(config).run(sockets=[sock])``
  with ``sock = listen_socket(host, port)``, or simply :func:`run_uvicorn`;
- hypercorn: ``Config.from_mapping(hypercorn_options(listen_socket(host, port)))``;
- granian: ``Granian(target, interface="asgi", **granian_options())`` (granian has no frame
  size setting and takes no listening socket: see docs/SECURITY.md).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from .limits import DEFAULT_MAX_INBOUND_SIZE

__all__ = [
    "GRACEFUL_SHUTDOWN_TIMEOUT",
    "MAX_FRAME_SIZE",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "STALLED_SEND_TIMEOUT",
    "granian_options",
    "hypercorn_options",
    "listen_socket",
    "run_uvicorn",
    "uvicorn_options",
]

logger = logging.getLogger("asgi_groups.servers")

#: Largest inbound WebSocket message the server itself buffers: the library's own inbound
#: limit (``WsView.max_message_size``), so a larger frame is refused (1009) before the server
#: has read it all into memory.
MAX_FRAME_SIZE = DEFAULT_MAX_INBOUND_SIZE
#: Seconds the kernel lets sent data stay unacknowledged, or wait behind a client's zero
#: receive window, before it resets the connection (``TCP_USER_TIMEOUT``): the bound on how
#: long a dead or never-reading client holds its socket once its buffers are full.
STALLED_SEND_TIMEOUT = 30.0
#: Seconds a graceful shutdown (SIGTERM) waits for open connections before the server cancels
#: them and exits (uvicorn ``timeout_graceful_shutdown``, hypercorn ``graceful_timeout``,
#: granian ``workers_kill_timeout``).
GRACEFUL_SHUTDOWN_TIMEOUT = 10
#: Seconds between the server's keepalive pings, and how long it waits for the pong before it
#: closes the socket with 1011 (a silent peer; a peer that never reads is the kernel's to end).
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0


def listen_socket(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    stalled_send_timeout: float = STALLED_SEND_TIMEOUT,
    backlog: int = 2048,
) -> socket.socket:
    """A bound, listening TCP socket whose connections the kernel resets when stalled.

    ``TCP_USER_TIMEOUT`` is set where the platform has it (Linux); elsewhere a warning is logged
    and a never-reading client is bounded only by the server's shutdown timeout.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
        if user_timeout is not None:
            milliseconds = max(1, round(stalled_send_timeout * 1000))
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, milliseconds)
        else:
            logger.warning("TCP_USER_TIMEOUT is not available: stalled sockets are not reset")
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def uvicorn_options(
    *,
    max_frame_size: int = MAX_FRAME_SIZE,
    ping_interval: float | None = PING_INTERVAL,
    ping_timeout: float | None = PING_TIMEOUT,
    graceful_shutdown_timeout: int = GRACEFUL_SHUTDOWN_TIMEOUT,
    compression: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` (any ``ws`` implementation).

    ``compression``: permessage-deflate, which every browser offers. Off by default: once used,
    it holds about 38 KB of compressor state per socket in the server and costs some 13 % of
    the CPU of a small message's delivery; worth it only for large, repetitive messages.
    """
    return {
        "ws_max_size": max_frame_size,
        "ws_ping_interval": ping_interval,
        "ws_ping_timeout": ping_timeout,
        "ws_per_message_deflate": compression,
        "timeout_graceful_shutdown": graceful_shutdown_timeout,
    }


def hypercorn_options(
    sock: socket.socket | None = None,
    *,
    max_frame_size: int = MAX_FRAME_SIZE,
    ping_interval: float | None = PING_INTERVAL,
    graceful_shutdown_timeout: float = GRACEFUL_SHUTDOWN_TIMEOUT,
) -> dict[str, Any]:
    """A mapping for ``hypercorn.config.Config.from_mapping``; binds to ``sock`` when given.

    hypercorn has no pong timeout: a peer that answers no ping is ended by the kernel, given
    ``sock`` from :func:`listen_socket`.
    """
    options: dict[str, Any] = {
        "websocket_max_message_size": max_frame_size,
        "websocket_ping_interval": ping_interval,
        "graceful_timeout": graceful_shutdown_timeout,
    }
    if sock is not None:
        options["bind"] = [f"fd://{sock.fileno()}"]
    return options


def granian_options(
    *, graceful_shutdown_timeout: int = GRACEFUL_SHUTDOWN_TIMEOUT
) -> dict[str, Any]:
    """Keyword arguments for ``granian.Granian`` (``--workers-kill-timeout`` on its command line).

    granian has no WebSocket frame size setting: it buffers up to 16 MiB per frame whatever
    the app's limit, so bound inbound frames in a proxy in front of it.
    """
    return {"workers_kill_timeout": graceful_shutdown_timeout}


def run_uvicorn(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    stalled_send_timeout: float = STALLED_SEND_TIMEOUT,
    **config: Any,
) -> None:
    """Serve ``app`` (an app or ``"module:attr"``) under uvicorn with the recommended settings.

    ``config``: more ``uvicorn.Config`` arguments, overriding :func:`uvicorn_options`.
    """
    import uvicorn  # the one server this module starts itself; optional (the demo extra)

    sock = listen_socket(host, port, stalled_send_timeout=stalled_send_timeout)
    options = uvicorn_options()
    options.update(config)
    try:
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
    finally:
        sock.close()
