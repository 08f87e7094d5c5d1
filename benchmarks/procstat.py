"""What the harness reads from ``/proc``: CPU time, resident memory and socket send queues.

CPU time comes from ``/proc/<pid>/task/*/schedstat`` (first field: nanoseconds on the CPU),
summed over the process's threads: nanosecond resolution, unlike ``utime``'s clock ticks.
"""

from __future__ import annotations

import os


def cpu_ns(pid: int) -> int:
    """Total CPU time of every live thread of ``pid``, in nanoseconds (0 if it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited between listdir and open
    return total


def cpu_of(pids: dict[str, int]) -> dict[str, int]:
    return {name: cpu_ns(pid) for name, pid in pids.items()}


def rss_bytes(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tcp_send_queue(local_port: int, remote_port: int) -> int | None:
    """Bytes waiting in the send queue of the IPv4 socket ``local_port`` → ``remote_port``.

    Read from ``/proc/net/tcp`` (``tx_queue``), so one process can watch another's socket:
    the client uses it to see when the server's side of a stalled reader is full.
    """
    local, remote = f":{local_port:04X}", f":{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1].endswith(local) and fields[2].endswith(remote):
                    return int(fields[4].split(":")[0], 16)
    except OSError:
        return None
    return None
