"""A real redis-server for the Redis backend's tests, and a TCP proxy that can go silent.

The fixtures ``redis_server``, ``redis_url``, ``prefix`` and ``make`` are made available to
every test module by ``tests/conftest.py``; ``registries`` builds other ``make`` fixtures
(e.g. one on a TLS server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis

from .servers import free_port

if TYPE_CHECKING:
    from asgi_groups import Registry

T = TypeVar("T")

#: Short timings so the suite stays fast; production defaults are longer.
FAST: dict[str, Any] = {
    "health_check_interval": 0.5,
    "socket_timeout": 1.0,
    "connect_timeout": 1.0,
    "reconnect_backoff": (0.02, 0.3),
    "presence_ttl": 3.0,
}

#: Timings far longer than any test waits (``GUARD``): a test that must see a failure *without*
#: a timeout expiring uses these, so finishing within ``GUARD`` proves it, on any machine.
PATIENT: dict[str, Any] = {**FAST, "socket_timeout": 600.0, "connect_timeout": 600.0}
#: How long a test waits for something that must not need a timeout: a hang guard only.
GUARD = 60.0

MakeRegistry = Callable[..., Awaitable["Registry"]]


class RedisServer:
    """One ``redis-server`` child on a fixed port: ``kill()`` (SIGKILL) and ``restart()``."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        cmd += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            with contextlib.suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} not answering: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: sockets drop at once, nothing is saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """Start again on the same port (empty: nothing was saved)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **options: Any) -> redis.Redis:
        """A plain sync client for assertions (string replies)."""
        options.setdefault("socket_timeout", 2.0)
        options.setdefault("socket_connect_timeout", 2.0)
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **options)

    def clients(self, name_prefix: str) -> list[dict[str, Any]]:
        """``CLIENT LIST`` entries whose name starts with ``name_prefix``."""
        with self.client() as client:
            entries: list[dict[str, Any]] = client.client_list()
        return [c for c in entries if str(c.get("name", "")).startswith(name_prefix)]

    def numsub(self, channel: str) -> int:
        with self.client() as client:
            result = client.pubsub_numsub(channel)
        return int(result[0][1])

    def log_tail(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def sentinel_for(server: RedisServer, service: str = "mymaster") -> Iterator[int]:
    """A Redis Sentinel (``redis-server --sentinel``) watching ``server``; yields its port."""
    port = free_port()
    config = server.workdir / f"sentinel-{port}.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {server.workdir}\n"
        f"sentinel monitor {service} 127.0.0.1 {server.port} 1\n"
        f"sentinel down-after-milliseconds {service} 60000\n"
    )
    proc = subprocess.Popen(
        [server.binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as sentinel:
                if sentinel.sentinel_get_master_addr_by_name(service):
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis sentinel did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session (skips when the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    server = RedisServer(binary, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL, restarted first if an earlier test left it dead."""
    if not redis_server.running:
        redis_server.start()
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A key/channel prefix no other test uses."""
    return "t" + uuid.uuid4().hex[:10]


@contextlib.asynccontextmanager
async def registries(url: str, **defaults: Any) -> AsyncIterator[MakeRegistry]:
    """A ``make(url=None, **options)`` that starts registries on ``url`` (or another URL) with
    ``defaults`` under the test's options; every registry it made is closed on exit, newest
    first."""
    from asgi_groups import Registry

    made: list[Registry] = []

    async def make(other_url: str | None = None, **options: Any) -> Registry:
        registry = Registry(other_url or url, **{**defaults, **options})
        await registry.start()
        made.append(registry)
        return registry

    try:
        yield make
    finally:
        for registry in reversed(made):
            await registry.close()


@pytest.fixture
async def make(redis_url: str, prefix: str) -> AsyncIterator[MakeRegistry]:
    """Start Redis-backed registries on the test's prefix with ``FAST`` timings; all are closed
    afterwards. ``await make()``, ``await make(other_url, listen=False)``."""
    async with registries(redis_url, prefix=prefix, **FAST) as factory:
        yield factory


def child_env(url: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a child process running a ``tests.redis_apps`` app or a script."""
    env = dict(os.environ)
    env.update(ASGI_GROUPS_REDIS_URL=url, ASGI_GROUPS_PREFIX=prefix)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p
    )
    return env


class PausableProxy:
    """A TCP proxy to Redis that can stop forwarding without closing anything (a half-open link).

    While paused, bytes are read but held; connections stay open in both directions.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def pause(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()


class Inbox:
    """An ASGI ``send`` for ``Registry.connect`` that keeps what the connection writes."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __call__(self, message: Any) -> None:
        self.queue.put_nowait(dict(message))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    async def text(self, timeout: float = 5.0) -> str:
        message = await self.next(timeout)
        assert message.get("text") is not None, message
        return str(message["text"])

    async def close_code(self, timeout: float = 5.0) -> int:
        message = await self.next(timeout)
        assert message["type"] == "websocket.close", message
        return int(message["code"])

    def empty(self) -> bool:
        return self.queue.empty()


class WsClient:
    """A websocket client of ``tests.redis_apps.groups_app``: commands, replies, deliveries."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.inbox: list[str] = []
        #: Causes of the "you may have missed messages" notices received.
        self.missed: list[str] = []
        self.id = ""

    @classmethod
    async def open(cls, address: str, user: str, groups: tuple[str, ...] = ()) -> WsClient:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://{address}/ws?user={user}&groups={','.join(groups)}")
        client = cls(ws)
        client.id = (await client.reply("ready"))["id"]
        return client

    async def command(self, op: str, **args: Any) -> dict[str, Any]:
        await self.ws.send(json.dumps({"op": op, **args}))
        return await self.reply(op)

    async def reply(self, op: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv()
                if self._missed(frame):
                    continue
                if isinstance(frame, str) and frame.startswith('{"reply"'):
                    body: dict[str, Any] = json.loads(frame)
                    if body["reply"] == op:
                        return body
                    raise AssertionError(f"expected a reply to {op!r}, got {body!r}")
                self.inbox.append(frame)

    async def message(self, timeout: float = 5.0) -> str:
        """The next delivered message (not a reply, not a missed-messages notice)."""
        if self.inbox:
            return self.inbox.pop(0)
        async with asyncio.timeout(timeout):
            while self._missed(frame := await self.ws.recv()):
                pass
        assert not (isinstance(frame, str) and frame.startswith('{"reply"')), frame
        return str(frame)

    def _missed(self, frame: Any) -> bool:
        if isinstance(frame, str) and frame.startswith('{"missed"'):
            self.missed.append(json.loads(frame)["missed"])
            return True
        return False

    async def close(self) -> None:
        await self.ws.close()


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 5.0
) -> T:
    """Await ``probe()`` every 20 ms until ``check`` accepts its result; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not check(result := await probe()):  # noqa: ASYNC110 - state in another process
            await asyncio.sleep(0.02)
    return result


async def user(registry: Registry, user_id: object) -> tuple[Any, Inbox]:
    """Connect ``user<user_id>`` to ``registry`` with an ``Inbox``: (connection, inbox)."""
    from asgi_groups import SimpleUser

    inbox = Inbox()
    conn = await registry.connect(inbox, SimpleUser(user_id, f"user{user_id}"))
    return conn, inbox
