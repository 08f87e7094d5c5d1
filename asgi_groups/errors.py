"""Typed exceptions raised by asgi_groups."""

from __future__ import annotations


class AsgiGroupsError(Exception):
    """Base class of every error this library raises."""


class BackendUnavailable(AsgiGroupsError):
    """The backend (e.g. Redis) cannot be reached: the send was NOT delivered to other processes."""


class MessageTooLarge(AsgiGroupsError):
    """An outbound message is over the registry's ``max_message_size``; nothing was sent."""


class RegistryClosed(AsgiGroupsError):
    """The registry is not started, or has been closed."""


class ConnectionClosed(AsgiGroupsError):
    """A send on a connection that is closed or closing."""
