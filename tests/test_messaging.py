"""The messaging protocol and MessagingView through the test client (no server)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser, codes
from asgi_groups.errors import BackendUnavailable
from asgi_groups.messaging import (
    BroadcastIn,
    ChatMessage,
    DirectIn,
    ErrorCode,
    GroupIn,
    InboundError,
    InboundMessage,
    MessagingView,
    PresenceIn,
    StaticDirectory,
    TokenBucket,
    WindowCounter,
    decode_inbound,
    new_message_id,
)
from asgi_groups.testing import WebSocketTestClient
from asgi_groups.types import ASGIApp

from .support.codecs import PlainCookie
from .support.hostile import malformed_frames

PEOPLE = [
    SimpleUser(1, "greg", frozenset({"boys"})),
    SimpleUser(2, "chuck", frozenset({"boys"})),
    SimpleUser(3, "mike", frozenset({"boys"})),
    SimpleUser(4, "amanda", frozenset({"girls"})),
    SimpleUser(5, "lisa", frozenset({"girls"})),
]
IDS = {u.username: u.id for u in PEOPLE}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Quiet(MessagingView):
    """No presence announcements, so routing tests see only the messages they send."""

    announce_presence = False


class Harness:
    def __init__(self, registry: Registry, clock: FakeClock) -> None:
        self.registry = registry
        self.clock = clock
        self.view: type[MessagingView] = Quiet

    def app(self, view: type[MessagingView] | None = None, **options: Any) -> ASGIApp:
        endpoint = (view or self.view).as_asgi(
            directory=StaticDirectory(PEOPLE), clock=self.clock, **options
        )
        return GroupsMiddleware(
            endpoint, self.registry, sessions=PlainCookie(), users=InMemoryUsers(PEOPLE)
        )

    def client(self, name: str, view: type[MessagingView] | None = None) -> WebSocketTestClient:
        return WebSocketTestClient(self.app(view), cookies={"session": str(IDS[name])})


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with Registry() as registry:
        yield Harness(registry, FakeClock())


async def hello(ws: WebSocketTestClient) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    assert frame["type"] == "hello"
    return frame


async def recv(ws: WebSocketTestClient) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json()
    return frame


def strip(frame: dict[str, Any]) -> dict[str, Any]:
    """A delivered message without its per-message id and timestamp."""
    assert isinstance(frame.pop("id"), str) and isinstance(frame.pop("ts"), float)
    return frame


# -- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type": "BroadCast", "text": "hi"}', BroadcastIn(text="hi")),
        ('{"type": "bRoAdCaSt", "text": "hi"}', BroadcastIn(text="hi")),
        ('{"type": "Group", "text": "hi", "group": "boys"}', GroupIn(text="hi", group="boys")),
        (
            b'{"type": "DIRECT", "text": "hi", "user_name": "Greg"}',
            DirectIn(text="hi", user_name="Greg"),
        ),
        ('{"type": "Presence"}', PresenceIn()),
        (
            '{"type": "group", "text": "hi", "group": "boys", "extra": [1]}',
            GroupIn(text="hi", group="boys"),
        ),
    ],
)
def test_decode_valid(raw: str | bytes, expected: InboundMessage) -> None:
    assert decode_inbound(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", ErrorCode.INVALID_JSON),
        ("{", ErrorCode.INVALID_JSON),
        ("NaN", ErrorCode.INVALID_JSON),
        ("{'type': 'group'}", ErrorCode.INVALID_JSON),
        (b"\xff\xfe", ErrorCode.INVALID_UTF8),
        (b'{"type": "BroadCast", "text": "\xc3("}', ErrorCode.INVALID_UTF8),
        ('"\ud800"', ErrorCode.INVALID_UTF8),
        ("[]", ErrorCode.INVALID_MESSAGE),
        ("42", ErrorCode.INVALID_MESSAGE),
        ("null", ErrorCode.INVALID_MESSAGE),
        ('{"text": "no type"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Shout", "text": "x"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": 7, "text": "x"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Group", "text": "x"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Direct", "text": "x"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast", "text": ""}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast", "text": 5}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast", "text": ["x"]}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Group", "text": "x", "group": true}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Group", "text": "x", "group": 1e400}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "Group", "text": "x", "group": "' + "g" * 201 + '"}', ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast", "text": ' + "9" * 5000 + "}", ErrorCode.INVALID_MESSAGE),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.INVALID_MESSAGE),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, ErrorCode.INVALID_MESSAGE),
        ('{"type": "BroadCast", "text": "' + "x" * 4097 + '"}', ErrorCode.TEXT_TOO_LONG),
        ('{"type": "BroadCast", "text": "' + "é" * 2049 + '"}', ErrorCode.TEXT_TOO_LONG),
    ],
)
def test_decode_errors(raw: str | bytes, code: ErrorCode) -> None:
    result = decode_inbound(raw)
    assert isinstance(result, InboundError), result
    assert result.code == code
    assert len(result.detail) < 300  # never echoes the input back


def test_text_limit_is_in_utf8_bytes() -> None:
    assert isinstance(
        decode_inbound(json.dumps({"type": "BroadCast", "text": "é" * 2048})), BroadcastIn
    )
    assert isinstance(
        decode_inbound(json.dumps({"type": "BroadCast", "text": "x" * 4096})), BroadcastIn
    )
    result = decode_inbound(json.dumps({"type": "BroadCast", "text": "x" * 11}), max_text_bytes=10)
    assert isinstance(result, InboundError) and result.code == ErrorCode.TEXT_TOO_LONG


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "text", "group", "user_name", "x"]), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.binary(),
        json_values.map(json.dumps),
        json_values.map(lambda v: json.dumps(v).encode()),
    )
)
def test_decoder_never_raises(data: str | bytes) -> None:
    result = decode_inbound(data)
    assert isinstance(result, InboundError | BroadcastIn | GroupIn | DirectIn | PresenceIn)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["broadcast", "BroadCast", "GROUP", "group", "Direct", "dIrEcT"]),
    text=st.text(min_size=1, max_size=50),
)
def test_decoder_accepts_any_case_and_any_text(kind: str, text: str) -> None:
    message = {"type": kind, "text": text, "group": "boys", "user_name": "greg"}
    result = decode_inbound(json.dumps(message))
    assert not isinstance(result, InboundError)
    assert result.type == kind.lower() and getattr(result, "text", None) == text


def test_token_bucket_and_window_counter() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token per half second
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    counter = WindowCounter(limit=2, window=10.0)
    assert [counter.hit(t) for t in (0.0, 1.0, 2.0)] == [True, True, False]
    assert counter.hit(11.5)  # the first two have left the window
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


@given(
    st.sampled_from(["broadcast", "group", "direct"]),
    st.text(max_size=40),
    st.text(max_size=200),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_a_message_frame_is_what_the_model_would_write(
    kind: str, sender: str, text: str, group: str | None, to: str | None
) -> None:
    """The view builds delivered messages without a model; the bytes are the model's own."""
    frame = ChatMessage.frame_of(kind, sender, text, "id-1", group=group, to=to)
    written = json.loads(frame.event["text"])
    model = ChatMessage(**{k: v for k, v in written.items() if k != "from"}, from_=written["from"])
    expected = model.frame()
    assert (frame.event, frame.size, frame.json) == (expected.event, expected.size, expected.json)
    assert (model.type, model.from_, model.text, model.group, model.to) == (
        kind,
        sender,
        text,
        group,
        to,
    )


def test_server_message_ids_are_unique_valid_and_differ_in_a_forked_worker() -> None:
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for message_id in ids[:3] + ids[-3:]:
        parsed = decode_inbound(json.dumps({"type": "Broadcast", "text": "x", "id": message_id}))
        assert not isinstance(parsed, InboundError) and parsed.id == message_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: names its next message and leaves at once
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    mine = new_message_id()
    assert child.split("-")[0] != mine.split("-")[0]


# -- routing -----------------------------------------------------------------------------------


async def test_hello_tells_the_page_who_it_is(h: Harness) -> None:
    async with h.client("greg") as greg:
        assert await hello(greg) == {
            "type": "hello",
            "user": "greg",
            "groups": ["boys"],
            "all_groups": ["boys", "girls"],
            "users": ["amanda", "chuck", "greg", "lisa", "mike"],
        }


class SmallHello(Quiet):
    hello_users_max = 4


async def test_a_directory_too_big_for_the_hello_is_not_listed_and_names_still_work(
    h: Harness,
) -> None:
    """Five users over a limit of four: the hello lists none, says so, and a direct message
    by name still arrives (the page asks by name instead of picking from a list)."""
    async with h.client("greg", SmallHello) as greg, h.client("lisa", SmallHello) as lisa:
        first = await hello(greg)
        assert (first["users"], first["users_complete"]) == ([], False)
        assert first["all_groups"] == ["boys", "girls"]
        await hello(lisa)
        await greg.send_json({"type": "Direct", "user_name": "LISA", "text": "hi"})
        got = await recv(lisa)
        assert (got["type"], got["from"], got["text"]) == ("direct", "greg", "hi")


async def test_group_message_reaches_members_and_echoes_to_an_outside_sender(h: Harness) -> None:
    async with (
        h.client("greg") as greg,
        h.client("chuck") as chuck,
        h.client("amanda") as amanda,
        h.client("amanda") as amanda2,
        h.client("lisa") as lisa,
    ):
        for ws in (greg, chuck, amanda, amanda2, lisa):
            await hello(ws)
        await amanda.send_json({"type": "Group", "group": "boys", "text": "hi boys"})
        expected = {"type": "group", "from": "amanda", "text": "hi boys", "group": "boys"}
        for ws in (greg, chuck, amanda, amanda2):  # amanda's tabs see what she sent
            assert strip(await recv(ws)) == expected
        assert await lisa.receive_nothing()

        await greg.send_json({"type": "group", "group": "boys", "text": "hi"})
        for ws in (greg, chuck):
            assert strip(await recv(ws))["from"] == "greg"
        for ws in (greg, chuck, amanda, amanda2, lisa):  # exactly once, nobody else
            assert await ws.receive_nothing(0.05)


async def test_direct_message_reaches_every_tab_of_that_user_only(h: Harness) -> None:
    async with (
        h.client("greg") as greg,
        h.client("greg") as greg2,
        h.client("chuck") as chuck,
        h.client("amanda") as amanda,
    ):
        for ws in (greg, greg2, chuck, amanda):
            await hello(ws)
        await amanda.send_json({"type": "Direct", "user_name": "GREG", "text": "psst"})
        expected = {"type": "direct", "from": "amanda", "text": "psst", "to": "greg"}
        for ws in (greg, greg2, amanda):
            assert strip(await recv(ws)) == expected
        assert await chuck.receive_nothing()

        await greg.send_json({"type": "Direct", "user_name": "greg", "text": "note to self"})
        for ws in (greg, greg2):
            assert strip(await recv(ws))["to"] == "greg"
        for ws in (greg, greg2, chuck, amanda):
            assert await ws.receive_nothing(0.05)


async def test_direct_without_echo(h: Harness) -> None:
    class NoEcho(Quiet):
        echo_to_sender = False

    async with h.client("greg", NoEcho) as greg, h.client("amanda", NoEcho) as amanda:
        await hello(greg)
        await hello(amanda)
        await amanda.send_json({"type": "Direct", "user_name": "greg", "text": "psst"})
        assert strip(await recv(greg))["text"] == "psst"
        assert await amanda.receive_nothing()


async def test_broadcast_reaches_everyone_once(h: Harness) -> None:
    async with h.client("greg") as greg, h.client("amanda") as amanda, h.client("lisa") as lisa:
        for ws in (greg, amanda, lisa):
            await hello(ws)
        await lisa.send_json({"type": "BroadCast", "text": "hello all"})
        for ws in (greg, amanda, lisa):
            assert strip(await recv(ws)) == {
                "type": "broadcast",
                "from": "lisa",
                "text": "hello all",
            }
            assert await ws.receive_nothing(0.05)


async def test_default_directory_finds_connected_users(h: Harness) -> None:
    app = GroupsMiddleware(
        Quiet.as_asgi(clock=h.clock),
        h.registry,
        sessions=PlainCookie(),
        users=InMemoryUsers(PEOPLE),
    )
    async with (
        WebSocketTestClient(app, cookies={"session": "1"}) as greg,
        WebSocketTestClient(app, cookies={"session": "4"}) as amanda,
    ):
        assert (await hello(greg))["users"] == []
        await hello(amanda)
        await amanda.send_json({"type": "direct", "user_name": "Greg", "text": "hi"})
        assert strip(await recv(greg))["to"] == "greg"
        assert strip(await recv(amanda))["to"] == "greg"  # her own copy
        await amanda.send_json({"type": "direct", "user_name": "mike", "text": "offline"})
        assert (await recv(amanda))["error"] == "unknown_user"


# -- errors ------------------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str | bytes, str]] = [
    ("{not json", "invalid_json"),
    (b"\xc3\x28 not utf-8", "invalid_utf8"),
    ('{"type": "Group", "text": "no group"}', "invalid_message"),
    (json.dumps({"type": "BroadCast", "text": "x" * 5000}), "text_too_long"),
    ('{"type": "Group", "group": "nope", "text": "x"}', "unknown_group"),
    ('{"type": "Direct", "user_name": "nobody", "text": "x"}', "unknown_user"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_INPUTS, ids=[c for _, c in BAD_INPUTS])
async def test_each_error_code_one_frame_and_the_socket_stays_open(
    h: Harness, raw: str | bytes, code: str
) -> None:
    async with h.client("greg") as greg, h.client("chuck") as chuck:
        await hello(greg)
        await hello(chuck)
        if isinstance(raw, bytes):
            await greg.send_bytes(raw)
        else:
            await greg.send_text(raw)
        error = await recv(greg)
        assert error["type"] == "error" and error["error"] == code
        assert isinstance(error["detail"], str) and error["detail"]
        assert await greg.receive_nothing(0.05) and await chuck.receive_nothing(0.05)
        await greg.send_json({"type": "Group", "group": "boys", "text": "still here"})
        for ws in (greg, chuck):
            assert strip(await recv(ws))["text"] == "still here"


async def test_valid_json_in_a_binary_frame_is_accepted(h: Harness) -> None:
    async with h.client("greg") as greg:
        await hello(greg)
        await greg.send_bytes(json.dumps({"type": "BroadCast", "text": "bytes"}).encode())
        assert strip(await recv(greg))["text"] == "bytes"


async def test_forbidden_by_the_authorization_hook_delivers_nothing(h: Harness) -> None:
    class GirlsOnly(Quiet):
        """Only girls may broadcast; nobody may write to the girls group from outside."""

        async def authorize(self, message: InboundMessage) -> bool:
            if isinstance(message, BroadcastIn):
                return "girls" in self.user.groups
            if isinstance(message, GroupIn) and message.group == "girls":
                return "girls" in self.user.groups
            return True

    async with (
        h.client("greg", GirlsOnly) as greg,
        h.client("chuck", GirlsOnly) as chuck,
        h.client("amanda", GirlsOnly) as amanda,
    ):
        for ws in (greg, chuck, amanda):
            await hello(ws)
        for message in (
            {"type": "BroadCast", "text": "x"},
            {"type": "Group", "group": "girls", "text": "x"},
        ):
            await greg.send_json(message)
            assert await recv(greg) == {
                "type": "error",
                "error": "forbidden",
                "detail": "you may not send this message",
            }
            for ws in (greg, chuck, amanda):
                assert await ws.receive_nothing(0.05)
        await amanda.send_json({"type": "BroadCast", "text": "allowed"})
        for ws in (greg, chuck, amanda):
            assert strip(await recv(ws))["text"] == "allowed"


async def test_backend_outage_is_an_error_frame_not_a_crash(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> None:
        raise BackendUnavailable("redis is down")

    async with h.client("greg") as greg:
        await hello(greg)
        monkeypatch.setattr(h.registry, "broadcast", down)
        await greg.send_json({"type": "BroadCast", "text": "x"})
        assert (await recv(greg))["error"] == "unavailable"
        monkeypatch.undo()
        await greg.send_json({"type": "BroadCast", "text": "back"})
        assert strip(await recv(greg))["text"] == "back"


# -- abuse limits ------------------------------------------------------------------------------


async def test_rate_limit_refuses_then_closes_4429(h: Harness) -> None:
    class Strict(Quiet):
        rate_limit = 1.0
        rate_burst = 5
        rate_limit_strikes = 3

    async with h.client("greg", Strict) as greg:
        await hello(greg)
        send = {"type": "BroadCast", "text": "x"}
        for _ in range(5):  # the burst
            await greg.send_json(send)
            assert (await recv(greg))["type"] == "broadcast"
        await greg.send_json(send)
        assert (await recv(greg))["error"] == "rate_limited"
        h.clock.advance(2.0)  # two tokens back
        for _ in range(2):
            await greg.send_json(send)
            assert (await recv(greg))["type"] == "broadcast"
        for _ in range(2):  # strikes 2 and 3: refused, still open
            await greg.send_json(send)
            assert (await recv(greg))["error"] == "rate_limited"
        await greg.send_text("flood")  # the 4th strike closes
        assert (await recv(greg))["error"] == "rate_limited"
        assert await greg.receive_close() == codes.RATE_LIMITED


async def test_rate_limited_frames_are_not_parsed(h: Harness) -> None:
    class Strict(Quiet):
        rate_limit = 1.0
        rate_burst = 1

    async with h.client("greg", Strict) as greg:
        await hello(greg)
        await greg.send_text("not json")
        assert (await recv(greg))["error"] == "invalid_json"
        await greg.send_text("not json")
        assert (await recv(greg))["error"] == "rate_limited"


async def test_error_budget_closes_4408_and_the_window_slides(h: Harness) -> None:
    class Budget(Quiet):
        error_budget = 3

    async with h.client("greg", Budget) as greg:
        await hello(greg)
        for _ in range(3):
            await greg.send_text("bad")
            assert (await recv(greg))["error"] == "invalid_json"
        h.clock.advance(61.0)  # those three are forgotten
        for _ in range(3):
            await greg.send_text("bad")
            assert (await recv(greg))["error"] == "invalid_json"
        await greg.send_text("bad")
        assert (await recv(greg))["error"] == "invalid_json"
        assert await greg.receive_close() == codes.TOO_MANY_ERRORS


async def test_default_limits_close_a_flood(h: Harness) -> None:
    async with h.client("greg", MessagingView) as greg:
        await hello(greg)
        await recv(greg)  # presence
        budget = MessagingView.error_budget
        assert budget is not None
        for _ in range(budget):  # 30 errors a minute are tolerated
            await greg.send_text("{}")
            assert (await recv(greg))["error"] == "invalid_message"
        await greg.send_text("{}")  # the 31st still gets its error frame, then the close
        assert (await recv(greg))["error"] == "invalid_message"
        assert await greg.receive_close() == codes.TOO_MANY_ERRORS


async def test_a_thousand_malformed_frames_one_error_each_socket_stays_open(h: Harness) -> None:
    class Tolerant(Quiet):
        error_budget = None
        rate_limit = None
        user_rate_limit = None
        max_message_size = 256 * 1024

    async with h.client("greg", Tolerant) as greg, h.client("chuck", Tolerant) as chuck:
        await hello(greg)
        await hello(chuck)
        frames = malformed_frames()
        for raw, code in frames:
            if isinstance(raw, bytes):
                await greg.send_bytes(raw)
            else:
                await greg.send_text(raw)
            error = await recv(greg)
            assert error["type"] == "error" and error["error"] == code, (raw[:40], error)
        assert await greg.receive_nothing(0.05) and await chuck.receive_nothing(0.05)
        await greg.send_json({"type": "Group", "group": "boys", "text": "after 1000"})
        for ws in (greg, chuck):
            assert strip(await recv(ws))["text"] == "after 1000"


# -- presence ----------------------------------------------------------------------------------


async def test_presence_on_connect_disconnect_and_on_request(h: Harness) -> None:
    h.view = MessagingView
    async with h.client("greg") as greg:
        await hello(greg)
        assert await recv(greg) == {"type": "presence", "group": "boys", "users": ["greg"]}
        async with h.client("chuck") as chuck:
            await hello(chuck)
            both = {"type": "presence", "group": "boys", "users": ["chuck", "greg"]}
            assert await recv(chuck) == both
            assert await recv(greg) == both
            async with h.client("amanda") as amanda:  # other group: greg hears nothing
                await hello(amanda)
                assert await recv(amanda) == {
                    "type": "presence",
                    "group": "girls",
                    "users": ["amanda"],
                }
                assert await greg.receive_nothing(0.05)
            await greg.send_json({"type": "Presence"})
            assert await recv(greg) == both
        assert await recv(greg) == {"type": "presence", "group": "boys", "users": ["greg"]}


class Tracking(MessagingView):
    seen: ClassVar[list[str]] = []

    async def on_connect(self, *args: Any) -> None:
        await super().on_connect(*args)
        await self.join("lobby")
        self.seen.append("connected")

    async def group_exists(self, name: str) -> bool:
        return name == "lobby" or await super().group_exists(name)


async def test_groups_joined_later_get_presence_on_disconnect(h: Harness) -> None:
    async with h.client("greg", Tracking) as greg:
        await hello(greg)
        assert (await recv(greg))["group"] == "boys"
        async with h.client("amanda", Tracking) as amanda:
            await hello(amanda)
            assert (await recv(amanda))["group"] == "girls"
            await amanda.send_json({"type": "Group", "group": "lobby", "text": "hi lobby"})
            assert strip(await recv(greg))["group"] == "lobby"
            assert strip(await recv(amanda))["group"] == "lobby"
        assert await recv(greg) == {"type": "presence", "group": "lobby", "users": ["greg"]}
