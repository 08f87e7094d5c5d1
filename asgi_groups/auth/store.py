"""``SqlUserStore``: users and groups in any async SQLAlchemy database (SQLite by default)."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from sqlalchemy import CursorResult, delete, event, func, insert, make_url, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from asgi_groups.auth.models import Base, Group, User, UserGroup
from asgi_groups.auth.passwords import hash_password, verify_password
from asgi_groups.errors import AsgiGroupsError

__all__ = [
    "DEFAULT_URL",
    "AuthUser",
    "GroupInfo",
    "InvalidDatabaseURL",
    "SqlUserStore",
    "StoreError",
    "UserExists",
    "UserNotFound",
    "create_engine",
]

DEFAULT_URL = "sqlite+aiosqlite:///./asgi_groups.sqlite3"
_URL_HELP = "e.g. sqlite+aiosqlite:///./app.sqlite3 or postgresql+asyncpg://user@host/dbname"
_MAX_NAME = 150
_CREATE_HINT = "create the tables first: store.create_all() or asgi-groups db create-all"
#: Errors of a table another process created a moment earlier: ``create_all`` tries again.
_CREATED_CONCURRENTLY = re.compile(r"already exists|database is locked", re.IGNORECASE)
#: How often ``create_all`` tries when other processes are creating the same tables.
_CREATE_ATTEMPTS = 5
_MISSING_TABLE = re.compile(
    r"no such table|relation \S*auth_\S* does not exist|auth_\S* doesn't exist"
)


class StoreError(AsgiGroupsError):
    """The user store failed: database unreachable, tables missing, bad configuration."""


class InvalidDatabaseURL(StoreError):
    """The database URL cannot be parsed or names a dialect/driver that is not usable."""


class UserExists(StoreError):
    """``create_user`` with a username that is taken."""

    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} already exists")
        self.username = username


class UserNotFound(StoreError):
    """An operation named a username that does not exist."""

    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} does not exist")
        self.username = username


@dataclass(frozen=True, slots=True)
class AuthUser:
    """A user as the rest of the library sees it (satisfies ``asgi_groups.types.UserLike``)."""

    id: int
    username: str
    first_name: str = ""
    groups: frozenset[str] = frozenset()
    is_staff: bool = False
    is_superuser: bool = False
    is_active: bool = True
    is_authenticated: bool = True


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group name and how many users are in it."""

    name: str
    members: int


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    # SQLite ignores ON DELETE CASCADE unless asked per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str | URL) -> AsyncEngine:
    """An async engine for ``url``; in-memory SQLite gets one shared connection (tests)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidDatabaseURL(f"cannot parse the database URL ({_URL_HELP})") from None
    shown = parsed.render_as_string(hide_password=True)
    options: dict[str, Any] = {}
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database in (None, "", ":memory:"):
        options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    try:
        engine = create_async_engine(parsed, **options)
    except ImportError as exc:
        raise InvalidDatabaseURL(
            f"the driver for {shown} is not installed ({exc.name or exc}); {_URL_HELP}"
        ) from None
    except InvalidRequestError:
        raise InvalidDatabaseURL(f"{shown} needs an async driver ({_URL_HELP})") from None
    except (ArgumentError, ValueError, TypeError) as exc:
        raise InvalidDatabaseURL(f"cannot use the database URL {shown}: {exc}") from None
    if is_sqlite:
        event.listen(engine.sync_engine, "connect", _enable_sqlite_foreign_keys)
    return engine


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise StoreError("the database did not return the new row's id")
    return int(key[0])


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > _MAX_NAME:
        raise ValueError(
            f"a {kind} must be a non-empty string of at most {_MAX_NAME} characters "
            "without surrounding spaces"
        )
    return name


def _check_password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("a password must be a non-empty string")
    return password


# Users with their group names: one row per (user, group), a NULL group when none.
_USER_QUERY = (
    select(
        User.id,
        User.username,
        User.first_name,
        User.is_staff,
        User.is_superuser,
        User.is_active,
        Group.name,
    )
    .select_from(User)
    .outerjoin(UserGroup, UserGroup.user_id == User.id)
    .outerjoin(Group, Group.id == UserGroup.group_id)
)


def _users_from_rows(rows: Iterable[Sequence[Any]]) -> list[AuthUser]:
    fields: dict[int, tuple[Any, ...]] = {}
    groups: dict[int, set[str]] = {}
    for row in rows:
        user_id, *rest, group = row
        fields.setdefault(user_id, tuple(rest))
        members = groups.setdefault(user_id, set())
        if group is not None:
            members.add(group)
    return [
        AuthUser(
            id=user_id,
            username=username,
            first_name=first_name or "",
            groups=frozenset(groups[user_id]),
            is_staff=bool(is_staff),
            is_superuser=bool(is_superuser),
            is_active=bool(is_active),
        )
        for user_id, (username, first_name, is_staff, is_superuser, is_active) in fields.items()
    ]


class SqlUserStore:
    """Users, groups and passwords in SQL; ``load(session)`` resolves a session's user.

    ``session_key`` is the session entry that holds the user id. Pass ``engine`` to share one;
    the store disposes only an engine it created.
    """

    def __init__(
        self,
        url: str | URL = DEFAULT_URL,
        *,
        session_key: str = "user_id",
        engine: AsyncEngine | None = None,
    ) -> None:
        self.session_key = session_key
        self._owns_engine = engine is None
        self.engine: AsyncEngine = create_engine(url) if engine is None else engine
        self._dummy_hash: str | None = None

    @property
    def url(self) -> str:
        """The database URL with any password masked (safe to print)."""
        return self.engine.url.render_as_string(hide_password=True)

    async def __aenter__(self) -> SqlUserStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the store's connections."""
        if self._owns_engine:
            await self.engine.dispose()

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction; driver and network failures become ``StoreError``."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except DBAPIError as exc:
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            if _MISSING_TABLE.search(reason):
                reason += f" ({_CREATE_HINT})"
            raise StoreError(f"database error on {self.url}: {reason}") from exc
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"cannot reach the database {self.url}: {exc}") from exc

    async def create_all(self) -> None:
        """Create the auth tables that do not exist yet.

        Safe when several workers start at once: a table another process created between the
        check and the ``CREATE`` sends this one round again, and that round finds it.
        """
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                async with self._begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                return
            except (StoreError, IntegrityError) as exc:
                concurrent = isinstance(exc, IntegrityError) or _CREATED_CONCURRENTLY.search(
                    str(exc)
                )
                if not concurrent or attempt == _CREATE_ATTEMPTS:
                    raise
                await asyncio.sleep(0.05 * attempt)

    async def create_user(
        self,
        username: str,
        password: str,
        *,
        first_name: str = "",
        groups: Iterable[str] = (),
        is_staff: bool = False,
        is_superuser: bool = False,
    ) -> AuthUser:
        """Add a user (and any missing groups); ``UserExists`` if the username is taken."""
        _check_name("username", username)
        _check_password(password)
        group_names = sorted({_check_name("group name", g) for g in groups})
        hashed = await asyncio.to_thread(hash_password, password)
        try:
            async with self._begin() as conn:
                if await self._user_id(conn, username) is not None:
                    raise UserExists(username)
                result = await conn.execute(
                    insert(User).values(
                        username=username,
                        password=hashed,
                        first_name=first_name,
                        is_staff=is_staff,
                        is_superuser=is_superuser,
                    )
                )
                user_id = _new_id(result)
                for group_id in await self._group_ids(conn, group_names):
                    await conn.execute(insert(UserGroup).values(user_id=user_id, group_id=group_id))
        except IntegrityError as exc:  # a concurrent insert won the race
            if await self.get_by_username(username) is not None:
                raise UserExists(username) from None
            raise StoreError(f"could not create user {username!r}: {exc.orig}") from exc
        return AuthUser(
            id=user_id,
            username=username,
            first_name=first_name,
            groups=frozenset(group_names),
            is_staff=is_staff,
            is_superuser=is_superuser,
        )

    async def add_to_group(self, username: str, group: str) -> None:
        """Put the user in ``group`` (created if needed); no-op if already a member."""
        _check_name("group name", group)
        try:
            async with self._begin() as conn:
                user_id = await self._require_user(conn, username)
                (group_id,) = await self._group_ids(conn, [group])
                member = await conn.execute(
                    select(UserGroup.user_id).where(
                        UserGroup.user_id == user_id, UserGroup.group_id == group_id
                    )
                )
                if member.first() is None:
                    await conn.execute(insert(UserGroup).values(user_id=user_id, group_id=group_id))
        except IntegrityError as exc:
            raise StoreError(f"concurrent change to group {group!r}, try again") from exc

    async def remove_from_group(self, username: str, group: str) -> None:
        """Take the user out of ``group``; no-op if not a member. The group itself stays."""
        async with self._begin() as conn:
            user_id = await self._require_user(conn, username)
            group_ids = select(Group.id).where(Group.name == group).scalar_subquery()
            await conn.execute(
                delete(UserGroup).where(
                    UserGroup.user_id == user_id, UserGroup.group_id == group_ids
                )
            )

    async def set_active(self, username: str, active: bool) -> None:
        """Enable or disable a login; an inactive user neither authenticates nor loads."""
        async with self._begin() as conn:
            result = await conn.execute(
                update(User).where(User.username == username).values(is_active=active)
            )
            if result.rowcount == 0:
                raise UserNotFound(username)

    async def set_password(self, username: str, password: str) -> None:
        """Replace the user's password hash (new salt)."""
        hashed = await asyncio.to_thread(hash_password, _check_password(password))
        async with self._begin() as conn:
            result = await conn.execute(
                update(User).where(User.username == username).values(password=hashed)
            )
            if result.rowcount == 0:
                raise UserNotFound(username)

    async def authenticate(self, username: str, password: str) -> AuthUser | None:
        """The active user with these credentials (and stamp ``last_login``), else ``None``.

        An unknown username still costs one hash, so response time does not reveal it.
        """
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    select(User.id, User.password, User.is_active).where(User.username == username)
                )
            ).first()
        if row is None:
            await asyncio.to_thread(verify_password, password, await self._get_dummy_hash())
            return None
        user_id, hashed, is_active = row
        if not await asyncio.to_thread(verify_password, password, hashed) or not is_active:
            return None
        async with self._begin() as conn:
            await conn.execute(
                update(User).where(User.id == user_id).values(last_login=datetime.now(UTC))
            )
            users = _users_from_rows(
                await conn.execute(_USER_QUERY.where(User.id == user_id, User.is_active))
            )
        return users[0] if users else None

    async def load(self, session: Mapping[str, Any]) -> AuthUser | None:
        """The active user whose id is ``session[session_key]``, with groups, in one query."""
        user_id = self._session_user_id(session)
        if user_id is None:
            return None
        async with self._begin() as conn:
            rows = await conn.execute(_USER_QUERY.where(User.id == user_id, User.is_active))
            users = _users_from_rows(rows)
        return users[0] if users else None

    async def get_by_username(self, username: str) -> AuthUser | None:
        """The user named ``username`` (active or not, see ``is_active``), else ``None``."""
        async with self._begin() as conn:
            rows = await conn.execute(_USER_QUERY.where(User.username == username))
            users = _users_from_rows(rows)
        return users[0] if users else None

    async def list_users(self) -> list[AuthUser]:
        """Every user, active or not, ordered by username."""
        async with self._begin() as conn:
            rows = await conn.execute(_USER_QUERY.order_by(User.username, Group.name))
            return _users_from_rows(rows)

    async def list_groups(self) -> list[GroupInfo]:
        """Every group with its member count, ordered by name."""
        stmt = (
            select(Group.name, func.count(UserGroup.user_id))
            .select_from(Group)
            .outerjoin(UserGroup, UserGroup.group_id == Group.id)
            .group_by(Group.id, Group.name)
            .order_by(Group.name)
        )
        async with self._begin() as conn:
            rows = await conn.execute(stmt)
            return [GroupInfo(name=name, members=int(count)) for name, count in rows]

    def _session_user_id(self, session: Mapping[str, Any]) -> int | None:
        if not isinstance(session, Mapping):
            return None
        value = session.get(self.session_key)
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        return value if 0 < value < 2**63 else None

    async def _get_dummy_hash(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe())
        return self._dummy_hash

    @staticmethod
    async def _user_id(conn: AsyncConnection, username: str) -> int | None:
        result = await conn.execute(select(User.id).where(User.username == username))
        return result.scalar_one_or_none()

    async def _require_user(self, conn: AsyncConnection, username: str) -> int:
        user_id = await self._user_id(conn, username)
        if user_id is None:
            raise UserNotFound(username)
        return user_id

    @staticmethod
    async def _group_ids(conn: AsyncConnection, names: Sequence[str]) -> list[int]:
        """Ids of the named groups, creating the missing ones."""
        if not names:
            return []
        result = await conn.execute(select(Group.name, Group.id).where(Group.name.in_(names)))
        ids: dict[str, int] = {name: group_id for name, group_id in result}
        for name in names:
            if name not in ids:
                created = await conn.execute(insert(Group).values(name=name))
                ids[name] = _new_id(created)
        return [ids[name] for name in names]
