"""Real-time group messaging over WebSockets for any ASGI app."""

from __future__ import annotations

from . import codes
from .connection import Connection
from .errors import (
    AsgiGroupsError,
    BackendUnavailable,
    ConnectionClosed,
    DeliveryUnknown,
    MessageTooLarge,
    RegistryClosed,
)
from .frames import Frame
from .history import HistoryLimits, Position, Recovery
from .limits import QueueLimits
from .middleware import GroupsMiddleware
from .origin import OriginPolicy
from .recoverable import RecoverableView
from .registry import LoopClosed, PresenceEvent, Registry, Stats
from .request import Request
from .sync import SyncRegistry
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
    "DeliveryUnknown",
    "Frame",
    "GroupsMiddleware",
    "HistoryLimits",
    "InMemoryUsers",
    "LoopClosed",
    "MessageTooLarge",
    "OriginPolicy",
    "Position",
    "PresenceEvent",
    "QueueLimits",
    "RecoverableView",
    "Recovery",
    "Registry",
    "RegistryClosed",
    "Request",
    "SimpleUser",
    "Stats",
    "SyncRegistry",
    "WsView",
    "codes",
]
