"""Property tests: no inbound frame and no Cookie header can crash a view or the middleware.

The decoder and each codec are fuzzed on their own in ``test_messaging`` / ``test_sessions``;
here arbitrary input goes through the whole ASGI stack (middleware, view, registry) and the
socket must answer as the protocol says: one frame per inbound frame, or a clean 403.
"""

from __future__ import annotations

import asyncio
import json
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_groups import GroupsMiddleware, InMemoryUsers, Registry, SimpleUser
from asgi_groups.messaging import MessagingView, StaticDirectory
from asgi_groups.sessions import (
    CraxSessionCookie,
    QuartSessionCookie,
    SignedCookie,
    StarletteSessionCookie,
)
from asgi_groups.testing import WebSocketTestClient

PEOPLE = [
    SimpleUser(1, "greg", frozenset({"boys"})),
    SimpleUser(2, "amanda", frozenset({"girls"})),
]
KEY = "fuzz-secret"
CODECS = [
    StarletteSessionCookie(KEY),
    QuartSessionCookie(KEY),
    CraxSessionCookie(KEY, cookie_name="session_id"),
    SignedCookie(KEY),
]


class Tolerant(MessagingView):
    """No budget, no rate limit, no presence: every inbound frame gets exactly one reply."""

    announce_presence = False
    error_budget = None
    rate_limit = None


class Failures(logging.Handler):
    """Collects ERROR records of the library (a hook that raised is logged there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "text", "group", "user_name", "x"]), children, max_size=4
        )
    ),
    max_leaves=12,
)
protocol_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["BroadCast", "Group", "Direct", "Presence", "group", "nope"])},
    optional={
        "text": st.text(max_size=40) | st.integers(),
        "group": st.sampled_from(["boys", "girls", "", "nobody", "x" * 201]) | st.integers(),
        "user_name": st.sampled_from(["greg", "AMANDA", "nobody", ""]) | st.none(),
    },
)
frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.map(json.dumps),
    json_values.map(lambda v: json.dumps(v).encode()),
    protocol_like.map(json.dumps),
    protocol_like.map(lambda v: json.dumps(v).encode()),
)
REPLIES = {"error", "broadcast", "group", "direct", "presence"}


async def exchange(inputs: list[str | bytes]) -> None:
    failures = Failures()
    logging.getLogger("asgi_groups").addHandler(failures)
    try:
        async with Registry() as registry:
            view = Tolerant.as_asgi(directory=StaticDirectory(PEOPLE))
            app = GroupsMiddleware(view, registry, sessions=CODECS[0], users=InMemoryUsers(PEOPLE))
            cookie = CODECS[0].encode({"user_id": 1})
            async with WebSocketTestClient(app, cookies={"session": cookie}) as ws:
                assert (await ws.receive_json())["type"] == "hello"
                for data in inputs:
                    if isinstance(data, bytes):
                        await ws.send_bytes(data)
                    else:
                        await ws.send_text(data)
                    reply = await ws.receive_json()
                    assert reply["type"] in REPLIES, (data, reply)
                    assert await ws.receive_nothing(0)  # exactly one reply
                await ws.send_json({"type": "Direct", "user_name": "greg", "text": "alive"})
                assert (await ws.receive_json())["text"] == "alive"
            assert registry.stats().connections == 0
    finally:
        logging.getLogger("asgi_groups").removeHandler(failures)
    assert failures.records == [], [r.getMessage() for r in failures.records]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=1, max_size=6))
def test_arbitrary_frames_get_one_reply_each_and_never_crash_the_view(
    inputs: list[str | bytes],
) -> None:
    """Any sequence of text or binary frames gets one reply frame each (an error or a routed
    message), nothing is logged as a failure, and the socket still works afterwards."""
    asyncio.run(exchange(inputs))


async def handshake(header: str) -> tuple[bool, int | None]:
    async with Registry() as registry:
        view = Tolerant.as_asgi(directory=StaticDirectory(PEOPLE))
        app = GroupsMiddleware(view, registry, sessions=CODECS, users=InMemoryUsers(PEOPLE))
        ws = WebSocketTestClient(app, headers=[("cookie", header)])
        accepted = await ws.connect()
        if accepted:
            await ws.disconnect()
        return accepted, ws.status


cookie_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300
) | st.lists(
    st.tuples(
        st.sampled_from(["session", "session_id", "asgi_groups_session", "x", ""]),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    ),
    max_size=4,
).map(lambda pairs: "; ".join(f"{k}={v}" for k, v in pairs))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cookie_text)
def test_arbitrary_cookie_headers_are_refused_403_never_an_error(header: str) -> None:
    """Any Cookie header, run through all four codecs, leaves the user anonymous: the
    login-required view answers 403, never an exception or a 500."""
    accepted, status = asyncio.run(handshake(header))
    assert (accepted, status) == (False, 403)


def test_a_valid_cookie_among_garbage_still_logs_in() -> None:
    """The fuzzed handshake is not vacuous: a valid cookie after broken pairs is accepted."""
    for codec in CODECS:
        value = codec.encode({"user_id": 2, "username": "amanda"})
        header = f'junk; =x; "broken; {codec.cookie_name}={value}; tail="'
        accepted, _ = asyncio.run(handshake(header))
        assert accepted, codec
