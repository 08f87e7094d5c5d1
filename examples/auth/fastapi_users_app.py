"""fastapi-users (SQLAlchemy) with a group-messaging socket: its own ``User``, as it is.

``uvicorn examples.auth.fastapi_users_app:app``. fastapi-users' routers log in as it always
does: ``POST /auth/jwt/login`` (bearer transport) answers ``{"access_token", "token_type"}``,
``POST /auth/cookie/login`` (cookie transport) sets the HttpOnly ``fastapiusersauth`` cookie;
both carry its JWT strategy's token. The socket at ``/ws`` takes that token in
``Authorization: Bearer``, ``?access_token=`` or the cookie (a same-site Origin then), and is
closed with 4401 when it expires. The user loader hands asgi_groups fastapi-users' ``User``
unchanged: its ``email`` is the name, ``is_active`` the login flag, ``groups`` this app's own
relationship. Demo accounts (``greg@example.com`` / ``greg-password``, ...) are made at startup.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Depends, FastAPI
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, exceptions, schemas
from fastapi_users.authentication import (
    AuthenticationBackend,
    BearerTransport,
    CookieTransport,
    JWTStrategy,
)
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from fastapi_users_db_sqlalchemy.generics import GUID
from sqlalchemy import Column, ForeignKey, String, Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from asgi_groups.adapters.fastapi import add_view, install
from asgi_groups.credentials import BearerToken, CookieToken, QueryToken
from asgi_groups.tokens import JwtVerifier

from .common import DEMO_USERS, Chat

SECRET = os.environ.get("SECRET_KEY", "dev-only-secret-change-me-0123456789")
DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./fastapi_users.db")
TOKEN_LIFETIME = 3600
TOKEN_AUDIENCE = "fastapi-users:auth"  # what fastapi-users' JWT strategy puts in "aud"


class Base(DeclarativeBase):
    pass


user_group = Table(
    "user_group",
    Base.metadata,
    Column("user_id", GUID, ForeignKey("user.id"), primary_key=True),
    Column("group_name", String(100), ForeignKey("chat_group.name"), primary_key=True),
)


class Group(Base):
    __tablename__ = "chat_group"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)


class User(SQLAlchemyBaseUserTableUUID, Base):
    """fastapi-users' table, and the app's own field: the groups its user is in."""

    groups: Mapped[list[Group]] = relationship(secondary=user_group, lazy="selectin")


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET


def demo_email(name: str) -> str:
    return f"{name}@example.com"


def create_app(
    *,
    database_url: str = DATABASE_URL,
    token_lifetime: int = TOKEN_LIFETIME,
    expiry_every: float = 1.0,
    cookie_secure: bool = True,
) -> FastAPI:
    """The app; ``expiry_every``: seconds within which an expired token's socket is closed."""
    engine = create_async_engine(database_url)
    session_maker = async_sessionmaker(engine, expire_on_commit=False)

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with session_maker() as session:
            yield session

    async def get_user_db(
        session: AsyncSession = Depends(get_async_session),  # noqa: B008 - FastAPI's style
    ) -> AsyncIterator[SQLAlchemyUserDatabase[User, uuid.UUID]]:
        yield SQLAlchemyUserDatabase(session, User)

    async def get_user_manager(
        user_db: SQLAlchemyUserDatabase[User, uuid.UUID] = Depends(get_user_db),  # noqa: B008
    ) -> AsyncIterator[UserManager]:
        yield UserManager(user_db)

    def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
        return JWTStrategy(secret=SECRET, lifetime_seconds=token_lifetime)

    cookie_transport = CookieTransport(cookie_max_age=token_lifetime, cookie_secure=cookie_secure)
    bearer = AuthenticationBackend(
        name="jwt",
        transport=BearerTransport(tokenUrl="auth/jwt/login"),
        get_strategy=get_jwt_strategy,
    )
    cookie = AuthenticationBackend(
        name="cookie", transport=cookie_transport, get_strategy=get_jwt_strategy
    )
    fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [bearer, cookie])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await create_demo_users(session_maker)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(fastapi_users.get_auth_router(bearer), prefix="/auth/jwt")
    app.include_router(fastapi_users.get_auth_router(cookie), prefix="/auth/cookie")
    app.include_router(fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth")

    # -- asgi_groups: fastapi-users' tokens identify the socket, its User is the user ------------
    async def load_user(claims: Mapping[str, Any]) -> User | None:
        async with session_maker() as session:
            user_db = SQLAlchemyUserDatabase[User, uuid.UUID](session, User)
            return await user_db.get(uuid.UUID(claims["sub"]))

    verifier = JwtVerifier(SECRET, audience=TOKEN_AUDIENCE)
    auth = [
        BearerToken(verifier),
        QueryToken(verifier),
        CookieToken(verifier, cookie_name=cookie_transport.cookie_name),
    ]
    install(app, auth=auth, users=load_user, expiry_every=expiry_every)
    add_view(app, "/ws", Chat)
    return app


async def create_demo_users(session_maker: async_sessionmaker[AsyncSession]) -> None:
    """The demo accounts, through fastapi-users' own ``UserManager.create``, and their groups."""
    async with session_maker() as session:
        manager = UserManager(SQLAlchemyUserDatabase(session, User))
        for name, (password, groups) in DEMO_USERS.items():
            try:
                user = await manager.create(UserCreate(email=demo_email(name), password=password))
            except exceptions.UserAlreadyExists:
                continue
            for group in sorted(groups):
                if await session.get(Group, group) is None:
                    session.add(Group(name=group))
            await session.flush()
            rows = [{"user_id": user.id, "group_name": group} for group in sorted(groups)]
            await session.execute(user_group.insert(), rows)
            await session.commit()


app = create_app()
