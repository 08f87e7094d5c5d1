"""A client is closed only for what it did: backend failures, stalls and reconnects.

MessagingView over a real Registry whose backend (the memory backend, made to fail or to stall
on demand) stands in for a Redis that is away or slow; the test client drives the sockets and
an injected clock stands in for time, so every step is an event, not a sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, codes
from asgi_groups.backends.memory import MemoryBackend
from asgi_groups.errors import BackendUnavailable, DeliveryUnknown
from asgi_groups.frames import Frame
from asgi_groups.history import Position
from asgi_groups.messaging import (
    DEFAULT_RETRY_AFTER,
    MESSAGE_ID_PATTERN,
    ErrorCode,
    ErrorFrame,
    MessagingView,
    StaticDirectory,
    _shared,
    user_buckets,
)
from asgi_groups.ratelimit import TokenBucket, UserBuckets, take_all
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import ASGIApp

from .support.codecs import PlainCookie

PEOPLE = [
    SimpleUser(1, "greg", frozenset({"boys"})),
    SimpleUser(2, "chuck", frozenset({"boys"})),
    SimpleUser(4, "amanda", frozenset({"girls"})),
    *(SimpleUser(100 + n, f"user{n}", frozenset({"crowd"})) for n in range(50)),
]
IDS = {u.username: u.id for u in PEOPLE}
GROUP = {"type": "Group", "group": "boys", "text": "hi"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flaky(MemoryBackend):
    """The memory backend, made to fail or to hold publishes on demand, as a Redis that is away
    (``BackendUnavailable``), that took a message but did not answer (``DeliveryUnknown``: the
    message does go out), or that is frozen (``hold``: publishes wait until it is released)."""

    def __init__(self) -> None:
        super().__init__()
        self.failure: type[BackendUnavailable] | None = None
        self.failing: set[str] | None = None  # only these channels fail (None: all)
        self.held: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def hold(self) -> None:
        self.held = asyncio.Event()
        self.entered.clear()

    async def publish(
        self, channel: str, frame: Frame, exclude: str | None, history: bool = False
    ) -> Position | None:
        if self.held is not None:
            self.entered.set()
            await self.held.wait()
        failure = self.failure if self.failing is None or channel in self.failing else None
        if failure is None:
            return await super().publish(channel, frame, exclude, history)
        if failure is DeliveryUnknown:
            await super().publish(channel, frame, exclude, history)  # written, answer lost
        raise failure(f"backend away ({channel})")

    async def presence(self, group: str) -> dict[str, int]:
        if self.failure is not None:
            raise self.failure("backend away (presence)")
        return await super().presence(group)


class Quiet(MessagingView):
    """No presence announcements: the tests see only what they send."""

    announce_presence = False


class Site:
    def __init__(self, registry: Registry, backend: Flaky, clock: FakeClock) -> None:
        self.registry = registry
        self.backend = backend
        self.clock = clock

    def app(self, view: type[MessagingView]) -> ASGIApp:
        endpoint = view.as_asgi(directory=StaticDirectory(PEOPLE), clock=self.clock)
        return GroupsMiddleware(
            endpoint, self.registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE)
        )

    def client(self, name: str, view: type[MessagingView] = Quiet) -> WebSocketTestClient:
        return WebSocketTestClient(self.app(view), cookies={"session": str(IDS[name])})


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    backend = Flaky()
    async with Registry(backend=backend) as registry:
        yield Site(registry, backend, FakeClock())


async def recv(ws: WebSocketTestClient) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    return frame


async def opened(ws: WebSocketTestClient) -> WebSocketTestClient:
    assert (await recv(ws))["type"] == "hello"
    return ws


async def drain(ws: WebSocketTestClient) -> list[dict[str, Any]]:
    """Every frame the app has sent to ``ws`` so far (the app is done with what it was sent)."""
    frames = []
    while not await ws.receive_nothing(0):
        frames.append(await recv(ws))
    return frames


# -- backend failures: the error frame, and no error budget spent -----------------------------


async def test_unavailable_spends_no_error_budget_and_says_not_sent(site: Site) -> None:
    """With the backend away, 40 messages of every kind get one ``unavailable`` frame each
    (``delivered: false``, their id, ``retry_after``), far past an error budget of 3, and the
    socket stays open; the budget still closes a client for its own mistakes."""

    class Budget(Quiet):
        error_budget = 3
        rate_limit = user_rate_limit = None

    async with site.client("greg", Budget) as greg, site.client("chuck", Budget) as chuck:
        await opened(greg)
        await opened(chuck)
        site.backend.failure = BackendUnavailable
        kinds = [
            {"type": "Group", "group": "boys", "text": "x"},
            {"type": "Direct", "user_name": "chuck", "text": "x"},
            {"type": "BroadCast", "text": "x"},
        ]
        for n in range(40):
            await greg.send_json({**kinds[n % 3], "id": f"m{n}"})
            assert await recv(greg) == {
                "type": "error",
                "error": "unavailable",
                "detail": "message not sent: the server cannot reach its backend, try again",
                "id": f"m{n}",
                "delivered": False,
                "retry_after": DEFAULT_RETRY_AFTER,
            }
        await greg.send_json({"type": "Presence"})
        assert await recv(greg) == {
            "type": "error",
            "error": "unavailable",
            "detail": "presence unavailable, try again",
            "retry_after": DEFAULT_RETRY_AFTER,
        }
        assert await chuck.receive_nothing(0.02)

        site.backend.failure = None  # back: messages flow on the same socket
        await greg.send_json({**GROUP, "id": "after"})
        for ws in (greg, chuck):
            assert (await recv(ws))["id"] == "after"
        for _ in range(3):  # the client's own mistakes: the budget is whole
            await greg.send_text("not json")
            assert (await recv(greg))["error"] == "invalid_json"
        await greg.send_text("not json")
        assert (await recv(greg))["error"] == "invalid_json"
        assert await greg.receive_close() == codes.TOO_MANY_ERRORS


async def test_delivery_unknown_is_said_and_a_retry_with_the_same_id_is_recognisable(
    site: Site,
) -> None:
    """A publish that went out but was not confirmed answers ``delivered: "unknown"``; the
    client's retry carries the same id, so a recipient that got both copies sees the same
    ``(from, id)`` twice and keeps one."""
    async with site.client("greg") as greg, site.client("amanda") as amanda:
        await opened(greg)
        await opened(amanda)
        site.backend.failure = DeliveryUnknown
        site.backend.failing = {"u:4"}  # amanda's channel: the message itself
        message = {"type": "Direct", "user_name": "amanda", "text": "psst", "id": "a1-B_2"}
        await greg.send_json(message)
        first = await recv(amanda)
        error = await recv(greg)
        assert error["error"] == "unavailable" and error["delivered"] == "unknown"
        assert error["id"] == "a1-B_2" and error["retry_after"] == DEFAULT_RETRY_AFTER
        assert "same id" in error["detail"]

        site.backend.failure = None
        await greg.send_json(message)  # the retry
        second = await recv(amanda)
        assert (await recv(greg))["id"] == "a1-B_2"  # the sender's own copy
        assert (first["from"], first["id"]) == (second["from"], second["id"]) == ("greg", "a1-B_2")
        assert first["text"] == second["text"] == "psst"


async def test_message_ids_are_the_clients_when_given_and_validated(site: Site) -> None:
    async with site.client("greg") as greg, site.client("chuck") as chuck:
        await opened(greg)
        await opened(chuck)
        await greg.send_json(GROUP)
        made = (await recv(chuck))["id"]
        assert re.fullmatch(MESSAGE_ID_PATTERN, made)  # the server's own, when none is given
        assert (await recv(greg))["id"] == made
        await greg.send_json({**GROUP, "id": "x" * 64})
        assert (await recv(chuck))["id"] == "x" * 64
        await recv(greg)
        for bad in ["", "x" * 65, "a b", "<img>", "é", 7, ["a"]]:
            await greg.send_json({**GROUP, "id": bad})
            refusal = await recv(greg)
            assert refusal["error"] == "invalid_message" and "id" in refusal["detail"], bad
        assert await chuck.receive_nothing(0.02)


async def test_a_failed_copy_to_the_senders_tabs_is_not_an_error(site: Site) -> None:
    """The message went out; only the copy to the sender's other tabs failed: this tab gets its
    copy directly and no error frame says otherwise."""
    async with site.client("amanda") as amanda, site.client("greg") as greg:
        await opened(amanda)
        await opened(greg)
        site.backend.failure = BackendUnavailable
        site.backend.failing = {"u:4"}  # amanda's own channel
        await amanda.send_json({**GROUP, "id": "out"})
        assert (await recv(greg))["id"] == "out"
        assert (await recv(amanda))["id"] == "out"
        assert await amanda.receive_nothing(0.02)


# -- rate limits after a stall, and floods ---------------------------------------------------


class Stalling(Quiet):
    """10 messages/s, bursts of 5, per socket and per user; refusals never close."""

    rate_limit = 10.0
    rate_burst = 5
    user_rate_limit = 10.0
    user_rate_burst = 5
    rate_limit_strikes = None


class NoCredit(Stalling):
    max_stall_credit = None


@pytest.mark.parametrize(
    ("view", "stall", "sent", "through"),
    [
        # 10 s frozen: 100 frames sent meanwhile at the allowed pace all go through ...
        (Stalling, 10.0, 100, 1 + 100),
        # ... which they did not without the credit (the burst only)
        (NoCredit, 10.0, 100, 1 + 5),
        # a flood during the same stall: what the rate allows over the stall, no more
        (Stalling, 10.0, 300, 1 + 4 + 100),
        # a flood with no stall: the burst
        (Stalling, 0.0, 300, 1 + 4),
    ],
    ids=["backlog", "backlog-without-credit", "flood-in-stall", "flood"],
)
async def test_a_stall_is_credited_to_the_rate_limit_a_flood_is_not(
    site: Site, view: type[MessagingView], stall: float, sent: int, through: int
) -> None:
    """The backend freezes while greg's first message is published; ``stall`` seconds pass
    and ``sent`` more frames wait meanwhile; then the backend answers."""
    async with site.client("greg", view) as greg, site.client("chuck", view) as chuck:
        await opened(greg)
        await opened(chuck)
        site.backend.hold()
        await greg.send_json({**GROUP, "text": "first"})
        await site.backend.entered.wait()  # greg's socket is now blocked on the backend
        site.clock.advance(stall)
        for n in range(sent):
            await greg.send_json({**GROUP, "text": str(n)})
        assert site.backend.held is not None
        site.backend.held.set()
    got = await drain(chuck)
    assert len(got) == through
    assert [m["text"] for m in got] == ["first", *map(str, range(through - 1))]
    # never more than the rate allows over the time that passed, whatever happened
    assert through <= Stalling.rate_burst + Stalling.rate_limit * stall


async def test_rate_limited_frames_say_when_to_retry(site: Site) -> None:
    async with site.client("greg", Stalling) as greg:
        await opened(greg)
        for _ in range(5):
            await greg.send_json({"type": "Direct", "user_name": "greg", "text": "x"})
            assert (await recv(greg))["type"] == "direct"
        await greg.send_json(GROUP)
        refusal = await recv(greg)
        assert refusal["error"] == "rate_limited" and refusal["retry_after"] == 0.1
        site.clock.advance(0.1)
        await greg.send_json({"type": "Direct", "user_name": "greg", "text": "x"})
        assert (await recv(greg))["type"] == "direct"


# -- per-user limits -------------------------------------------------------------------------


@pytest.mark.parametrize("per_user", [True, False], ids=["per-user", "per-socket-only"])
async def test_reconnecting_does_not_reset_a_users_rate_limit(site: Site, per_user: bool) -> None:
    """Greg reconnects 20 times and sends 200 messages each time (the default limits: 20/s,
    bursts of 40, closed with 4429 after 20 refusals); 0.25 s pass between connections. What
    chuck receives is bounded by the user's limit, not by the number of connections."""

    class View(Quiet):
        user_rate_limit = MessagingView.user_rate_limit if per_user else None

    async with site.client("chuck", View) as chuck:
        await opened(chuck)
        for _ in range(20):
            async with site.client("greg", View) as greg:
                await opened(greg)
                for n in range(200):
                    await greg.send_json({**GROUP, "text": str(n)})
            site.clock.advance(0.25)
        got = await drain(chuck)
    if per_user:  # the burst once, then 5 tokens in each of the 19 gaps of 0.25 s
        assert len(got) == 40 + 19 * 5
    else:  # every new connection came with a fresh burst
        assert len(got) == 20 * 40
    if not per_user:
        assert len(user_buckets(site.registry)) == 0  # none made


async def test_a_users_sockets_share_one_bucket_until_the_last_leaves(site: Site) -> None:
    class Small(Quiet):
        user_rate_limit = 10.0
        user_rate_burst = 4

    buckets = user_buckets(site.registry)
    first = site.client("greg", Small)
    await opened(await first.__aenter__())
    async with site.client("greg", Small) as second:
        await opened(second)
        assert len(buckets) == 1 and "1" in buckets
        note = {"type": "Direct", "user_name": "greg", "text": "x"}
        for ws in (first, second, first, second):  # 4 tokens between the two sockets ...
            await ws.send_json(note)
            assert [(await recv(tab))["type"] for tab in (first, second)] == ["direct"] * 2
        for ws in (first, second):  # ... then none on either
            await ws.send_json(note)
            assert (await recv(ws))["error"] == "rate_limited"
        await first.disconnect()
        assert "1" in buckets  # the second socket still holds it
    assert "1" in buckets  # gone: but empty, so kept until it has refilled ...
    async with site.client("greg", Small) as again:  # ... and a reconnect finds it empty
        await opened(again)
        await again.send_json(GROUP)
        assert (await recv(again))["error"] == "rate_limited"
    site.clock.advance(4 / 10)  # refilled: as good as new, dropped at the next sweep
    buckets.sweep(site.clock())
    assert len(buckets) == 0

    # 50 users come and go: nothing stays behind once their buckets are full again
    for n in range(50):
        async with site.client(f"user{n}", Small) as ws:
            await opened(ws)
            await ws.send_json({"type": "Group", "group": "crowd", "text": "x"})
    assert 0 < len(buckets) <= 50
    site.clock.advance(4 / 10)
    async with site.client("amanda", Small) as amanda:  # a connection sweeps
        await opened(amanda)
        assert list(buckets.get(str(IDS[u.username])) for u in PEOPLE[3:]) == [None] * 50
    assert len(buckets) == 0  # amanda never spent a token: dropped as she left


# -- logs an operator can live with ----------------------------------------------------------


async def test_an_outage_logs_one_line_per_interval_not_one_per_message(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "asgi_groups.messaging")

    def lines() -> list[str]:
        found = [r for r in caplog.records if r.levelno >= logging.WARNING]
        caplog.clear()
        return [r.getMessage() for r in found]

    class Free(Quiet):
        rate_limit = user_rate_limit = None

    async with site.client("greg", Free) as greg:
        await opened(greg)
        site.backend.failure = BackendUnavailable
        for _ in range(50):
            await greg.send_json(GROUP)
            await recv(greg)
        (first,) = lines()
        assert "1 not sent, 0 maybe delivered" in first and "summed every 10 s" in first
        site.clock.advance(10)
        site.backend.failure = DeliveryUnknown
        await greg.send_json(GROUP)
        await recv(greg)  # the recipients' copy (it went out) ...
        await recv(greg)  # ... and the error frame
        assert lines() == [
            "chat messages the backend did not take in the last 10 s: 49 not sent, "
            "1 maybe delivered (latest: DeliveryUnknown('backend away (g:boys)'))"
        ]
        site.backend.failure = BackendUnavailable
        for _ in range(5):
            await greg.send_json(GROUP)
            await recv(greg)
        assert lines() == []
        site.backend.failure = None
        site.clock.advance(3)
        await greg.send_json(GROUP)  # back within the interval: still quiet ...
        await recv(greg)
        assert lines() == []
        site.clock.advance(7)
        await greg.send_json(GROUP)  # ... and the count is logged once it is due
        await recv(greg)
        assert lines() == [
            "chat messages the backend did not take in the last 10 s: 5 not sent, "
            "0 maybe delivered (latest: BackendUnavailable('backend away (g:boys)'))"
        ]
        await greg.send_json(GROUP)
        await recv(greg)
        assert lines() == []


async def test_a_count_left_when_traffic_stops_is_logged_when_due(site: Site) -> None:
    """No message comes after the outage's last failure: the summary is logged on time anyway."""
    logged = asyncio.Event()
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            logged.set()

    catch = Catch(logging.WARNING)
    logging.getLogger("asgi_groups.messaging").addHandler(catch)
    try:
        async with site.client("greg") as greg:
            await opened(greg)
            _shared(site.registry).undelivered.interval = 0.05  # a timer of 0.05 s, real time
            site.backend.failure = BackendUnavailable
            for _ in range(3):
                await greg.send_json(GROUP)
                await recv(greg)
            assert len(lines) == 1
            logged.clear()
            site.clock.advance(0.05)  # due by the view's clock, when the timer fires
            await asyncio.wait_for(logged.wait(), 5)
        assert lines[1].startswith("chat messages the backend did not take in the last 0 s: 2 ")
    finally:
        logging.getLogger("asgi_groups.messaging").removeHandler(catch)


async def test_a_client_closed_for_abuse_is_one_line(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "asgi_groups")

    class Strict(Quiet):
        rate_limit = 1.0
        rate_burst = 1
        rate_limit_strikes = 3

    async with site.client("greg", Strict) as greg:
        await opened(greg)
        for _ in range(10):
            await greg.send_text("flood")
    logged = [r for r in caplog.records if r.name.startswith("asgi_groups")]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING and "of user 1 with 4429" in logged[0].getMessage()


# -- the buckets themselves ------------------------------------------------------------------


def test_a_stall_lets_tokens_accrue_past_the_burst_and_unused_credit_fades() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0, max_credit=100.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    bucket.begin_stall(0.0)
    bucket.end_stall(30.0)  # 300 accrued, capped at burst + max_credit
    assert bucket.tokens == 105.0
    assert bucket.take(30.0)
    bucket.refill(35.0)  # no stall: what is past the burst fades at the rate
    assert bucket.tokens == 54.0
    bucket.refill(100.0)
    assert bucket.tokens == 5.0
    plain = TokenBucket(rate=10.0, burst=5, now=0.0)  # no credit: the burst is the cap
    plain.begin_stall(0.0)
    plain.end_stall(30.0)
    assert plain.tokens == 5.0
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=1, now=0.0, max_credit=-1.0)


def test_take_all_spends_from_every_bucket_or_from_none() -> None:
    mine = TokenBucket(rate=1.0, burst=3, now=0.0)
    users = TokenBucket(rate=2.0, burst=1, now=0.0)
    assert take_all((mine, users), 0.0) is None
    assert take_all((mine, users), 0.0) == 0.5  # the user's bucket refills in 0.5 s
    assert mine.tokens == 2.0  # not spent
    assert take_all((mine, users), 0.5) is None and mine.tokens == 1.5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["take", "begin", "end"]), st.floats(0.0, 3.0)), max_size=200
    )
)
def test_a_bucket_never_grants_more_than_its_rate_over_time(steps: list[tuple[str, float]]) -> None:
    """Whatever the stalls, over T seconds at most ``burst + rate * T`` tokens are granted."""
    bucket = TokenBucket(rate=5.0, burst=3, now=0.0, max_credit=50.0)
    now = granted = 0.0
    open_stalls = 0
    for action, step in steps:
        now += step
        if action == "take":
            granted += bucket.take(now)
        elif action == "begin":
            bucket.begin_stall(now)
            open_stalls += 1
        elif open_stalls:
            bucket.end_stall(now)
            open_stalls -= 1
        assert granted <= 3 + 5.0 * now + 1e-9


def test_user_buckets_keep_a_bucket_until_it_has_refilled() -> None:
    table = UserBuckets()
    a = table.acquire("u", 2.0, 4, 0.0)
    assert table.acquire("u", 2.0, 4, 0.0) is a
    table.release("u", 0.0)
    assert table.get("u") is a
    table.release("u", 0.0)
    assert table.get("u") is None  # full: dropped with the last holder
    b = table.acquire("u", 2.0, 4, 1.0)
    assert b is not a and b.take(1.0) and b.take(1.0)
    table.release("u", 1.0)
    assert table.acquire("v", 2.0, 4, 1.5) and table.get("u") is b  # half refilled: kept
    table.sweep(2.0)
    assert table.get("u") is None and len(table) == 1


def test_the_error_frame_is_json_with_only_the_fields_that_apply() -> None:
    plain = ErrorFrame(error=ErrorCode.INVALID_JSON, detail="x").frame()
    assert json.loads(plain.event["text"]) == {
        "type": "error",
        "error": "invalid_json",
        "detail": "x",
    }
