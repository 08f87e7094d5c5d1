"""SQLAlchemy 2 models of the auth tables: users, groups and the membership link."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Group", "User", "UserGroup"]


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the auth tables (``Base.metadata.create_all`` creates them)."""


class User(Base):
    """A login: unique username, salted password hash, flags and timestamps."""

    __tablename__ = "auth_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(150), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    is_staff: Mapped[bool] = mapped_column(default=False)
    is_superuser: Mapped[bool] = mapped_column(default=False)
    date_joined: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_login: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Group(Base):
    """A named group; a user's groups are joined when their WebSocket connects."""

    __tablename__ = "auth_group"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)


class UserGroup(Base):
    """Membership of a user in a group; deleting either side deletes the link."""

    __tablename__ = "auth_user_groups"
    __table_args__ = (Index("ix_auth_user_groups_group_id", "group_id"),)

    user_id: Mapped[int] = mapped_column(
        ForeignKey("auth_user.id", ondelete="CASCADE"), primary_key=True
    )
    group_id: Mapped[int] = mapped_column(
        ForeignKey("auth_group.id", ondelete="CASCADE"), primary_key=True
    )
