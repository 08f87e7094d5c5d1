"""Positions, bounded history and the recovery decision: plain data, a clock passed in."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asgi_groups.frames import Frame
from asgi_groups.history import (
    EPOCH_CHANGED,
    EXPIRED,
    FROM_THE_FUTURE,
    GAP_TOO_LARGE,
    REPLAY_CAP,
    Entry,
    History,
    HistoryLimits,
    Position,
    Recovery,
    decide,
)


def texts(entries: list[Entry]) -> list[str]:
    return [str(e.frame.payload) for e in entries]


def publish(history: History, channel: str, count: int, now: float = 0.0) -> list[Position]:
    return [history.append(channel, Frame.text(f"m{i}"), now) for i in range(count)]


def test_offsets_count_each_channels_messages_from_one() -> None:
    h = History()
    a = publish(h, "g:a", 3)
    b = publish(h, "g:b", 1)
    assert [p.offset for p in a] == [1, 2, 3] and b[0].offset == 1
    assert a[0].epoch == a[2].epoch != b[0].epoch  # one epoch per channel history
    assert h.top("g:a", 0) == a[2]


def test_recovery_replays_exactly_what_was_missed_in_order() -> None:
    h = History()
    seen = publish(h, "g:a", 3)[-1]
    h.append("g:a", Frame.text("x"), 1)
    h.append("g:a", Frame.text("y"), 2)
    r = h.since("g:a", seen, 3)
    assert r.recovered and r.reason is None
    assert texts(r.entries) == ["x", "y"] and [e.offset for e in r.entries] == [4, 5]
    assert r.position == Position(seen.epoch, 5)
    up_to_date = h.since("g:a", r.position, 3)
    assert up_to_date.recovered and up_to_date.entries == []


def test_a_client_that_saw_nothing_gets_everything_since_the_channel_started() -> None:
    h = History()
    empty = h.top("g:a", 0)
    assert empty.offset == 0
    publish(h, "g:a", 2)
    r = h.since("g:a", empty, 1)
    assert r.recovered and texts(r.entries) == ["m0", "m1"]


def test_more_missed_than_kept_is_a_gap() -> None:
    h = History(HistoryLimits(size=3))
    seen = publish(h, "g:a", 1)[-1]
    publish(h, "g:a", 4)  # offsets 2..5; only 3..5 kept
    r = h.since("g:a", seen, 0)
    assert not r.recovered and r.reason == GAP_TOO_LARGE and r.entries == []
    assert r.position is not None and r.position.offset == 5
    just_in = h.since("g:a", Position(seen.epoch, 2), 0)
    assert just_in.recovered and texts(just_in.entries) == ["m1", "m2", "m3"]


def test_messages_older_than_ttl_are_gone_and_the_reason_says_so() -> None:
    h = History(HistoryLimits(size=10, ttl=60))
    seen = h.append("g:a", Frame.text("old"), 0)
    h.append("g:a", Frame.text("missed"), 10)
    h.append("g:a", Frame.text("recent"), 50)
    r = h.since("g:a", seen, 75)  # "missed" (t=10) is past its 60 s
    assert not r.recovered and r.reason == EXPIRED
    assert texts(h.latest("g:a", 10, 75)) == ["recent"]


def test_an_idle_client_of_an_idle_channel_missed_nothing() -> None:
    h = History(HistoryLimits(ttl=60, meta_ttl=3600))
    seen = publish(h, "g:a", 2, now=0)[-1]
    r = h.since("g:a", seen, 600)  # the messages aged out, but none came after them
    assert r.recovered and r.entries == [] and r.position == seen


def test_a_channel_idle_past_ttl_starts_a_new_history() -> None:
    h = History(HistoryLimits(ttl=60, meta_ttl=120))
    seen = publish(h, "g:a", 2, now=0)[-1]
    assert h.prune(119) == 0
    assert h.prune(121) == 1 and h.stats()["channels"] == 0  # idle channels leak nothing
    fresh = h.append("g:a", Frame.text("new"), 130)
    assert fresh.offset == 1 and fresh.epoch != seen.epoch  # never the same position twice
    r = h.since("g:a", seen, 130)
    assert not r.recovered and r.reason == EXPIRED and r.position == fresh


def test_a_position_from_another_history_is_an_epoch_change() -> None:
    before = History()
    seen = publish(before, "g:a", 2)[-1]
    after = History()  # the process restarted: its memory is gone
    publish(after, "g:a", 5)
    r = after.since("g:a", seen, 0)
    assert not r.recovered and r.reason == EPOCH_CHANGED


def test_replay_is_capped() -> None:
    h = History(HistoryLimits(size=500, max_replay=300))
    seen = publish(h, "g:a", 1)[-1]
    publish(h, "g:a", 301)
    r = h.since("g:a", seen, 0)
    assert not r.recovered and r.reason == REPLAY_CAP
    assert h.since("g:a", Position(seen.epoch, 2), 0).recovered  # exactly 300 is fine


@pytest.mark.parametrize("offset", [-1, 4, 10**18])
def test_offsets_that_cannot_be_are_refused(offset: int) -> None:
    h = History()
    epoch = publish(h, "g:a", 3)[-1].epoch
    r = h.since("g:a", Position(epoch, offset), 0)
    assert not r.recovered and r.reason == FROM_THE_FUTURE and r.entries == []


def test_forged_epochs_and_unknown_channels_give_nothing() -> None:
    h = History()
    publish(h, "g:a", 3)
    for epoch in ("", "nonsense", h.epoch, h.epoch + ":99"):
        r = h.since("g:a", Position(epoch, 1), 0)
        assert not r.recovered and r.entries == []
    unknown = h.since("g:nobody", Position("x:1", 1), 0)
    assert not unknown.recovered and unknown.entries == [] and unknown.reason == EPOCH_CHANGED
    assert h.since("g:a", Position(h.epoch + ":99", 1), 0).reason == EXPIRED  # ours, but lapsed


def test_memory_is_bounded_by_size_times_channels() -> None:
    h = History(HistoryLimits(size=5))
    for channel in ("g:a", "g:b"):
        publish(h, channel, 50)
    kept = sum(len(f"m{i}") for i in range(45, 50))  # the newest five of each channel
    assert h.stats() == {"channels": 2, "messages": 10, "bytes": 2 * kept}


class HistoryMachine(RuleBasedStateMachine):
    """Appends with a moving clock and resumes from positions clients really saw: a recovery
    is exact (every missed message, in order, none twice) or says it is not."""

    limits = HistoryLimits(size=4, ttl=10, meta_ttl=30, max_replay=6)

    def __init__(self) -> None:
        super().__init__()
        self.h = History(self.limits)
        self.now = 0.0
        self.log: dict[str, list[tuple[Position, str]]] = {"g:a": [], "g:b": []}
        self.seen: list[tuple[str, Position]] = []
        self.texts = (f"t{i}" for i in itertools.count())

    @rule(channel=st.sampled_from(["g:a", "g:b"]), advance=st.sampled_from([0, 1, 3, 11]))
    def publish(self, channel: str, advance: int) -> None:
        self.now += advance
        text = next(self.texts)
        position = self.h.append(channel, Frame.text(text), self.now)
        self.log[channel].append((position, text))

    @rule(channel=st.sampled_from(["g:a", "g:b"]))
    def a_client_looks(self, channel: str) -> None:
        self.seen.append((channel, self.h.top(channel, self.now)))

    @precondition(lambda self: bool(self.seen))
    @rule(pick=st.integers(min_value=0), advance=st.sampled_from([0, 2, 11]))
    def a_client_resumes(self, pick: int, advance: int) -> None:
        self.now += advance
        channel, seen = self.seen[pick % len(self.seen)]
        r = self.h.since(channel, seen, self.now)
        log = self.log[channel]
        if seen.offset == 0:
            later = [text for position, text in log if position.epoch == seen.epoch]
        else:
            index = next(i for i, (position, _) in enumerate(log) if position == seen)
            later = [text for _, text in log[index + 1 :]]
        if r.recovered:
            assert texts(r.entries) == later
        else:
            assert r.entries == [] and r.reason is not None
            # either something was missed, or the channel was forgotten (a new epoch)
            assert later or r.position.epoch != seen.epoch

    @invariant()
    def bounded(self) -> None:
        stats = self.h.stats()
        assert stats["messages"] <= self.limits.size * stats["channels"]


TestHistoryMachine = HistoryMachine.TestCase
TestHistoryMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


async def test_memory_backend_forgets_idle_channels_while_publishing() -> None:
    """History memory stays bounded: channels idle past meta_ttl go in a later publish's sweep."""
    from asgi_groups import Registry
    from asgi_groups.backends.memory import PRUNE_EVERY, MemoryBackend

    clock = [1000.0]
    backend = MemoryBackend(clock=lambda: clock[0])
    registry = Registry(history=HistoryLimits(size=5, ttl=1, meta_ttl=1), backend=backend)
    async with registry:
        for n in range(50):
            await registry.send_group(f"room{n}", "x")
        assert registry.stats().backend["history"]["channels"] == 50
        clock[0] += PRUNE_EVERY + 2
        await registry.send_group("busy", "y")
        assert registry.stats().backend["history"] == {"channels": 1, "messages": 1, "bytes": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "^size and max_replay must be at least 1$"),
        ({"max_replay": 0}, "^size and max_replay must be at least 1$"),
        ({"ttl": 0}, "^ttl must be positive and meta_ttl at least ttl$"),
        ({"ttl": 10, "meta_ttl": 9.9}, "^ttl must be positive and meta_ttl at least ttl$"),
    ],
)
def test_history_limits_refuse_what_cannot_work(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HistoryLimits(**options)  # type: ignore[arg-type]


def test_history_limits_at_their_bounds_are_accepted() -> None:
    limits = HistoryLimits(size=1, max_replay=1, ttl=0.001, meta_ttl=0.001)
    assert (limits.size, limits.max_replay) == (1, 1)


TOP = Position("p:1", 10)


def kept(first: int, last: int) -> list[Entry]:
    return [Entry(n, Frame.text(str(n)), 0.0) for n in range(first, last + 1)]


SEVEN_TO_TEN = kept(7, 10)


@pytest.mark.parametrize(
    ("position", "after", "count", "expected"),
    [
        (Position("other:1", 3), [], 10, Recovery(False, TOP, reason=EPOCH_CHANGED)),
        (Position("p:1", 11), [], 10, Recovery(False, TOP, reason=FROM_THE_FUTURE)),
        (Position("p:1", -1), [], 10, Recovery(False, TOP, reason=FROM_THE_FUTURE)),
        (Position("p:1", 10), [], 10, Recovery(True, TOP)),
        (Position("p:1", 6), SEVEN_TO_TEN, 10, Recovery(True, TOP, SEVEN_TO_TEN)),
        # one entry short at the front (7 is gone): a gap, however many are kept
        (Position("p:1", 6), kept(8, 10), 3, Recovery(False, TOP, reason=GAP_TOO_LARGE)),
        # the right first entry but one missing later
        (
            Position("p:1", 6),
            [*kept(7, 8), *kept(10, 10)],
            3,
            Recovery(False, TOP, reason=GAP_TOO_LARGE),
        ),
    ],
)
def test_decide_answers_exactly(
    position: Position, after: list[Entry], count: int, expected: Recovery
) -> None:
    limits = HistoryLimits(size=3, max_replay=5)
    assert decide(TOP, position, after, count, limits) == expected


def test_decide_at_the_replay_cap_and_the_size() -> None:
    limits = HistoryLimits(size=4, max_replay=4)
    at_cap = decide(TOP, Position("p:1", 6), SEVEN_TO_TEN, 4, limits)
    assert at_cap == Recovery(True, TOP, SEVEN_TO_TEN)
    over = decide(TOP, Position("p:1", 5), kept(7, 10), 4, limits)
    assert over == Recovery(False, TOP, reason=REPLAY_CAP)
    # exactly size missed, fewer kept than size: they aged out
    aged = decide(TOP, Position("p:1", 6), kept(9, 10), 2, limits)
    assert aged == Recovery(False, TOP, reason=EXPIRED)
    # exactly size missed but size kept: the history turned over
    full = decide(TOP, Position("p:1", 6), kept(8, 10), 4, limits)
    assert full == Recovery(False, TOP, reason=GAP_TOO_LARGE)


def test_epochs_are_64_random_bits_and_channel_histories_count_from_one() -> None:
    history = History(HistoryLimits())
    assert len(history.epoch) == 16 and int(history.epoch, 16) >= 0
    first = history.top("g:a", 0.0)
    second = history.top("g:b", 0.0)
    assert (first.epoch, second.epoch) == (f"{history.epoch}:1", f"{history.epoch}:2")
    lapsed = History(HistoryLimits(ttl=1, meta_ttl=1))
    old = lapsed.top("g:a", 0.0)
    assert lapsed.since("g:a", old, 5.0) == Recovery(
        False, Position(f"{lapsed.epoch}:2", 0), reason=EXPIRED
    )


def test_latest_and_expiry_at_their_bounds() -> None:
    history = History(HistoryLimits(size=10, ttl=10, meta_ttl=20))
    for n in range(3):
        history.append("g:a", Frame.text("x" * (n + 1)), float(n))
    assert history.latest("g:a", 0, 3.0) == []
    assert [e.offset for e in history.latest("g:a", 1, 3.0)] == [3]
    assert [e.offset for e in history.latest("g:a", 5, 3.0)] == [1, 2, 3]
    assert history.latest("g:unknown", 5, 3.0) == []
    assert history.stats() == {"channels": 1, "messages": 3, "bytes": 6}
    # at exactly ttl a message is gone; the bytes kept go down by its size
    assert [e.offset for e in history.latest("g:a", 5, 10.0)] == [2, 3]
    assert history.stats()["bytes"] == 5
    # at exactly meta_ttl after the last message the channel is forgotten
    assert history.prune(22.0) == 1 and history.stats()["channels"] == 0
