"""Real-time group messaging over WebSockets for any ASGI app."""

from __future__ import annotations

from . import codes
from .connection import Connection
from .errors import (
    AsgiGroupsError,
    BackendUnavailable,
    ConnectionClosed,
    MessageTooLarge,
    RegistryClosed,
)
from .frames import Frame
from .limits import QueueLimits
from .middleware import GroupsMiddleware
from .origin import OriginPolicy
from .registry import Registry, Stats
from .request import Request
from .users import ANONYMOUS, AnonymousUser, InMemoryUsers, SimpleUser
from .views import WsView

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "AnonymousUser",
    "AsgiGroupsError",
    "BackendUnavailable",
    "Connection",
    "ConnectionClosed",
    "Frame",
    "GroupsMiddleware",
    "InMemoryUsers",
    "MessageTooLarge",
    "OriginPolicy",
    "QueueLimits",
    "Registry",
    "RegistryClosed",
    "Request",
    "SimpleUser",
    "Stats",
    "WsView",
    "codes",
]
