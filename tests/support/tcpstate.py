"""Whether a server process still holds a TCP connection, read from /proc/net/tcp.

A server that closes (or aborts) a socket whose peer never reads may leave the kernel still
trying to deliver what was queued (FIN-WAIT-1): that socket belongs to no process any more, and
/proc/net/tcp shows it with inode 0. A server that still holds the socket shows its inode.
"""

from __future__ import annotations

import socket

#: /proc/net/tcp's hexadecimal state codes that matter here.
STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0B": "CLOSING",
}


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def server_side(server_port: int, client_port: int) -> tuple[str, int, int] | None:
    """The server end of the connection to ``client_port``: (state, send queue, inode), or None.

    Inode 0 means no process holds the socket any more (the kernel is finishing it alone).
    """
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if _port(local) == server_port and _port(remote) == client_port:
                send_queue = int(queues.split(":")[0], 16)
                return STATES.get(state, state), send_queue, int(fields[9])
    return None


def held_by_server(server_port: int, client_port: int) -> bool:
    """True while a process still owns the server end of the connection to ``client_port``."""
    row = server_side(server_port, client_port)
    return row is not None and row[2] != 0 and row[0] not in ("TIME_WAIT", "CLOSE")


def local_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
