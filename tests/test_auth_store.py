"""SqlUserStore on SQLite and PostgreSQL: users, groups, passwords, and one-query loads."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, event, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from asgi_groups.auth import (
    AuthUser,
    InvalidDatabaseURL,
    SqlUserStore,
    StoreError,
    User,
    UserExists,
    UserNotFound,
    hash_password,
    verify_password,
)
from asgi_groups.auth import store as store_module
from asgi_groups.types import UserLike, UserStore

PG_URL = os.environ.get(
    "ASGI_GROUPS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
PG_SKIP = (
    "PostgreSQL not reachable at 127.0.0.1:5432 — start it with `pg_ctlcluster ... start` "
    "or set ASGI_GROUPS_TEST_PG_URL"
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SqlUserStore]:
    if request.param == "sqlite":
        async with SqlUserStore("sqlite+aiosqlite://") as sqlite_store:
            await sqlite_store.create_all()
            yield sqlite_store
        return
    # PostgreSQL: a throw-away schema per test, so runs never see each other's rows.
    schema = f"asgi_groups_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_URL, connect_args={"timeout": 5})
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception:
        await admin.dispose()
        pytest.skip(PG_SKIP)
    engine = create_async_engine(
        PG_URL, connect_args={"server_settings": {"search_path": schema}, "timeout": 5}
    )
    try:
        async with SqlUserStore(engine=engine) as pg_store:
            await pg_store.create_all()
            yield pg_store
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


async def test_create_user_with_groups(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw-ann", first_name="Ann", groups=["chat", "ops"])
    assert isinstance(user, AuthUser)
    assert (user.username, user.first_name, user.groups) == (
        "ann",
        "Ann",
        frozenset({"chat", "ops"}),
    )
    assert user.is_authenticated and user.is_active
    assert not user.is_staff and not user.is_superuser
    assert await store.get_by_username("ann") == user
    assert await store.get_by_username("nobody") is None
    assert isinstance(user, UserLike)
    assert isinstance(store, UserStore)
    with pytest.raises(AttributeError):
        user.username = "eve"  # type: ignore[misc]


async def test_duplicate_username_raises_user_exists(store: SqlUserStore) -> None:
    await store.create_user("ann", "pw", groups=["chat"])
    with pytest.raises(UserExists, match="user 'ann' already exists") as info:
        await store.create_user("ann", "other", groups=["new-group"])
    assert info.value.username == "ann"
    assert [g.name for g in await store.list_groups()] == ["chat"], "nothing half-created"


async def test_invalid_names_are_refused(store: SqlUserStore) -> None:
    for username in ["", " ann", "x" * 151]:
        with pytest.raises(ValueError):
            await store.create_user(username, "pw")
    with pytest.raises(ValueError):
        await store.create_user("ann", "")
    with pytest.raises(ValueError):
        await store.create_user("ann", "pw", groups=[""])
    assert await store.list_users() == []


async def test_authenticate(store: SqlUserStore) -> None:
    created = await store.create_user("ann", "correct horse", groups=["chat"], is_staff=True)
    user = await store.authenticate("ann", "correct horse")
    assert user == created
    assert await store.authenticate("ann", "wrong") is None
    assert await store.authenticate("ann", "") is None
    assert await store.authenticate("bob", "correct horse") is None
    async with store.engine.connect() as conn:
        last_login = (await conn.execute(select(User.last_login))).scalar_one()
    assert last_login is not None, "a successful login is stamped"


async def test_inactive_user_neither_authenticates_nor_loads(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw")
    await store.set_active("ann", False)
    assert await store.authenticate("ann", "pw") is None
    assert await store.load({"user_id": user.id}) is None
    listed = await store.get_by_username("ann")
    assert listed is not None and not listed.is_active
    await store.set_active("ann", True)
    assert await store.load({"user_id": user.id}) == user
    with pytest.raises(UserNotFound):
        await store.set_active("nobody", False)


async def test_unknown_user_still_costs_a_hash(
    store: SqlUserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_user("ann", "pw")
    calls: list[str] = []

    def counting_verify(password: str, encoded: str) -> bool:
        calls.append(encoded)
        return verify_password(password, encoded)

    monkeypatch.setattr(store_module, "verify_password", counting_verify)
    assert await store.authenticate("nobody", "pw") is None
    assert await store.authenticate("ann", "nope") is None
    assert len(calls) == 2
    assert calls[0].startswith("scrypt$")


async def test_set_password(store: SqlUserStore) -> None:
    await store.create_user("ann", "old")
    await store.set_password("ann", "new")
    assert await store.authenticate("ann", "old") is None
    assert await store.authenticate("ann", "new") is not None
    with pytest.raises(UserNotFound):
        await store.set_password("nobody", "x")


async def test_load_returns_user_with_groups(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw", groups=["chat", "ops"])
    await store.create_user("bob", "pw", groups=["chat"])
    loaded = await store.load({"user_id": user.id})
    assert loaded is not None
    assert (loaded.id, loaded.username, loaded.groups) == (
        user.id,
        "ann",
        frozenset({"chat", "ops"}),
    )
    assert await store.load({"user_id": str(user.id)}) == loaded
    lonely = await store.create_user("cy", "pw")
    loaded_lonely = await store.load({"user_id": lonely.id})
    assert loaded_lonely is not None and loaded_lonely.groups == frozenset()


async def test_load_runs_exactly_one_statement(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw", groups=["a", "b", "c"])
    await store.load({"user_id": user.id})  # warm the pool
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        loaded = await store.load({"user_id": user.id})
        missing = await store.load({"user_id": user.id + 1000})
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    assert loaded is not None and loaded.groups == {"a", "b", "c"}
    assert missing is None
    assert len(statements) == 2, statements
    assert all(s.lstrip().upper().startswith("SELECT") for s in statements)


BAD_SESSIONS: list[Any] = [
    {},
    {"other": 1},
    {"user_id": None},
    {"user_id": "abc"},
    {"user_id": {}},
    {"user_id": {"id": 1}},
    {"user_id": [1]},
    {"user_id": True},
    {"user_id": 0},
    {"user_id": -1},
    {"user_id": 2**70},
    {"user_id": "1e3"},
    {"user_id": " 1"},
    {"user_id": "\u0661"},
    {"user_id": "9" * 5000},
    {"user_id": 1.0},
    None,
    "user_id=1",
]


async def test_bad_session_values_load_nothing(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw")
    assert user.id == 1
    for session in BAD_SESSIONS:
        assert await store.load(session) is None, session


async def test_custom_session_key() -> None:
    async with SqlUserStore("sqlite+aiosqlite://", session_key="uid") as store:
        await store.create_all()
        user = await store.create_user("ann", "pw")
        assert await store.load({"uid": user.id}) == user
        assert await store.load({"user_id": user.id}) is None


async def test_salts_differ_for_equal_passwords(store: SqlUserStore) -> None:
    await store.create_user("ann", "same password")
    await store.create_user("bob", "same password")
    async with store.engine.connect() as conn:
        hashes = (await conn.execute(select(User.password).order_by(User.username))).scalars()
        ann, bob = list(hashes)
    assert ann != bob
    assert ann.split("$")[2] != bob.split("$")[2]
    assert "same password" not in ann
    assert await store.authenticate("ann", "same password") is not None
    assert await store.authenticate("bob", "same password") is not None


async def test_groups_membership_and_counts(store: SqlUserStore) -> None:
    await store.create_user("ann", "pw", groups=["chat"])
    await store.create_user("bob", "pw")
    await store.add_to_group("bob", "chat")
    await store.add_to_group("bob", "chat")  # idempotent
    await store.add_to_group("bob", "ops")
    assert [(g.name, g.members) for g in await store.list_groups()] == [("chat", 2), ("ops", 1)]
    await store.remove_from_group("bob", "chat")
    await store.remove_from_group("bob", "never-joined")
    assert [(g.name, g.members) for g in await store.list_groups()] == [("chat", 1), ("ops", 1)]
    users = await store.list_users()
    assert [(u.username, u.groups) for u in users] == [
        ("ann", frozenset({"chat"})),
        ("bob", frozenset({"ops"})),
    ]
    with pytest.raises(UserNotFound):
        await store.add_to_group("nobody", "chat")


async def test_deleting_a_user_deletes_its_memberships(store: SqlUserStore) -> None:
    user = await store.create_user("ann", "pw", groups=["chat"])
    async with store.engine.begin() as conn:
        await conn.execute(delete(User).where(User.id == user.id))
    assert [(g.name, g.members) for g in await store.list_groups()] == [("chat", 0)]


async def test_bad_url_is_a_clear_store_error() -> None:
    for url in ["not a url", "nosuchdialect://x", "sqlite:///sync-driver.db"]:
        with pytest.raises(InvalidDatabaseURL) as info:
            SqlUserStore(url)
        assert isinstance(info.value, StoreError)
        assert "database URL" in str(info.value) or "async driver" in str(info.value)


async def test_password_is_masked_in_errors() -> None:
    async with SqlUserStore("postgresql+asyncpg://u:hunter2@127.0.0.1:1/db") as store:
        with pytest.raises(StoreError) as info:
            await store.load({"user_id": 1})
    assert "hunter2" not in str(info.value)
    assert "cannot reach the database" in str(info.value)


async def test_missing_tables_error_says_what_to_do() -> None:
    async with SqlUserStore("sqlite+aiosqlite://") as store:
        with pytest.raises(StoreError, match="create-all"):
            await store.list_users()


def test_password_hash_format_and_verification() -> None:
    encoded = hash_password("pw")
    algorithm, params, salt, digest = encoded.split("$")
    assert (algorithm, params) == ("scrypt", "n=16384,r=8,p=1")
    assert salt and digest
    assert verify_password("pw", encoded)
    assert not verify_password("pW", encoded)
    for broken in ["", "scrypt$", encoded + "$x", "md5$x$y$z", "scrypt$n=3,r=8,p=1$AA==$AA=="]:
        assert not verify_password("pw", broken)
    huge_n = encoded.replace("n=16384", f"n={2**30}")
    assert not verify_password("pw", huge_n), "parameters from the database are bounded"


async def test_workers_starting_at_once_all_create_the_tables(tmp_path: Any) -> None:
    """Several workers on one database file each run ``create_all`` at start: none fails
    because another created a table between its check and its ``CREATE``."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    for _ in range(5):
        (tmp_path / "shared.db").unlink(missing_ok=True)
        stores = [SqlUserStore(url) for _ in range(3)]
        try:
            await asyncio.gather(*(store.create_all() for store in stores))
            await stores[0].create_user("ann", "pw")
            assert [user.username for user in await stores[2].list_users()] == ["ann"]
        finally:
            for store in stores:
                await store.close()
