"""The router is plain data: tested without an event loop or a socket, against a reference model."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from asgi_groups.channels import BROADCAST, MAX_GROUP_NAME, group_channel, group_of, user_channel
from asgi_groups.router import Effect, PresenceChanged, Router, Subscribe, Unsubscribe

_ids = itertools.count()


class Tab:
    """A member: an id and a user id, nothing else."""

    def __init__(self, user_id: str | None) -> None:
        self.id = f"tab{next(_ids)}"
        self.user_id = user_id

    def __repr__(self) -> str:
        return f"<Tab {self.id} {self.user_id}>"


@pytest.fixture(autouse=True)
def no_event_loop() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_connect_subscribes_a_users_channel_once() -> None:
    r: Router[Tab] = Router()
    a, b, anon = Tab("1"), Tab("1"), Tab(None)
    assert r.connect(a) == [Subscribe("u:1")]
    assert r.connect(b) == []  # second tab, same user
    assert r.connect(a) == []  # idempotent
    assert r.connect(anon) == []  # anonymous members have no user channel
    assert r.counts == (3, 1, 0)
    assert r.disconnect(a) == []
    assert r.disconnect(b) == [Unsubscribe("u:1")]
    assert r.disconnect(b) == []  # second disconnect is a no-op
    assert r.counts == (1, 0, 0)


def test_join_and_leave_report_subscriptions_and_presence() -> None:
    r: Router[Tab] = Router()
    a, b = Tab("1"), Tab("1")
    r.connect(a)
    r.connect(b)
    assert r.join(a, "boys") == [Subscribe("g:boys"), PresenceChanged("boys", "1", 1, "join")]
    assert r.join(b, "boys") == [PresenceChanged("boys", "1", 2, None)]
    assert r.join(b, "boys") == []  # idempotent
    assert r.presence("boys") == {"1": 2}
    assert r.leave(a, "boys") == [PresenceChanged("boys", "1", 1, None)]
    assert r.leave(a, "boys") == []
    assert r.leave(b, "boys") == [Unsubscribe("g:boys"), PresenceChanged("boys", "1", 0, "leave")]
    assert r.presence("boys") == {}
    assert r.counts == (2, 1, 0)


def test_disconnect_leaves_every_group() -> None:
    r: Router[Tab] = Router()
    a, anon = Tab("7"), Tab(None)
    r.connect(a)
    r.connect(anon)
    r.join(a, "x")
    r.join(a, "y")
    r.join(anon, "x")
    effects = r.disconnect(a)
    assert set(effects) == {
        Unsubscribe("g:y"),  # x still has the anonymous member
        PresenceChanged("x", "7", 0, "leave"),
        PresenceChanged("y", "7", 0, "leave"),
        Unsubscribe("u:7"),
    }
    assert r.presence("x") == {}  # anonymous members are not in presence
    assert r.groups_of(a) == frozenset()
    assert r.get(a.id) is None
    assert list(r.recipients("g:x")) == [anon]


def test_join_needs_a_connected_member_and_a_valid_name() -> None:
    r: Router[Tab] = Router()
    a = Tab("1")
    with pytest.raises(KeyError):
        r.join(a, "x")
    r.connect(a)
    for bad in ("", "x" * (MAX_GROUP_NAME + 1), 7):
        with pytest.raises(ValueError):
            r.join(a, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            r.leave(a, bad)  # type: ignore[arg-type]
    assert r.join(a, "x" * MAX_GROUP_NAME)[0] == Subscribe("g:" + "x" * MAX_GROUP_NAME)


def test_recipients_of_each_kind_of_channel() -> None:
    r: Router[Tab] = Router()
    a1, a2, b, anon = Tab("1"), Tab("1"), Tab("2"), Tab(None)
    for tab in (a1, a2, b, anon):
        r.connect(tab)
    r.join(a1, "g")
    r.join(b, "g")
    assert set(r.recipients(group_channel("g"))) == {a1, b}
    assert set(r.recipients(user_channel(1))) == {a1, a2}  # ids compare as strings
    assert set(r.recipients(BROADCAST)) == {a1, a2, b, anon}
    assert list(r.recipients("g:nobody")) == []
    assert list(r.recipients("u:3")) == []


def test_user_channels_match_exact_ids_only() -> None:
    """A direct message goes to user "1" only, never to "11" or "21" (no substring match)."""
    r: Router[Tab] = Router()
    one, eleven, twentyone = Tab("1"), Tab("11"), Tab("21")
    for tab in (one, eleven, twentyone):
        r.connect(tab)
    assert list(r.recipients(user_channel("1"))) == [one]
    assert list(r.user("1")) == [one]
    assert set(r.recipients(user_channel("11"))) == {eleven}


def test_exclude_skips_one_member_of_every_kind_of_channel() -> None:
    r: Router[Tab] = Router()
    a1, a2, b = Tab("1"), Tab("1"), Tab("2")
    for tab in (a1, a2, b):
        r.connect(tab)
        r.join(tab, "g")
    assert set(r.recipients("g:g", a1.id)) == {a2, b}
    assert set(r.recipients(user_channel("1"), a1.id)) == {a2}  # the sender's other tab
    assert set(r.recipients(BROADCAST, b.id)) == {a1, a2}
    # excluding a member that is not a recipient, or unknown, changes nothing
    assert set(r.recipients(user_channel("1"), b.id)) == {a1, a2}
    assert set(r.recipients("g:g", "unknown")) == {a1, a2, b}


def test_presence_snapshot_lists_groups_with_users_only() -> None:
    r: Router[Tab] = Router()
    a, b, anon = Tab("1"), Tab("2"), Tab(None)
    for tab in (a, b, anon):
        r.connect(tab)
    r.join(a, "x")
    r.join(b, "x")
    r.join(anon, "y")
    assert r.presence_snapshot() == {"x": {"1": 1, "2": 1}}
    snapshot = r.presence_snapshot()
    snapshot["x"]["1"] = 99  # a copy: changing it changes nothing
    assert r.presence("x") == {"1": 1, "2": 1}


def test_channel_names() -> None:
    assert group_channel("boys") == "g:boys"
    assert user_channel(7) == "u:7"
    assert group_of("g:boys") == "boys"
    assert group_of("u:7") is None
    assert group_of(BROADCAST) is None
    with pytest.raises(ValueError):
        user_channel(None)


GROUPS = st.sampled_from(["a", "b", "c"])
USERS = st.sampled_from(["1", "2", None])


class RouterMachine(RuleBasedStateMachine):
    """connect/join/leave/disconnect against a dict-of-sets model; effects and routing checked."""

    tabs = Bundle("tabs")

    def __init__(self) -> None:
        super().__init__()
        self.r: Router[Tab] = Router()
        self.model: dict[Tab, set[str]] = {}
        self.subscribed: set[str] = set()

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Subscribe):
                assert effect.channel not in self.subscribed
                self.subscribed.add(effect.channel)
            elif isinstance(effect, Unsubscribe):
                self.subscribed.remove(effect.channel)
            else:
                expected = self.count(effect.group, effect.user_id)
                assert effect.count == expected
                # "join" exactly when the count became 1 by joining, "leave" when it became 0
                assert (effect.event == "leave") == (expected == 0)

    def count(self, group: str, user_id: str) -> int:
        return sum(1 for t, gs in self.model.items() if t.user_id == user_id and group in gs)

    @rule(target=tabs, user=USERS)
    def connect(self, user: str | None) -> Tab:
        tab = Tab(user)
        self.model[tab] = set()
        self.apply(self.r.connect(tab))
        return tab

    @rule(tab=tabs, group=GROUPS)
    def join(self, tab: Tab, group: str) -> None:
        if tab not in self.model:
            with pytest.raises(KeyError):
                self.r.join(tab, group)
            return
        fresh = group not in self.model[tab]
        self.model[tab].add(group)
        effects = self.r.join(tab, group)
        joins = [e for e in effects if isinstance(e, PresenceChanged) and e.event == "join"]
        first = fresh and tab.user_id is not None and self.count(group, tab.user_id) == 1
        assert bool(joins) == first
        self.apply(effects)

    @rule(tab=tabs, group=GROUPS)
    def leave(self, tab: Tab, group: str) -> None:
        if tab in self.model:
            self.model[tab].discard(group)
        self.apply(self.r.leave(tab, group))

    @rule(tab=consumes(tabs))
    def disconnect(self, tab: Tab) -> None:
        self.model.pop(tab, None)
        self.apply(self.r.disconnect(tab))

    @rule(tab=tabs, channel=st.sampled_from(["g:a", "g:b", "u:1", "u:2", BROADCAST]))
    def route(self, tab: Tab, channel: str) -> None:
        if channel == BROADCAST:
            expected = set(self.model)
        elif channel.startswith("g:"):
            expected = {t for t, gs in self.model.items() if channel[2:] in gs}
        else:
            expected = {t for t in self.model if t.user_id == channel[2:]}
        assert set(self.r.recipients(channel)) == expected
        assert set(self.r.recipients(channel, tab.id)) == expected - {tab}

    @invariant()
    def indexes_match_model(self) -> None:
        groups = {g for gs in self.model.values() for g in gs}
        users = {t.user_id for t in self.model if t.user_id is not None}
        assert self.subscribed == {f"g:{g}" for g in groups} | {f"u:{u}" for u in users}
        for group in ("a", "b", "c"):
            assert set(self.r.group(group)) == {t for t, gs in self.model.items() if group in gs}
            expected: dict[str, int] = {}
            for t, gs in self.model.items():
                if group in gs and t.user_id is not None:
                    expected[t.user_id] = expected.get(t.user_id, 0) + 1
            assert self.r.presence(group) == expected
        assert self.r.counts == (len(self.model), len(users), len(groups))
        for tab, mine in self.model.items():
            assert self.r.groups_of(tab) == mine
            assert self.r.get(tab.id) is tab


TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
