"""The stream of a recoverable connection, as plain code: the seam between replay and live."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_groups.frames import Frame, encode, encode_json
from asgi_groups.history import Entry, Position
from asgi_groups.stream import (
    Stream,
    error_frame,
    history_frame,
    message_frame,
    parse_positions,
    protocol_frame,
)

EPOCH = "e:1"


def live(stream: Stream, offset: int, channel: str = "g:a") -> Frame | None:
    position = Position(EPOCH, offset)
    return stream.offer(channel, position, message_frame(channel, position, encode_json(offset)))


def offsets(frames: list[Frame]) -> list[int]:
    return [json.loads(f.event["text"])["offset"] for f in frames]


def entries(first: int, last: int) -> list[Entry]:
    return [Entry(n, encode_json(n), 0.0) for n in range(first, last + 1)]


def test_live_messages_wait_until_released_then_follow_the_replay() -> None:
    stream = Stream(max_held=10)
    assert stream.holding
    assert live(stream, 6) is None and live(stream, 7) is None
    stream.start("g:a", Position(EPOCH, 3))
    replayed = stream.replay("g:a", EPOCH, entries(4, 6))  # history read after 6 was published
    released = stream.release()
    assert offsets(replayed) == [4, 5, 6]
    assert offsets(released) == [7]  # 6 came in the replay: not twice
    assert not stream.holding
    assert offsets([f for f in [live(stream, 7), live(stream, 8)] if f]) == [8]


def test_hold_is_bounded() -> None:
    stream = Stream(max_held=2)
    live(stream, 1)
    live(stream, 2)
    assert not stream.overflowed
    live(stream, 3)
    assert stream.overflowed


def test_a_new_epoch_is_taken_not_dropped() -> None:
    stream = Stream(max_held=10)
    stream.start("g:a", Position(EPOCH, 50))
    stream.release()
    frame = stream.offer("g:a", Position("other:1", 1), encode("x"))
    assert frame is not None
    assert stream.positions["g:a"] == Position("other:1", 1)


def test_channels_without_positions_pass_everything() -> None:
    stream = Stream(max_held=10)
    stream.release()
    assert stream.offer("*", None, encode("a")) is not None
    assert stream.offer("*", None, encode("a")) is not None


def test_subscribed_at_is_just_before_the_first_held_message() -> None:
    stream = Stream(max_held=10)
    live(stream, 8, "g:b")
    live(stream, 5)
    assert stream.subscribed_at("g:a", Position(EPOCH, 9)) == Position(EPOCH, 4)
    assert stream.subscribed_at("g:c", Position(EPOCH, 9)) == Position(EPOCH, 9)
    # a held message of another epoch says nothing about this top
    assert stream.subscribed_at("g:a", Position("new:1", 2)) == Position("new:1", 2)


@given(
    missed_from=st.integers(0, 20),
    subscribed=st.integers(0, 20),
    read_extra=st.integers(0, 20),
    held_extra=st.integers(0, 20),
    after=st.integers(0, 20),
    duplicates=st.lists(st.integers(1, 100), max_size=10),
)
def test_every_message_exactly_once_in_order_whatever_the_interleaving(
    missed_from: int,
    subscribed: int,
    read_extra: int,
    held_extra: int,
    after: int,
    duplicates: list[int],
) -> None:
    """The client saw up to ``p``; this connection subscribed after message ``s``; history was
    read at ``r >= s``; live messages up to ``m >= r`` were held; more follow; an at-least-once
    transport may repeat any message. The client gets ``p+1 ..`` exactly once, in order."""
    p = min(missed_from, subscribed)
    s = subscribed
    r = s + read_extra
    m = r + held_extra
    n = m + after
    stream = Stream(max_held=1000)
    for offset in range(s + 1, m + 1):
        live(stream, offset)
    for offset in duplicates:
        if offset <= m:
            live(stream, offset)  # a repeat during the hold
    stream.start("g:a", Position(EPOCH, p))
    out = stream.replay("g:a", EPOCH, entries(p + 1, r)) + stream.release()
    for offset in range(m + 1, n + 1):
        frame = live(stream, offset)
        if frame is not None:
            out.append(frame)
        for repeat in duplicates:
            if repeat <= offset and (frame := live(stream, repeat)) is not None:
                out.append(frame)
    assert offsets(out) == list(range(p + 1, n + 1))


def test_envelopes_carry_json_text_and_binary() -> None:
    position = Position(EPOCH, 3)
    as_json = json.loads(message_frame("g:a", position, encode_json({"k": [1]})).event["text"])
    as_text = json.loads(message_frame("g:a", position, encode('say "hi"\n')).event["text"])
    as_bytes = json.loads(message_frame("*", None, encode(b"\x00\xff")).event["text"])
    assert as_json == {
        "type": "ag.message",
        "channel": "g:a",
        "epoch": EPOCH,
        "offset": 3,
        "data": {"k": [1]},
    }
    assert as_text["data"] == 'say "hi"\n'
    assert as_bytes == {"type": "ag.message", "channel": "*", "data": "AP8=", "encoding": "base64"}
    answer = json.loads(
        history_frame(7, "g:a", position, [Entry(3, encode("x"), 0.0)]).event["text"]
    )
    assert answer == {
        "type": "ag.history",
        "id": 7,
        "channel": "g:a",
        "epoch": EPOCH,
        "offset": 3,
        "messages": [{"offset": 3, "data": "x"}],
    }


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"g:a": []},
        {"g:a": {"epoch": "", "offset": 1}},
        {"g:a": {"epoch": "e", "offset": 1.5}},
        {"g:a": {"epoch": "e", "offset": "1"}},
        {"g:a": {"epoch": "e", "offset": False}},
        {f"g:{n}": {"epoch": "e", "offset": 1} for n in range(1001)},
    ],
)
def test_malformed_positions_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_positions(value)


def test_positions_parse() -> None:
    assert parse_positions(None) == {}
    assert parse_positions({"u:1": {"epoch": "e", "offset": 0}}) == {"u:1": Position("e", 0)}


def test_stream_start_sets_or_forgets_where_a_channel_goes_on() -> None:
    stream = Stream(max_held=10)
    stream.release()
    stream.start("g:a", Position(EPOCH, 5))
    assert live(stream, 5) is None  # not past where it goes on
    assert live(stream, 6) is not None
    stream.start("g:never-seen", None)  # nothing to forget: fine
    stream.start("g:a", None)  # forgotten: anything passes, and sets it again
    assert live(stream, 2) is not None
    assert stream.positions == {"g:a": Position(EPOCH, 2)}
    assert not Stream(max_held=1).overflowed


def test_subscribed_at_boundaries() -> None:
    stream = Stream(max_held=10)
    live(stream, 9)
    assert stream.subscribed_at("g:a", Position(EPOCH, 9)) == Position(EPOCH, 8)
    assert stream.subscribed_at("g:a", Position(EPOCH, 8)) == Position(EPOCH, 8)  # held is newer
    other = Stream(max_held=10)
    other.offer("g:a", Position("old:1", 3), encode("x"))
    assert other.subscribed_at("g:a", Position(EPOCH, 9)) == Position(EPOCH, 9)


def test_replayed_frames_name_their_channel() -> None:
    stream = Stream(max_held=10)
    stream.start("u:é", Position(EPOCH, 0))
    (frame,) = stream.replay("u:é", EPOCH, entries(1, 1))
    assert json.loads(frame.event["text"])["channel"] == "u:é"


def test_protocol_frames_are_compact_utf8_json() -> None:
    frame = protocol_frame({"type": "ag.welcome", "user": "zoë", "channels": {"g:é": {}}})
    text = '{"type":"ag.welcome","user":"zoë","channels":{"g:é":{}}}'
    assert frame.event == {"type": "websocket.send", "text": text}
    assert frame.size == len(text.encode()) and frame.json is True
    error = error_frame("forbidden", "not yours: é", 7)
    assert error.event["text"] == (
        '{"type":"ag.error","error":"forbidden","detail":"not yours: é","id":7}'
    )
    assert json.loads(error_frame("invalid", "bad").event["text"]) == {
        "type": "ag.error",
        "error": "invalid",
        "detail": "bad",
    }


def test_envelopes_keep_utf8_and_report_its_size() -> None:
    position = Position(EPOCH, 1)
    frame = message_frame("g:café", position, encode("né"))
    text = '{"type":"ag.message","channel":"g:café","epoch":"e:1","offset":1,"data":"né"}'
    assert frame.event["text"] == text and frame.size == len(text.encode())
    answer = history_frame(
        "é", "g:café", position, [Entry(1, encode("a"), 0.0), Entry(2, encode("b"), 0.0)]
    )
    assert answer.event["text"] == (
        '{"type":"ag.history","id":"é","channel":"g:café","epoch":"e:1","offset":1,'
        '"messages":[{"offset":1,"data":"a"},{"offset":2,"data":"b"}]}'
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "^positions must be an object$"),
        ({"g:a": 1}, "position of 'g:a' must be an object"),
        ({"g:a": {"epoch": "e" * 65, "offset": 1}}, "epoch of 'g:a' must be a short string"),
        ({"g:a": {"epoch": "e", "offset": 2**63}}, "offset of 'g:a' must be a non-negative"),
        ({f"g:{n}": {"epoch": "e", "offset": 1} for n in range(1001)}, "at most 1000 positions"),
    ],
)
def test_malformed_positions_say_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_positions(value)


def test_positions_at_their_limits_are_accepted() -> None:
    most = {f"g:{n}": {"epoch": "e" * 64, "offset": 2**63 - 1} for n in range(1000)}
    parsed = parse_positions(most)
    assert len(parsed) == 1000 and parsed["g:0"] == Position("e" * 64, 2**63 - 1)
