"""Fault runs: two server processes on one redis-server, tagged chat traffic, then a fault.

:func:`run_fault` starts ``tests.redis_apps.fault_chat_app`` twice (process ``A`` on the host,
process ``B`` on the host or, for a partition, in a network namespace), connects recording
clients to both, sends tagged messages at a fixed total rate, applies one fault (Redis
SIGKILLed and restarted, SIGSTOPped and continued, or ``B`` silently cut off from it), keeps the
traffic going a while, and returns a :class:`FaultReport`: per intended recipient and per tag,
delivered / lost / duplicated, who was told, which close codes, when delivery resumed and when
the processes noticed. :meth:`FaultReport.failures` lists the acceptance criteria it misses.

Every time is wall-clock (``time.time()``), so that the server processes' own hook times can be
compared with the clients'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .netns import Namespace, namespace
from .redis import RedisServer, child_env
from .servers import free_port, stop_process

__all__ = [
    "APP",
    "GROUP",
    "ChatClient",
    "FaultRedis",
    "FaultReport",
    "Scenario",
    "ServerProcess",
    "poll_until",
    "run_fault",
    "servers_on",
]

APP = "tests.redis_apps.fault_chat_app:app"
GROUP = "room"
#: Close codes that tell a client it may have missed messages (it resumes, or is told why not).
NOTICE_CODES = frozenset({1012, 1013})
#: Close codes after which a client does not come back.
TERMINAL_CODES = frozenset({1008, 4401, 4403})
#: Close codes that must never happen in a fault run.
FORBIDDEN_CODES = frozenset({4408, 4429})
#: Chat message types (``ChatMessage.type``).
CHAT_TYPES = frozenset({"group", "direct", "broadcast"})
#: Frame types a client expects that are not news about missed messages.
ORDINARY = (
    frozenset({"ack", "hello", "error", "ag.message", "ag.welcome", "ag.history"}) | CHAT_TYPES
)


# -- Redis and the server processes ------------------------------------------------------------


class FaultRedis(RedisServer):
    """A ``RedisServer`` that also binds ``extra_bind`` and can be frozen (SIGSTOP)."""

    def __init__(self, binary: str, port: int, workdir: Path, extra_bind: list[str]) -> None:
        super().__init__(binary, port, workdir)
        self.extra_bind = extra_bind

    def start(self, timeout: float = 10.0) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *self.extra_bind]
        cmd += ["--protected-mode", "no", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.workdir)]
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            with contextlib.suppress(Exception), self.client() as client:
                if client.ping():
                    return
            time.sleep(0.01)
        raise TimeoutError(f"redis-server on port {self.port} not answering")

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()  # a frozen server would never act on SIGTERM
        super().stop()

    def log_text(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


class ServerProcess:
    """A uvicorn child (optionally inside a namespace); its output goes to ``log_path``."""

    def __init__(
        self,
        label: str,
        target: str,
        env: dict[str, str],
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        ns: Namespace | None = None,
    ) -> None:
        self.label = label
        self.target = target
        self.env = env
        self.log_path = log_path
        self.host = host
        self.ns = ns
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        cmd = [*(self.ns.exec_prefix if self.ns else []), sys.executable, "-m", "uvicorn"]
        cmd += [self.target, "--host", self.host, "--port", str(self.port)]
        cmd += ["--log-level", "warning"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.log()[-3000:]}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.label} not listening on {self.address}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def state(self) -> dict[str, Any]:
        """``GET /state`` of the fault app (empty when the process does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                response = await http.get(f"http://{self.address}/state")
                return dict(response.json())
        except (httpx.HTTPError, ValueError):
            return {}


@contextlib.contextmanager
def servers_on(
    redis: FaultRedis,
    workdir: Path,
    prefix: str,
    *,
    target: str = APP,
    ns: Namespace | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Processes ``A`` (host) and ``B`` (in ``ns`` if given) of ``target`` on ``redis``."""
    extra = env or {}
    url_b = f"redis://{ns.redis_host}:{redis.port}/0" if ns else redis.url
    a = ServerProcess("A", target, child_env(redis.url, prefix, **extra), workdir / "server-A.log")
    b = ServerProcess(
        "B",
        target,
        child_env(url_b, prefix, **extra),
        workdir / "server-B.log",
        host=ns.client_host if ns else "127.0.0.1",
        ns=ns,
    )
    for name, server in (("CHAT_REDIS_URL", a), ("CHAT_REDIS_URL", b)):
        server.env[name] = server.env["ASGI_GROUPS_REDIS_URL"]
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


# -- a recording client -------------------------------------------------------------------------


@dataclass
class Event:
    """Something a client saw that is not a chat delivery: a close, a welcome, a frame."""

    t: float
    kind: str  # "close", "welcome", "frame", "connect_failed", "open"
    detail: Any


@dataclass
class Sent:
    """One tagged message a client sent, and what its sender was told about it."""

    tag: str
    kind: str  # "group", "direct", "broadcast"
    sender: str
    process: str
    t: float
    recipients: frozenset[str]
    errors: list[dict[str, Any]] = field(default_factory=list)
    acked: bool = False
    cut: bool = False  # the sender's socket closed before the message was answered


@dataclass
class Delivery:
    t: float
    tag: str
    channel: str
    epoch: str | None
    offset: int | None
    after_reconnect: bool


class ChatClient:
    """One user's tab: connects, resumes with its positions, reconnects after a close, and
    records every frame (deliveries by tag, everything else as an :class:`Event`)."""

    def __init__(self, name: str, user_id: int, process: str, address: str) -> None:
        self.name = name
        self.user_id = user_id
        self.process = process
        self.address = address
        self.deliveries: list[Delivery] = []
        self.events: list[Event] = []
        self.positions: dict[str, dict[str, Any]] = {}
        self.welcomed = asyncio.Event()
        self.stopping = False
        self.stopped_by: int | None = None
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._pending: deque[Sent] = deque()  # sent on this socket, not yet acked
        self._errors: list[dict[str, Any]] = []  # error frames since the last ack
        self._by_tag: dict[str, Sent] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"client {self.name}")

    async def stop(self) -> None:
        self.stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 3)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    @property
    def online(self) -> bool:
        return self._ws is not None and self.welcomed.is_set()

    async def send(self, sent: Sent, body: dict[str, Any]) -> bool:
        """Send a chat frame; False when there is no open, welcomed socket to send it on."""
        ws = self._ws
        if ws is None or not self.welcomed.is_set():
            return False
        self._pending.append(sent)
        self._by_tag[sent.tag] = sent
        try:
            await ws.send(json.dumps(body))
        except ConnectionClosed:  # not sent (the socket may have been cleared meanwhile)
            if sent in self._pending:
                self._pending.remove(sent)
            return False
        return True

    async def _run(self) -> None:
        delay = 0.1
        while not self.stopping:
            try:
                async with connect(
                    f"ws://{self.address}/ws",
                    origin=f"http://{self.address}",  # type: ignore[arg-type]
                    additional_headers={"Cookie": f"session={self.user_id}"},
                    open_timeout=5,
                    max_queue=None,
                    max_size=None,
                ) as ws:
                    self.connections += 1
                    self.events.append(Event(time.time(), "open", self.connections))
                    await ws.send(json.dumps({"type": "ag.hello", "positions": self.positions}))
                    self._ws = ws
                    delay = 0.1
                    async for data in ws:
                        self._take(str(data))
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                reason = exc.rcvd.reason if exc.rcvd else ""
                self.events.append(Event(time.time(), "close", {"code": code, "reason": reason}))
                if code in TERMINAL_CODES:
                    self.stopped_by = code
                    return
                if code in FORBIDDEN_CODES:
                    delay = 2.0  # as the official clients: the maximum backoff
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.events.append(Event(time.time(), "connect_failed", repr(exc)[:200]))
            else:
                if not self.stopping:
                    self.events.append(Event(time.time(), "close", {"code": 1000, "reason": ""}))
            finally:
                self._closed()
            if self.stopping:
                return
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _closed(self) -> None:
        self._ws = None
        self.welcomed.clear()
        for sent in self._pending:
            sent.cut = True
            sent.errors.extend(self._errors)
        self._pending.clear()
        self._errors = []

    def _take(self, data: str) -> None:
        now = time.time()
        for line in data.split("\n"):
            if line.strip():
                self._frame(now, json.loads(line))

    def _frame(self, now: float, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ag.message":
            self._message(now, frame)
        elif kind == "ag.welcome":
            for channel, status in frame.get("channels", {}).items():
                if "epoch" in status:
                    self.positions[channel] = {"epoch": status["epoch"], "offset": status["offset"]}
            self.events.append(Event(now, "welcome", frame))
            self.welcomed.set()
        elif kind == "ack":
            self._ack(frame.get("id"))
        elif kind in CHAT_TYPES and isinstance(frame.get("text"), str):  # not in an envelope
            self.deliveries.append(Delivery(now, frame["text"], f"raw:{kind}", None, None, False))
            self.events.append(Event(now, "frame", frame))
        elif kind == "error":
            target = self._by_tag.get(str(frame.get("id")))
            if target is not None and frame.get("id") is not None:
                target.errors.append(frame)
            else:
                self._errors.append(frame)
            self.events.append(Event(now, "frame", frame))
        else:
            self.events.append(Event(now, "frame", frame))

    def _ack(self, tag: Any) -> None:
        while self._pending:
            sent = self._pending.popleft()
            if sent.tag == tag:
                sent.acked = True
                sent.errors.extend(e for e in self._errors if e not in sent.errors)
                self._errors = []
                return

    def _message(self, now: float, frame: dict[str, Any]) -> None:
        data = frame.get("data")
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                data = json.loads(data)
        channel = str(frame.get("channel"))
        if "epoch" in frame:
            self.positions[channel] = {"epoch": frame["epoch"], "offset": frame["offset"]}
        tag = None
        if isinstance(data, dict):
            tag = data.get("tag") if data.get("type") == "bulk" else data.get("text")
        if tag is None:
            self.events.append(Event(now, "frame", frame))
            return
        self.deliveries.append(
            Delivery(
                now,
                str(tag),
                channel,
                frame.get("epoch"),
                frame.get("offset"),
                self.connections > 1,
            )
        )

    def notices(self) -> list[float]:
        """Times this client was told it may have missed messages: a close with 1012 / 1013,
        a welcome that did not recover, or a frame of a type it does not know."""
        return [event.t for event in self.events if self._is_notice(event)]

    def _is_notice(self, event: Event) -> bool:
        if event.kind == "close":
            return bool(event.detail["code"] in NOTICE_CODES)
        if event.kind == "welcome":
            return self._unrecovered(event.detail)
        return event.kind == "frame" and event.detail.get("type") not in ORDINARY

    @staticmethod
    def _unrecovered(welcome: dict[str, Any]) -> bool:
        reasons = {
            status.get("reason")
            for status in welcome.get("channels", {}).values()
            if not status.get("recovered", True)
        }
        return bool(reasons - {"no position", None})


# -- the run -----------------------------------------------------------------------------------


Fault = Literal["kill", "stop", "partition"]


@dataclass(frozen=True)
class Scenario:
    """One fault run: which fault, how long, how many clients per process."""

    name: str
    fault: Fault
    duration: float
    clients_per_process: int = 4
    rate: float = 50.0  # messages per second, in total
    warmup: float = 2.0
    settle: float = 6.0  # traffic goes on this long after the fault's end
    deaf_bound: float = 10.0  # a deaf process's clients are told (or recovered) by then
    resume_bound: float = 1.0
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class RecipientFigures:
    delivered: int = 0
    lost_sender_told: int = 0
    lost_recipient_told: int = 0
    lost_silent: int = 0
    duplicated: int = 0


@dataclass
class FaultReport:
    """What one fault run measured (times in seconds, relative to the fault's start / end)."""

    scenario: Scenario
    sent: int = 0
    not_sent_offline: int = 0
    intended: int = 0
    delivered: int = 0
    lost: int = 0
    lost_sender_told: int = 0
    lost_recipient_told: int = 0
    lost_silent: int = 0
    duplicated: int = 0
    sender_errors: int = 0
    error_delivered_field: dict[str, int] = field(default_factory=dict)
    claimed_not_sent_but_delivered: int = 0
    cut_before_answer: int = 0
    closes: dict[str, dict[int, int]] = field(default_factory=dict)
    clients_closed: int = 0
    frame_types: dict[str, int] = field(default_factory=dict)
    welcomes_unrecovered: int = 0
    resume_first: float | None = None
    resume_paths: dict[str, float | None] = field(default_factory=dict)
    noticed: dict[str, float | None] = field(default_factory=dict)
    deaf_clients: dict[str, float | None] = field(default_factory=dict)
    per_recipient: dict[str, RecipientFigures] = field(default_factory=dict)
    silent_examples: list[str] = field(default_factory=list)
    false_claim_examples: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    down_errors: dict[str, list[str]] = field(default_factory=dict)
    runtime: float = 0.0

    def failures(self) -> list[str]:
        """The acceptance criteria this run misses (empty: all met)."""
        s = self.scenario
        failed = []
        forbidden = {
            p: {c: n for c, n in codes.items() if c in FORBIDDEN_CODES}
            for p, codes in self.closes.items()
        }
        if any(forbidden.values()):
            failed.append(f"clients closed with 4408/4429: {forbidden}")
        if self.lost_silent:
            failed.append(f"{self.lost_silent} deliveries lost silently (nobody told)")
        if self.claimed_not_sent_but_delivered:
            failed.append(
                f"{self.claimed_not_sent_but_delivered} messages answered 'not delivered' "
                "were delivered (a timeout must say 'unknown')"
            )
        late = {c: t for c, t in self.deaf_clients.items() if t is None or t > s.deaf_bound}
        if late:
            failed.append(
                f"deaf process' clients not told/recovered within {s.deaf_bound}s: {late}"
            )
        slow = {p: t for p, t in self.resume_paths.items() if t is None or t > s.resume_bound}
        if slow:
            failed.append(f"delivery not resumed within {s.resume_bound}s on paths {slow}")
        return failed

    def text(self) -> str:
        s = self.scenario
        lines = [
            f"== fault {s.name}: {s.fault} {s.duration:g}s, {2 * s.clients_per_process} clients, "
            f"{s.rate:g} msg/s (run {self.runtime:.1f}s)",
            f"sent {self.sent} (not sent, sender offline: {self.not_sent_offline}); "
            f"intended deliveries {self.intended}",
            f"delivered {self.delivered}; lost {self.lost} = sender told {self.lost_sender_told}"
            f" + recipient told {self.lost_recipient_told} + SILENT {self.lost_silent}; "
            f"duplicated {self.duplicated}",
            f"sender error frames {self.sender_errors} (delivered field: "
            f"{self.error_delivered_field}); answered 'not delivered' but delivered: "
            f"{self.claimed_not_sent_but_delivered}; socket closed before answer: "
            f"{self.cut_before_answer}",
            f"closes by process and code: {self.closes}; clients closed at least once: "
            f"{self.clients_closed}; unrecovered welcomes: {self.welcomes_unrecovered}",
            f"non-chat frame types: {self.frame_types}",
            f"delivery resumed after the fault's end: first {_s(self.resume_first)}, per path "
            + ", ".join(f"{p} {_s(t)}" for p, t in self.resume_paths.items()),
            "process noticed (on_backend_down after the start): "
            + ", ".join(f"{p} {_s(t)}" for p, t in self.noticed.items()),
            "deaf process' clients told/recovered after the start (0: nothing to miss): "
            + ", ".join(f"{c} {_s(t)}" for c, t in self.deaf_clients.items()),
            "per recipient (delivered/lost sender-told/recipient-told/silent/dup): "
            + "; ".join(
                f"{c} {f.delivered}/{f.lost_sender_told}/{f.lost_recipient_told}/"
                f"{f.lost_silent}/{f.duplicated}"
                for c, f in self.per_recipient.items()
            ),
        ]
        if self.silent_examples:
            lines.append("silent losses, e.g.: " + "; ".join(self.silent_examples))
        if self.false_claim_examples:
            lines.append(
                "'not delivered' yet delivered, e.g.: " + "; ".join(self.false_claim_examples)
            )
        if self.down_errors:
            lines.append(f"on_backend_down errors: {self.down_errors}")
        lines.append("timeline (s from the fault's start):")
        lines.extend("  " + line for line in self.timeline)
        failed = self.failures()
        lines.append("acceptance: " + ("PASS" if not failed else "FAIL"))
        lines.extend("  - " + f for f in failed)
        return "\n".join(lines)


def _s(t: float | None) -> str:
    return "never" if t is None else f"{t:.2f}s"


class Traffic:
    """Tagged messages at ``rate`` per second, round-robin over the clients: three group
    messages, then a direct one to a user on the other process, then a broadcast."""

    def __init__(self, clients: list[ChatClient], rate: float) -> None:
        self.clients = clients
        self.rate = rate
        self.sent: list[Sent] = []
        self.not_sent = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="traffic")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        everyone = frozenset(c.name for c in self.clients)
        half = len(self.clients) // 2
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            wait = start + n / self.rate - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)
                continue
            sender = self.clients[n % len(self.clients)]
            peer = self.clients[(n % len(self.clients) + half) % len(self.clients)]
            tag = f"{sender.name}-{n}"
            kind = ("group", "group", "group", "direct", "broadcast")[(n // len(self.clients)) % 5]
            if kind == "group":
                body = {"type": "Group", "group": GROUP, "text": tag, "id": tag}
                recipients = everyone
            elif kind == "direct":
                body = {"type": "Direct", "user_name": f"user{peer.user_id}", "text": tag}
                body["id"] = tag
                recipients = frozenset({peer.name, sender.name})
            else:
                body = {"type": "BroadCast", "text": tag, "id": tag}
                recipients = everyone
            n += 1
            sent = Sent(tag, kind, sender.name, sender.process, time.time(), recipients)
            if await sender.send(sent, body):
                self.sent.append(sent)
            else:
                self.not_sent += 1


async def poll_until(predicate: Any, timeout: float) -> bool:
    """Poll ``predicate`` every 20 ms until true or ``timeout``; whether it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def clients_on(
    servers: tuple[ServerProcess, ServerProcess], per_process: int
) -> AsyncIterator[list[ChatClient]]:
    """``per_process`` recording clients on each server, all welcomed; stopped on exit."""
    clients = []
    for i in range(per_process):
        for j, server in enumerate(servers):
            user = 1 + j * per_process + i
            clients.append(ChatClient(f"{server.label}{i}", user, server.label, server.address))
    for client in clients:
        client.start()
    try:
        if not await poll_until(lambda: all(c.welcomed.is_set() for c in clients), 20):
            raise TimeoutError(f"clients not welcomed: {[c.events[-3:] for c in clients]}")
        yield clients
    finally:
        for client in clients:
            await client.stop()


async def run_fault(scenario: Scenario, workdir: Path, prefix: str) -> FaultReport:
    """Run ``scenario`` end to end and measure it (see the module doc)."""
    started = time.monotonic()
    binary = "redis-server"
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(namespace()) if scenario.fault == "partition" else None
        redis = FaultRedis(binary, free_port(), workdir, [ns.redis_host] if ns else [])
        redis.start()
        stack.callback(redis.stop)
        servers = stack.enter_context(
            servers_on(redis, workdir, prefix, ns=ns, env=dict(scenario.env))
        )
        async with clients_on(servers, scenario.clients_per_process) as clients:
            traffic = Traffic(clients, scenario.rate)
            traffic.start()
            try:
                await poll_until(lambda: len(traffic.sent) >= scenario.rate * scenario.warmup, 30)
                t_start = time.time()
                await _apply(scenario, redis, ns)
                t_end = time.time()
                count = len(traffic.sent)
                await poll_until(
                    lambda: len(traffic.sent) >= count + scenario.rate * scenario.settle, 60
                )
            finally:
                await traffic.stop()
            await _drain(clients, traffic.sent)
            states = {s.label: await s.state() for s in servers}
    report = analyse(scenario, clients, traffic, states, t_start, t_end)
    report.runtime = time.monotonic() - started
    return report


async def _apply(scenario: Scenario, redis: FaultRedis, ns: Namespace | None) -> None:
    """The fault itself; returns when it has ended (Redis answers again, or the link heals)."""
    if scenario.fault == "kill":
        redis.kill()
        await asyncio.sleep(scenario.duration)  # the length of the outage
        await asyncio.to_thread(redis.start)
    elif scenario.fault == "stop":
        redis.freeze()
        try:
            await asyncio.sleep(scenario.duration)
        finally:
            redis.thaw()
    else:
        assert ns is not None
        ns.partition()
        try:
            await asyncio.sleep(scenario.duration)
        finally:
            ns.heal()


async def _drain(clients: list[ChatClient], sent: list[Sent], timeout: float = 15.0) -> None:
    """Until every client is back and every delivery arrived, or nothing new comes for 2 s."""
    wanted = sum(len(m.recipients) for m in sent)
    last = (-1, time.monotonic())

    def settled() -> bool:
        nonlocal last
        got = sum(len(c.deliveries) for c in clients)
        if all(c.online or c.stopped_by for c in clients) and got >= wanted:
            return True
        if got != last[0]:
            last = (got, time.monotonic())
        return time.monotonic() - last[1] > 2.0 and all(c.online or c.stopped_by for c in clients)

    await poll_until(settled, timeout)


def analyse(
    scenario: Scenario,
    clients: list[ChatClient],
    traffic: Traffic,
    states: dict[str, dict[str, Any]],
    t_start: float,
    t_end: float,
) -> FaultReport:
    """Count every (message, intended recipient) pair, and the rest of the report."""
    report = FaultReport(scenario, sent=len(traffic.sent), not_sent_offline=traffic.not_sent)
    by_name = {c.name: c for c in clients}
    got: dict[str, dict[str, list[Delivery]]] = {c.name: {} for c in clients}
    for c in clients:
        for d in c.deliveries:
            got[c.name].setdefault(d.tag, []).append(d)
    notices = {c.name: c.notices() for c in clients}
    report.per_recipient = {c.name: RecipientFigures() for c in clients}
    paths: dict[str, float | None] = {}
    for sender in ("A", "B"):
        for receiver in ("A", "B"):
            paths[f"{sender}->{receiver}"] = None
    first_after: float | None = None
    for m in traffic.sent:
        told_sender = bool(m.errors) or m.cut
        report.sender_errors += len(m.errors)
        report.cut_before_answer += m.cut
        for err in m.errors:
            key = str(err.get("delivered", "absent"))
            report.error_delivered_field[key] = report.error_delivered_field.get(key, 0) + 1
        delivered_anywhere = any(got[r].get(m.tag) for r in m.recipients)
        if m.errors and delivered_anywhere and _claims_not_sent(m.errors):
            report.claimed_not_sent_but_delivered += 1
            if len(report.false_claim_examples) < 5:
                report.false_claim_examples.append(
                    f"{m.tag} sent at {m.t - t_start:+.2f}s told {m.errors[0]}"
                )
        for r in m.recipients:
            figures = report.per_recipient[r]
            report.intended += 1
            copies = got[r].get(m.tag, [])
            if copies:
                report.delivered += 1
                figures.delivered += 1
                extra = len(copies) - 1
                report.duplicated += extra
                figures.duplicated += extra
                first = min(d.t for d in copies)
                path = f"{m.process}->{by_name[r].process}"
                if m.t >= t_end and (paths[path] is None or first - t_end < paths[path]):  # type: ignore[operator]
                    paths[path] = first - t_end
                for d in copies:
                    if d.t >= t_end and (first_after is None or d.t - t_end < first_after):
                        first_after = d.t - t_end
                continue
            report.lost += 1
            if told_sender:
                report.lost_sender_told += 1
                figures.lost_sender_told += 1
            elif any(t >= m.t - 0.05 for t in notices[r]):
                report.lost_recipient_told += 1
                figures.lost_recipient_told += 1
            else:
                report.lost_silent += 1
                figures.lost_silent += 1
                if len(report.silent_examples) < 6:
                    report.silent_examples.append(
                        f"{m.tag} ({m.kind}, sent {m.t - t_start:+.2f}s) to {r}"
                    )
    report.resume_paths = paths
    report.resume_first = first_after
    deaf = ("A", "B") if scenario.fault != "partition" else ("B",)
    for label, state in states.items():
        downs = [t for t in state.get("down_at", []) if t >= t_start - 0.5]
        report.noticed[label] = (downs[0] - t_start) if downs else None
        if state.get("down_errors"):
            report.down_errors[label] = state["down_errors"][-3:]
    for c in clients:
        codes: Counter[int] = Counter(
            e.detail["code"] for e in c.events if e.kind == "close" and e.t >= t_start - 1
        )
        mine = report.closes.setdefault(c.process, {})
        for code, n in codes.items():
            mine[code] = mine.get(code, 0) + n
        report.clients_closed += bool(codes)
        for e in c.events:
            if e.kind == "frame":
                kind = str(e.detail.get("type"))
                if kind == "error":
                    kind = f"error:{e.detail.get('error')}"
                report.frame_types[kind] = report.frame_types.get(kind, 0) + 1
            elif e.kind == "welcome" and ChatClient._unrecovered(e.detail):
                report.welcomes_unrecovered += 1
        if c.process in deaf:
            report.deaf_clients[c.name] = _covered(c, traffic.sent, got[c.name], t_start, t_end)
    report.timeline = _timeline(clients, states, t_start, t_end)
    return report


def _claims_not_sent(errors: list[dict[str, Any]]) -> bool:
    """Whether the sender was told its message was not delivered (rather than 'unknown')."""
    for e in errors:
        if "delivered" in e:
            if e["delivered"] is False:
                return True
        elif "not delivered" in str(e.get("detail", "")):
            return True
    return False


def _covered(
    client: ChatClient,
    sent: list[Sent],
    got: dict[str, list[Delivery]],
    t_start: float,
    t_end: float,
) -> float | None:
    """Seconds from the fault's start until ``client`` was told, or had every message meant for
    it that was sent during the fault and not refused to its sender: the earlier of the two;
    ``None`` when neither happened."""
    told = [t - t_start for t in client.notices() if t >= t_start]
    during = [
        m
        for m in sent
        if t_start <= m.t <= t_end and client.name in m.recipients and not (m.errors or m.cut)
    ]
    complete: float | None = None
    if all(got.get(m.tag) for m in during):
        last = max((min(d.t for d in got[m.tag]) for m in during), default=t_start)
        complete = max(last - t_start, 0.0)
    options = [t for t in (min(told, default=None), complete) if t is not None]
    return min(options) if options else None


def _timeline(
    clients: list[ChatClient], states: dict[str, dict[str, Any]], t_start: float, t_end: float
) -> list[str]:
    """Closes, welcomes, failed connects and unusual frames, and the processes' hooks."""
    rows: list[tuple[float, str]] = [(0.0, "fault starts"), (t_end - t_start, "fault ends")]
    for label, state in states.items():
        rows += [(t - t_start, f"{label} on_backend_down") for t in state.get("down_at", [])]
        rows += [(t - t_start, f"{label} on_backend_up") for t in state.get("up_at", [])]
    for c in clients:
        for e in c.events:
            if e.t < t_start - 1:
                continue
            if e.kind == "close":
                rows.append((e.t - t_start, f"{c.name} closed {e.detail['code']}"))
            elif e.kind == "welcome":
                status = "recovered" if e.detail.get("recovered") else "NOT recovered"
                reasons = sorted(
                    {str(s.get("reason")) for s in e.detail["channels"].values() if "reason" in s}
                )
                rows.append((e.t - t_start, f"{c.name} welcome {status} {reasons}"))
            elif e.kind == "frame" and e.detail.get("type") not in ORDINARY:
                rows.append((e.t - t_start, f"{c.name} frame {json.dumps(e.detail)[:120]}"))
        failed = [e.t - t_start for e in c.events if e.kind == "connect_failed" and e.t >= t_start]
        if failed:
            rows.append(
                (failed[0], f"{c.name} {len(failed)} failed connects until {failed[-1]:.2f}")
            )
    rows.sort()
    merged = [f"{t:7.2f} {text}" for t, text in rows]
    if len(merged) > 60:
        merged = [*merged[:40], f"... {len(merged) - 55} more ...", *merged[-15:]]
    return merged


def bulk_names(text: str) -> list[str]:
    """Client names Redis logged as closed for overcoming output buffer limits."""
    names = []
    for line in text.splitlines():
        if "output buffer limits" in line and "name=" in line:
            names.append(line.split("name=", 1)[1].split()[0])
    return names
