"""A client that never reads is cut off, and cannot hold up shutdown, on every supported server.

Each server runs in its own process with the settings of :mod:`asgi_groups.servers` (started by
``tests.support.launch``), serving ``tests.support.slow_app``, which pushes a steady feed to
every socket. A raw client completes the handshake with a tiny receive buffer and then never
reads. Whether the server still holds its socket is read from /proc/net/tcp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from asgi_groups import codes
from asgi_groups.limits import MiB
from asgi_groups.servers import listen_socket

from .support.hostile import rss_bytes
from .support.launch import KINDS, TAKES_SOCKET
from .support.rawclient import RawClient
from .support.servers import free_port, wait_for_port
from .support.tcpstate import held_by_server, local_port, server_side

ROOT = str(Path(__file__).resolve().parents[1])
TARGET = "tests.support.slow_app:app"

#: The named settings the servers run with here (shorter than the defaults, same mechanism).
CLOSE_TIMEOUT = 1.0  # QueueLimits.close_timeout
STALLED_SEND_TIMEOUT = 3.0  # listen_socket(stalled_send_timeout=...)
GRACE = 2  # the graceful-shutdown timeout of each server
#: Room for a loaded machine: filling the never-reader's buffers, starting, scheduling.
SLACK = 12.0
#: The documented bound: the slow reader's socket is gone within the stall timeout (the
#: kernel resets it) or the close timeout (granian drops it on the 1013 close), plus slack.
DROP_BOUND = max(STALLED_SEND_TIMEOUT, CLOSE_TIMEOUT) + SLACK
#: SIGTERM with a never-reading client connected: the graceful timeout (or, sooner, the
#: kernel's reset of the stalled socket), plus slack.
SHUTDOWN_BOUND = min(GRACE, STALLED_SEND_TIMEOUT) + SLACK
#: Frames the well-behaved client must still receive once the slow reader is gone.
MORE_FRAMES = 20
#: The oversized inbound frame, and how much of it the server's memory may gain at most.
HUGE_FRAME = 15 * MiB
RSS_BOUND = HUGE_FRAME // 3
#: A hang guard for steps that end on an event, not a timing bound.
GUARD = 30.0

pytestmark = pytest.mark.timeout(90)


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.address}"

    def worker_pid(self) -> int:
        """The process that serves sockets: the server itself, or granian's one worker."""
        if self.kind != "granian":
            return self.proc.pid
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as children:
            pids = children.read().split()
        assert len(pids) == 1, pids
        return int(pids[0])


@contextlib.contextmanager
def launched(kind: str, **env: str) -> Iterator[Server]:
    """Run ``slow_app`` under ``kind`` in a child process with the recommended settings."""
    child_env = dict(os.environ, PYTHONPATH=ROOT, LAUNCH_GRACE=str(GRACE))
    child_env.update({"SLOW_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT), "SLOW_INTERVAL": "0.01"})
    child_env.update(env)
    cmd = [sys.executable, "-m", "tests.support.launch", kind, TARGET]
    with contextlib.ExitStack() as stack:
        if kind in TAKES_SOCKET:  # the server takes the listening socket made here
            sock = listen_socket("127.0.0.1", 0, stalled_send_timeout=STALLED_SEND_TIMEOUT)
            stack.enter_context(sock)
            port, where, fds = int(sock.getsockname()[1]), sock.fileno(), [sock.fileno()]
        else:
            port = free_port()
            where, fds = port, []
        proc = subprocess.Popen(
            [*cmd, str(where)],
            pass_fds=fds,
            env=child_env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for_port(port, proc=proc)
        yield Server(kind, port, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def never_reader(server: Server) -> RawClient:
    """A client that completed the handshake and will never read again."""
    client = RawClient(server.address, origin=server.origin)
    await client.connect()
    return client


async def until(condition: object, what: str, bound: float) -> float:
    """Poll ``condition()`` every 20 ms until true; the seconds it took (fails past ``bound``)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        elapsed = time.monotonic() - start
        assert elapsed < bound, f"{what}: not after {elapsed:.1f}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_kinds_cover_the_supported_servers() -> None:
    assert {"uvicorn-websockets", "uvicorn-wsproto", "hypercorn", "granian"} <= set(KINDS)


#: uvicorn's other implementations (its legacy ``websockets``, and ``wsproto``, which keeps the
#: suite inside its time): opt-in, ``-m soak``; its default, websockets-sansio, always runs.
OPT_IN = ("uvicorn-websockets", "uvicorn-wsproto")


def marked(kind: str, *marks: pytest.MarkDecorator) -> Any:
    """``kind`` as a parameter, opt-in for uvicorn's non-default implementations."""
    return pytest.param(kind, marks=(*marks, pytest.mark.soak) if kind in OPT_IN else marks)


@pytest.mark.parametrize("kind", [marked(k) for k in KINDS])
async def test_never_reader_is_dropped_others_served_sigterm_bounded(kind: str) -> None:
    """The never-reading client's socket leaves the server process within ``DROP_BOUND``; a
    reading client on the same server keeps receiving; SIGTERM with another never-reader
    connected ends the process within ``SHUTDOWN_BOUND``."""
    with launched(kind) as server:
        async with connect(f"ws://{server.address}/ws", max_size=MiB) as reader:
            received: list[int] = []

            async def read() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in reader:
                        received.append(int(str(frame).partition("|")[0]))

            reading = asyncio.create_task(read())
            await until(lambda: received, "the reader's first frame", GUARD)

            slow = await never_reader(server)
            slow_port = local_port(slow.sock)  # type: ignore[arg-type]
            await until(lambda: held_by_server(server.port, slow_port), "accepted", GUARD)
            took = await until(
                lambda: not held_by_server(server.port, slow_port),
                "slow reader dropped",
                DROP_BOUND,
            )
            seen = len(received)
            await until(lambda: len(received) >= seen + MORE_FRAMES, "reader served", GUARD)
            assert not reading.done()
            assert received == list(range(received[0], received[0] + len(received)))

            # reading now, the client finds the end (EOF or reset), after the 1013 if it got there
            with contextlib.suppress(ConnectionError):
                await slow.read_all(GUARD)
            assert slow.close_code in (None, codes.TRY_AGAIN_LATER)
            slow.close()

            stuck = await never_reader(server)
            stuck_port = local_port(stuck.sock)  # type: ignore[arg-type]

            queued: list[int] = []

            def backed_up() -> bool:
                """The kernel's send queue to it is full: stopped growing, past 256 KiB."""
                row = server_side(server.port, stuck_port)
                queued.append(row[1] if row else 0)
                return queued[-1] > 256 * 1024 and len(set(queued[-10:])) == 1

            await until(backed_up, "the second never-reader's send queue filled", GUARD)
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(server.proc.wait, SHUTDOWN_BOUND)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{kind} still running {SHUTDOWN_BOUND}s after SIGTERM")
            stopped = time.monotonic() - start
            stuck.close()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    print(f"{kind}: dropped after {took:.1f}s, SIGTERM took {stopped:.1f}s")


async def send_huge_frame(client: RawClient) -> None:
    """Write one ``HUGE_FRAME``-byte binary frame, stopping quietly when the server hangs up."""
    client.protocol.send_frame(Frame(Opcode.BINARY, b"\0" * HUGE_FRAME))
    with contextlib.suppress(ConnectionError):
        await client.flush()


async def peak_rss(pid: int, stop: asyncio.Event) -> int:
    """The largest resident set of ``pid`` seen every 10 ms until ``stop``."""
    peak = rss_bytes(pid)
    while not stop.is_set():
        peak = max(peak, rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)
    return max(peak, rss_bytes(pid))


GRANIAN_BUFFERS = pytest.mark.xfail(
    strict=True, reason="granian has no frame size setting: it reads up to 16 MiB per frame"
)


@pytest.mark.parametrize(
    "kind", [marked(k, GRANIAN_BUFFERS) if k == "granian" else marked(k) for k in KINDS]
)
async def test_oversized_frame_refused_without_buffering_it(kind: str) -> None:
    """A 15 MiB frame gets 1009 (or the connection closed) while the server's resident set
    grows by less than a third of it: the server's own limit is the library's 64 KiB."""
    with launched(kind, SLOW_INTERVAL="3600") as server:
        client = await never_reader(server)
        pid = server.worker_pid()
        before = rss_bytes(pid)
        stop = asyncio.Event()
        sampling = asyncio.create_task(peak_rss(pid, stop))
        sending = asyncio.create_task(send_huge_frame(client))
        with contextlib.suppress(ConnectionError):
            await client.read_all(GUARD)  # until the close frame or the connection's end
        stop.set()
        peak = await sampling
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        client.close()
    assert client.close_code in (None, codes.MESSAGE_TOO_BIG)
    assert peak - before < RSS_BOUND, f"{kind}: RSS grew by {(peak - before) / MiB:.1f} MiB"
