"""The AMQP source in one process: the schema, the registry's companions, dead letters, pauses
on a failing backend (nothing acknowledged before the registry took it) and the lifecycle."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asgi_groups import BackendUnavailable, Registry, SimpleUser
from asgi_groups.errors import DeliveryUnknown
from tests.support.amqp import AMQP_URL, Names, depth, publish, take_dead, unique_names
from tests.support.redis import Inbox

aio_pika = pytest.importorskip("aio_pika", reason="pip install -e '.[amqp]'")

from asgi_groups.amqp import (  # noqa: E402 - after the skip
    DETAIL_HEADER,
    REASON_HEADER,
    AmqpSource,
    Outgoing,
    Reason,
    Undeliverable,
    decode_json,
    parse,
)

KNOWN_GROUPS = {"boys", "girls", "g" * 300}  # the last one too long for the registry
KNOWN_USERS = {"1", "2"}

QUICK: dict[str, Any] = {
    "reconnect_backoff": (0.05, 0.3),
    "backend_backoff": (0.02, 0.1),
    "resume_after": 0.0,
}


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    async for found in unique_names():
        yield found


def checked(incoming: Any) -> Outgoing:
    """The default decoder, refusing groups and users that do not exist."""
    outgoing = decode_json(incoming)
    if outgoing.target == "group" and outgoing.name not in KNOWN_GROUPS:
        raise Undeliverable(Reason.UNKNOWN_GROUP, f"no group {outgoing.name!r}")
    if outgoing.target == "user" and outgoing.name not in KNOWN_USERS:
        raise Undeliverable(Reason.UNKNOWN_USER, f"no user {outgoing.name!r}")
    return outgoing


async def reader(registry: Registry, user_id: str, *groups: str) -> Inbox:
    inbox = Inbox()
    conn = await registry.connect(inbox, SimpleUser(user_id, f"user{user_id}"))
    for group in groups:
        await registry.join(conn, group)
    return inbox


def source(registry: Registry, names: Names, **options: Any) -> AmqpSource:
    made = AmqpSource(
        registry,
        AMQP_URL,
        names.queue,
        connection_name=names.connection_name,
        **{**QUICK, **options},
    )
    registry.add_companion(made)
    return made


async def published(made: AmqpSource, count: int) -> None:
    """Wait until the source has acknowledged ``count`` messages."""
    async with asyncio.timeout(10):
        while made.stats()["published"] < count:  # noqa: ASYNC110 - counted by the source
            await asyncio.sleep(0.02)


# -- the schema (no broker) --------------------------------------------------------------------


class Fake:
    """The parts of an incoming message a decoder reads."""

    def __init__(self, body: bytes, message_id: str | None = None) -> None:
        self.body, self.message_id = body, message_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", Reason.NOT_JSON),
        (b"\xff\xfe", Reason.NOT_JSON),
        (b'{"target": "room", "name": "x", "data": 1}', Reason.INVALID),
        (b'{"target": "group", "data": 1}', Reason.INVALID),
        (b'{"target": "broadcast", "name": "x", "data": 1}', Reason.INVALID),
        (b'{"target": "user", "name": "1", "data": 1, "extra": 2}', Reason.INVALID),
        (b"[1, 2]", Reason.INVALID),
    ],
)
def test_the_schema_refuses_with_a_reason(body: bytes, reason: Reason) -> None:
    with pytest.raises(Undeliverable) as caught:
        parse(body)
    assert caught.value.reason == reason


def test_the_message_id_goes_into_object_payloads_that_have_none() -> None:
    body = json.dumps({"target": "group", "name": "boys", "data": {"text": "hi"}}).encode()
    out = decode_json(Fake(body, "m-1"))  # type: ignore[arg-type]
    assert out == Outgoing("group", "boys", {"text": "hi", "id": "m-1"}, "m-1")
    own = json.dumps({"target": "broadcast", "data": {"id": "mine"}}).encode()
    assert decode_json(Fake(own, "m-2")).message == {"id": "mine"}  # type: ignore[arg-type]
    text = json.dumps({"target": "user", "name": "7", "data": "plain"}).encode()
    assert decode_json(Fake(text, "m-3")).message == "plain"  # type: ignore[arg-type]
    untouched = decode_json(Fake(body, "m-4"), id_field=None)  # type: ignore[arg-type]
    assert untouched.message == {"text": "hi"}


# -- the registry's companions (no broker) -----------------------------------------------------


class Companion:
    def __init__(self, log: list[str], name: str, fail_close: bool = False) -> None:
        self.log, self.name, self.fail_close = log, name, fail_close

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError("boom")


async def test_companions_start_and_close_with_the_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    registry = Registry()
    registry.add_companion(Companion(log, "a", fail_close=True))
    registry.add_companion(Companion(log, "b"))
    async with registry:
        assert log == ["start a", "start b"]
        with pytest.raises(RuntimeError):
            registry.add_companion(Companion(log, "late"))
    assert log == ["start a", "start b", "close b", "close a"]  # newest first
    assert not registry.started  # a companion that fails to close does not stop the close
    assert "companion" in caplog.text
    async with registry:  # and again on the next start
        assert log[-2:] == ["start a", "start b"]


# -- with RabbitMQ -----------------------------------------------------------------------------


async def test_what_cannot_be_delivered_is_dead_lettered_with_its_reason(names: Names) -> None:
    registry = Registry()
    made = source(registry, names, decode=checked, max_body=2048)
    async with registry:
        inbox = await reader(registry, "1", "boys")
        await made.wait_consuming(10)
        bad: list[bytes | dict[str, Any]] = [
            b"not json at all",
            {"target": "room", "name": "boys", "data": 1},
            {"target": "group", "name": "boys", "data": "x" * 4096},
            {"target": "group", "name": "nobody-here", "data": 1},
            {"target": "user", "name": "999", "data": 1},
            {"target": "group", "name": "g" * 300, "data": 1},
            {"target": "group", "name": "boys", "data": {"ok": True}},
        ]
        await publish(names.queue, bad, ids=[f"m{i}" for i in range(len(bad))])
        assert json.loads(await inbox.text(10)) == {"ok": True, "id": "m6"}
        dead = await take_dead(names.dead, 6)
        reasons = {m.message_id: m.headers[REASON_HEADER] for m in dead}
        assert reasons == {
            "m0": "not_json",
            "m1": "invalid",
            "m2": "too_large",
            "m3": "unknown_group",
            "m4": "unknown_user",
            "m5": "unroutable",
        }
        assert all(m.headers[DETAIL_HEADER] for m in dead)
        assert dead[0].body == b"not json at all"  # the original body, to replay or inspect
        assert made.stats()["dead_lettered"] == 6
        assert await depth(names.queue) == 0  # acknowledged: never requeued forever


async def test_a_refusing_backend_pauses_without_acknowledging(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    made = source(registry, names)
    real = registry.send_group
    failures = {"left": 3}

    async def flaky(group: str, message: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise BackendUnavailable("down for the test")
        return await real(group, message, **kwargs)

    monkeypatch.setattr(registry, "send_group", flaky)
    async with registry:
        inbox = await reader(registry, "1", "boys")
        await made.wait_consuming(10)
        bodies = [{"target": "group", "name": "boys", "data": {"n": n}} for n in range(20)]
        await publish(names.queue, bodies, ids=[f"m{n}" for n in range(20)])
        got = [json.loads(await inbox.text(10))["n"] for _ in range(20)]
        assert got == list(range(20))  # nothing lost, nothing twice, in order
        await published(made, 20)
        stats = made.stats()
        assert stats["pauses"] == 3 and stats["requeued"] == 3 and stats["published"] == 20
        assert inbox.empty()


async def test_delivery_unknown_is_retried_with_the_same_id(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    made = source(registry, names)
    real = registry.broadcast
    unknown = {"left": 1}

    async def unanswered(message: Any, **kwargs: Any) -> Any:
        position = await real(message, **kwargs)
        if unknown["left"]:  # it went out, but the caller was not told
            unknown["left"] -= 1
            raise DeliveryUnknown("no reply")
        return position

    monkeypatch.setattr(registry, "broadcast", unanswered)
    async with registry:
        inbox = await reader(registry, "1")
        await made.wait_consuming(10)
        await publish(names.queue, [{"target": "broadcast", "data": {"t": "x"}}], ids=["once"])
        first, second = json.loads(await inbox.text(10)), json.loads(await inbox.text(10))
        assert first == second == {"t": "x", "id": "once"}  # a client drops the copy by id


async def test_it_stops_with_the_registry_and_leaves_the_rest_queued(
    names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "asgi_groups.amqp")
    registry = Registry()
    made = source(registry, names)
    async with registry:
        await made.wait_consuming(10)
        assert made.state == "consuming"
    assert made.state == "stopped"
    await publish(names.queue, [{"target": "broadcast", "data": 1}] * 3)
    await asyncio.sleep(0.2)
    assert await depth(names.queue) == 3
    async with registry:  # started again with the registry: takes them
        await made.wait_consuming(10)
        await published(made, 3)
    consuming = [r for r in caplog.records if "consuming" in r.getMessage()]
    assert len(consuming) == 2  # one line per state change


async def test_rabbitmq_unreachable_is_loud_once_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()
    made = AmqpSource(registry, "amqp://guest:guest@127.0.0.1:1/", "q", **QUICK)
    registry.add_companion(made)
    async with registry:  # the app starts all the same
        await asyncio.sleep(0.8)
        assert made.state == "down"
        assert made.stats()["connections"] == 0
    down = [r for r in caplog.records if "cannot reach RabbitMQ" in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]
    assert "***" in down[0].getMessage() and "guest:guest" not in down[0].getMessage()
