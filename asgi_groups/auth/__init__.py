"""Built-in users and groups: SQLAlchemy models, password hashing and ``SqlUserStore``."""

from __future__ import annotations

from asgi_groups.auth.models import Base, Group, User, UserGroup
from asgi_groups.auth.passwords import hash_password, verify_password
from asgi_groups.auth.store import (
    DEFAULT_URL,
    AuthUser,
    GroupInfo,
    InvalidDatabaseURL,
    SqlUserStore,
    StoreError,
    UserExists,
    UserNotFound,
    create_engine,
)

__all__ = [
    "DEFAULT_URL",
    "AuthUser",
    "Base",
    "Group",
    "GroupInfo",
    "InvalidDatabaseURL",
    "SqlUserStore",
    "StoreError",
    "User",
    "UserExists",
    "UserGroup",
    "UserNotFound",
    "create_engine",
    "hash_password",
    "verify_password",
]
