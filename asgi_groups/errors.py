"""Typed exceptions raised by asgi_groups."""

from __future__ import annotations


class AsgiGroupsError(Exception):
    """Base class of every error this library raises."""


class BackendUnavailable(AsgiGroupsError):
    """The backend (e.g. Redis) could not take the message: it was NOT delivered elsewhere.

    Its subclass :class:`DeliveryUnknown` is the one exception: the message may have gone out.
    """


class DeliveryUnknown(BackendUnavailable):
    """The backend did not answer in time after the message was written: it may be delivered.

    A retry can make a duplicate; send the retry with the same message id so that recipients
    can drop the second copy.
    """


class MessageTooLarge(AsgiGroupsError):
    """An outbound message is over the registry's ``max_message_size``; nothing was sent."""


class RegistryClosed(AsgiGroupsError):
    """The registry is not started, or has been closed."""


class ConnectionClosed(AsgiGroupsError):
    """A send on a connection that is closed or closing."""
