"""What the chat benchmarks (``storm``, ``rooms``) share: the systems, their servers, the clients.

Every system is a chat server with logged-in users in groups: asgi_groups' ``MessagingView``,
Django Channels (``AuthMiddlewareStack``, sessions and users in a database), python-socketio
(its own auth on connect, rooms), or, for the storm, a raw ASGI app that only accepts and
echoes. A benchmark builds its users (:class:`Person`) and :class:`Options`; :func:`served`
starts one system's server in its own process (``python -m benchmarks.chat CONFIG``: the same
uvicorn configuration as the fan-out run), with a redis-server when the system needs one, and
yields its address and the logins the server issued, one per user, before any client connects.
The load generator is the ``websockets`` client in the driving process for every system; a
:class:`Dialect` says how a client logs in and frames its messages for each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .limits import raise_nofile
from .procs import free_port, kill, python, redis_server, spawn, wait_for_port

#: Seconds a server may take to set itself up (database, users, logins) before it listens.
SETUP_TIMEOUT = 300.0


class Person(NamedTuple):
    """A user of the chat: ``id``, ``name`` and the groups (rooms) they belong to."""

    id: int
    name: str
    groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class Options:
    """``presence``: announce joins and leaves to the user's groups; ``echo``: a direct message
    is also sent back to its sender; ``user_list`` (asgi_groups): hellos list every user."""

    presence: bool = True
    echo: bool = True
    user_list: bool = True


@dataclass(frozen=True, slots=True)
class ChatSystem:
    """One server under test: ``app`` (``raw``, ``groups``, ``channels``, ``socketio``),
    ``variant`` (the Channels layer, ``redis`` for the others' Redis variants, or ``nolist``),
    ``dialect`` of its clients, and how many handshakes in flight while filling a server."""

    name: str
    label: str
    app: str
    variant: str = ""
    dialect: str = "json"
    connect_batch: int = 200

    @property
    def redis(self) -> bool:
        return self.variant in ("redis", "pubsub")

    def unavailable(self) -> str | None:
        """Why this system cannot run here (a missing package or redis-server), or None."""
        needs = {"channels": ["channels", "django"], "socketio": ["socketio"]}.get(self.app, [])
        needs += ["redis"] if self.redis else []
        needs += ["channels_redis"] if self.app == "channels" and self.redis else []
        for module in needs:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        if self.redis and shutil.which("redis-server") is None:
            return "redis-server not found"
        return None


#: Channels' handshakes go 50 at a time (as in the fan-out run: its Redis layers' pools).
CHANNELS_BATCH = 50

SYSTEMS = {
    s.name: s
    for s in (
        ChatSystem("raw", "raw ASGI (accept, echo)", "raw", dialect="raw"),
        ChatSystem("raw-chat", "raw ASGI chat (dicts, no checks)", "raw", "chat"),
        ChatSystem("groups", "asgi_groups MessagingView (memory)", "groups"),
        ChatSystem("groups-nolist", "asgi_groups, hellos list no users", "groups", "nolist"),
        ChatSystem("groups-redis", "asgi_groups MessagingView (Redis)", "groups", "redis"),
        ChatSystem("channels", "Channels InMemoryChannelLayer", "channels", "memory", "json", 50),
        ChatSystem("channels-redis", "Channels RedisChannelLayer", "channels", "redis", "json", 50),
        ChatSystem(
            "channels-pubsub", "Channels RedisPubSubChannelLayer", "channels", "pubsub", "json", 50
        ),
        ChatSystem("socketio", "python-socketio (default manager)", "socketio", dialect="sio"),
        ChatSystem(
            "socketio-redis", "python-socketio AsyncRedisManager", "socketio", "redis", "sio"
        ),
    )
}


def choose(names: str, allowed: Iterable[str]) -> list[ChatSystem]:
    """The systems named in ``"a,b,…"``, each one of ``allowed``."""
    allowed = tuple(allowed)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(allowed)}")
    return [SYSTEMS[n] for n in wanted]


Row = dict[str, Any]


def run_rows(
    jobs: list[tuple[ChatSystem, Row, Callable[[], Coroutine[Any, Any, Row]]]],
    json_path: Path | None,
) -> list[Row]:
    """Run each job (a system, what identifies its row, the measurement) in turn; a system that
    cannot run or fails gets a row with its ``error`` and the run carries on. Each row is
    printed as JSON as it comes, and all are written to ``json_path``."""
    raise_nofile()
    rows = []
    for system, ident, job in jobs:
        reason = system.unavailable()
        row: Row
        if reason is not None:
            row = {"system": system.name, **ident, "error": f"skipped: {reason}"}
        else:
            try:
                row = asyncio.run(job())
            except Exception as exc:  # reported in the table; the next system still runs
                row = {"system": system.name, **ident, "error": f"failed: {exc!r}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2))
    return rows


def percentile_ms(ordered: list[float], p: float) -> float:
    """The ``p`` quantile of sorted seconds, in milliseconds (0 when empty)."""
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0


# -- the server process ------------------------------------------------------------------------


def raw_app() -> Any:
    """Accept every socket; echo text frames (the probes); nothing else."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif kind == "websocket.receive" and event.get("text") is not None:
                await send({"type": "websocket.send", "text": event["text"]})
            elif kind == "websocket.disconnect":
                return

    return app


def raw_chat_app(people: list[Person]) -> Any:
    """The least any ASGI app does for the chat, the floor under every system: the user id from
    a plain cookie (no signature, no store), rooms in a dict, JSON in and out, one ``send`` per
    recipient; no validation, no limits, no error handling."""
    rooms: dict[str, set[Any]] = {}
    sockets: dict[str, Any] = {}
    known = {str(p.id): p for p in people}
    ids = {p.name: str(p.id) for p in people}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        cookie = dict(scope["headers"]).get(b"cookie", b"").decode()
        person = known[cookie.partition("=")[2]]
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        sockets[str(person.id)] = send
        for group in person.groups:
            rooms.setdefault(group, set()).add(send)
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return
                message = json.loads(event["text"])
                kind = message["type"]
                out = {"type": kind, "from": person.name, "text": message["text"]}
                if kind == "Group":
                    out["group"] = message["group"]
                    targets = list(rooms.get(message["group"], ()))
                else:
                    targets = [sockets[ids[message["user_name"]]]]
                data = {"type": "websocket.send", "text": json.dumps(out)}
                for target in targets:
                    await target(data)
        finally:
            sockets.pop(str(person.id), None)
            for group in person.groups:
                rooms[group].discard(send)

    return app


def build(config: dict[str, Any]) -> tuple[Any, dict[int, str]]:
    """The ASGI app of ``config["system"]`` and the login (credential) of every user."""
    system = SYSTEMS[config["system"]]
    people = [Person(i, name, frozenset(groups)) for i, name, groups in config["people"]]
    options = Options(**config["options"])
    redis_url = config.get("redis")
    if system.app == "raw" and system.variant == "chat":
        return raw_chat_app(people), {p.id: f"user={p.id}" for p in people}
    if system.app == "raw":
        return raw_app(), {}
    if system.app == "groups":
        from .apps import chat_groups

        if system.variant == "nolist":
            options = Options(options.presence, options.echo, user_list=False)
        return chat_groups.create_app(people, options, redis_url), chat_groups.logins(people)
    if system.app == "channels":
        from .apps import chat_channels

        return chat_channels.create(people, options, system.variant, redis_url, config["db"])
    if system.app == "socketio":
        from .apps import chat_sio

        return chat_sio.create(people, options, redis_url)
    raise SystemExit(f"unknown system {system.name!r}")


def serve(config_path: Path) -> None:
    from .serve import DEFAULT_WS, run_asgi

    raise_nofile()
    config = json.loads(config_path.read_text())
    app, logins = build(config)
    out = Path(config["logins"])
    out.with_suffix(".tmp").write_text(json.dumps(logins))
    out.with_suffix(".tmp").rename(out)  # complete before the port opens
    run_asgi(app, "127.0.0.1", config["port"], DEFAULT_WS)


# -- the driving process -----------------------------------------------------------------------


@dataclass(slots=True)
class Served:
    """A running server: its process, where to connect, the logins, and the pids to measure."""

    system: ChatSystem
    proc: Any
    port: int
    logins: dict[int, str]
    pids: dict[str, int]
    #: Clients offer permessage-deflate, as browsers do (False: the server's compression off).
    compress: bool = True

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def served(
    system: ChatSystem, people: list[Person], options: Options, log: Path, *, compress: bool = True
) -> AsyncIterator[Served]:
    """Start ``system`` for ``people`` (and its redis-server); stop both on the way out."""
    redis_ctx = redis_server(log) if system.redis else contextlib.nullcontext(None)
    with tempfile.TemporaryDirectory(prefix="asgi-groups-chat-") as tmp:
        async with redis_ctx as redis:
            work = Path(tmp)
            port = free_port()
            config = {
                "system": system.name,
                "port": port,
                "people": [(p.id, p.name, sorted(p.groups)) for p in people],
                "options": asdict(options),
                "redis": redis[0] if redis else None,
                "logins": str(work / "logins.json"),
                "db": str(work / "db.sqlite3"),
            }
            (work / "config.json").write_text(json.dumps(config))
            proc = spawn(python("benchmarks.chat", str(work / "config.json")), log)
            try:
                await wait_for_port(port, proc, timeout=SETUP_TIMEOUT)
                issued = json.loads((work / "logins.json").read_text())
                logins = {int(k): v for k, v in issued.items()}
                pids = {"server": proc.pid} | ({"redis": redis[1]} if redis else {})
                yield Served(system, proc, port, logins, pids, compress)
            finally:
                kill(proc)


class Dialect:
    """How a client of one system opens its socket and frames messages (``json``: the
    asgi_groups messaging protocol, also spoken by the Channels consumer; ``raw``: the text as
    is; ``sio``: Socket.IO events). Every system's frames carry the same ``text`` field."""

    path = "/ws"

    async def open(self, served: Served, user_id: int) -> tuple[Any, list[str]]:
        """A logged-in socket, and any frames that arrived before it was ready."""
        login = served.logins.get(user_id)
        headers = {"Cookie": login} if login else None
        return await self._connect(served, headers), []

    async def _connect(self, served: Served, headers: dict[str, str] | None) -> Any:
        from websockets.asyncio.client import connect

        return await connect(
            served.base + self.path,
            origin=served.origin,  # type: ignore[arg-type]
            additional_headers=headers,
            open_timeout=120,
            ping_interval=None,
            max_queue=None,
            compression="deflate" if served.compress else None,
        )

    def group(self, group: str, text: str) -> str:
        return json.dumps({"type": "Group", "group": group, "text": text})

    def direct(self, user: str, text: str) -> str:
        return json.dumps({"type": "Direct", "user_name": user, "text": text})

    def lines(self, data: str) -> list[str]:
        """The messages in one frame (frames may join several with newlines)."""
        return data.split("\n")

    def text(self, line: str) -> str:
        """The ``text`` of a delivered chat message."""
        return str(json.loads(line)["text"])

    async def control(self, ws: Any, data: str) -> bool:
        """Answer a protocol frame (a ping); True if ``data`` was one."""
        return False


class RawDialect(Dialect):
    def group(self, group: str, text: str) -> str:
        return text


class SioDialect(Dialect):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket, the login in the connect packet's ``auth``."""

    path = "/socket.io/?EIO=4&transport=websocket"

    async def open(self, served: Served, user_id: int) -> tuple[Any, list[str]]:
        ws = await self._connect(served, None)
        early: list[str] = []
        opened = str(await ws.recv())
        if not opened.startswith("0{"):
            raise RuntimeError(f"no Engine.IO open packet: {opened[:80]!r}")
        await ws.send("40" + json.dumps({"token": served.logins[user_id]}))
        while True:
            data = str(await ws.recv())
            if data.startswith("40"):
                return ws, early
            if data.startswith("44"):
                raise RuntimeError(f"connect refused: {data[:200]}")
            if not await self.control(ws, data):
                early.append(data)

    def group(self, group: str, text: str) -> str:
        return "42" + json.dumps(["group", {"group": group, "text": text}])

    def direct(self, user: str, text: str) -> str:
        return "42" + json.dumps(["direct", {"user_name": user, "text": text}])

    def lines(self, data: str) -> list[str]:
        return [data]

    def text(self, line: str) -> str:
        return str(json.loads(line[2:])[1]["text"])

    async def control(self, ws: Any, data: str) -> bool:
        if data == "2":
            await ws.send("3")
            return True
        return False


DIALECTS: dict[str, Dialect] = {"json": Dialect(), "raw": RawDialect(), "sio": SioDialect()}


async def read(ws: Any, dialect: Dialect, early: list[str], on_line: Callable[[str], None]) -> None:
    """Every message ``ws`` receives (``early`` first) to ``on_line``, until it closes."""
    for data in early:
        for line in dialect.lines(data):
            on_line(line)
    with contextlib.suppress(Exception):
        async for data in ws:
            text = str(data)
            if await dialect.control(ws, text):
                continue
            for line in dialect.lines(text):
                on_line(line)


class Clients:
    """The logged-in sockets of one measurement and their readers; closed together on exit."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.dialect = DIALECTS[server.system.dialect]
        #: The open sockets by user id (the order of opening is not the order of the ids).
        self.socks: dict[int, Any] = {}
        self.readers: list[asyncio.Task[None]] = []

    async def open(self, user_id: int, on_line: Callable[[str], None]) -> Any:
        """A socket logged in as ``user_id``; every message it receives goes to ``on_line``."""
        ws, early = await self.dialect.open(self.server, user_id)
        self.socks[user_id] = ws
        self.readers.append(asyncio.create_task(read(ws, self.dialect, early, on_line)))
        return ws

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.socks.values()), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="one chat server (spawned by storm and rooms)")
    parser.add_argument("config", type=Path)
    serve(parser.parse_args().config)


if __name__ == "__main__":
    main()
