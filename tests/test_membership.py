"""Membership is plain data: tested without an event loop, and against a reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from asgi_groups.membership import Membership


@dataclass(eq=False)
class Tab:
    user_id: str | None
    name: str = field(default="tab")

    def __hash__(self) -> int:
        return id(self)


def test_join_reports_first_and_last_member() -> None:
    m: Membership[Tab] = Membership()
    a, b = Tab("1"), Tab("1")
    assert m.add(a) is True  # first tab of user 1
    assert m.add(b) is False  # second tab, same user
    assert m.join(a, "boys") is True
    assert m.join(b, "boys") is False
    assert m.join(b, "boys") is False  # idempotent
    assert m.presence("boys") == {"1": 2}
    assert m.leave(a, "boys") is False
    assert m.leave(b, "boys") is True  # group now empty
    assert list(m.group_names()) == []


def test_remove_leaves_every_group_and_empties_indexes() -> None:
    m: Membership[Tab] = Membership()
    a, anon = Tab("7"), Tab(None)
    m.add(a)
    m.add(anon)
    for group in ("x", "y"):
        m.join(a, group)
    m.join(anon, "x")
    removed = m.remove(a)
    assert removed is not None
    assert removed.groups == ["y"]  # x still has the anonymous member
    assert removed.user_gone is True
    assert m.presence("x") == {}  # anonymous members are not in presence
    assert m.remove(a) is None  # second remove is a no-op
    m.remove(anon)
    assert m.counts == (0, 0, 0)


def test_anonymous_members_are_not_users() -> None:
    m: Membership[Tab] = Membership()
    assert m.add(Tab(None)) is False
    assert list(m.user_ids()) == []


GROUPS = st.sampled_from(["a", "b", "c"])
USERS = st.sampled_from(["1", "2", None])


class MembershipMachine(RuleBasedStateMachine):
    """join/leave/remove against a dict-of-sets reference model."""

    tabs = Bundle("tabs")

    def __init__(self) -> None:
        super().__init__()
        self.m: Membership[Tab] = Membership()
        self.model: dict[Tab, set[str]] = {}

    @rule(target=tabs, user=USERS)
    def add(self, user: str | None) -> Tab:
        tab = Tab(user)
        first = self.m.add(tab)
        assert first == (user is not None and all(t.user_id != user for t in self.model))
        self.model[tab] = set()
        return tab

    @rule(tab=tabs, group=GROUPS)
    def join(self, tab: Tab, group: str) -> None:
        if tab not in self.model:
            return
        new = self.m.join(tab, group)
        assert new == all(group not in gs for gs in self.model.values())
        self.model[tab].add(group)

    @rule(tab=tabs, group=GROUPS)
    def leave(self, tab: Tab, group: str) -> None:
        emptied = self.m.leave(tab, group)
        was_member = tab in self.model and group in self.model[tab]
        if tab in self.model:
            self.model[tab].discard(group)
        still = any(group in gs for gs in self.model.values())
        assert emptied == (was_member and not still)

    @rule(tab=consumes(tabs))
    def remove(self, tab: Tab) -> None:
        removed = self.m.remove(tab)
        groups = self.model.pop(tab, None)
        if groups is None:
            assert removed is None
            return
        assert removed is not None
        assert set(removed.groups) == {
            g for g in groups if all(g not in o for o in self.model.values())
        }

    @invariant()
    def indexes_match_model(self) -> None:
        for group in ("a", "b", "c"):
            assert set(self.m.group(group)) == {t for t, gs in self.model.items() if group in gs}
            expected: dict[str, int] = {}
            for t, gs in self.model.items():
                if group in gs and t.user_id is not None:
                    expected[t.user_id] = expected.get(t.user_id, 0) + 1
            assert self.m.presence(group) == expected
        assert set(self.m.group_names()) == {g for gs in self.model.values() for g in gs}
        assert set(self.m.user_ids()) == {t.user_id for t in self.model if t.user_id is not None}
        for tab, groups in self.model.items():
            assert self.m.groups_of(tab) == groups


TestMembershipMachine = MembershipMachine.TestCase
