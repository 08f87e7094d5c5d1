"""``groups_app`` with an AMQP source: the queue's messages go to its groups, users and everyone.

Configured like ``groups_app``, plus ``ASGI_GROUPS_AMQP_URL``, ``ASGI_GROUPS_AMQP_QUEUE``,
``ASGI_GROUPS_AMQP_NAME`` (the connection's name, for the tests to close it) and
``ASGI_GROUPS_AMQP_RESUME`` (seconds, ``resume_after``). Known groups: boys and girls; known
users: the six seed users (greg, chuck, mike, amanda, lisa, anny); anything else is dead-lettered.
"""

from __future__ import annotations

import os

from aio_pika.abc import AbstractIncomingMessage

from asgi_groups.amqp import AmqpSource, Outgoing, Reason, Undeliverable, decode_json
from tests.redis_apps import groups_app

GROUPS = {"boys", "girls"}
USERS = {"greg", "chuck", "mike", "amanda", "lisa", "anny"}


def decode(incoming: AbstractIncomingMessage) -> Outgoing:
    """The default format, refusing groups and users that do not exist."""
    outgoing = decode_json(incoming)
    if outgoing.target == "group" and outgoing.name not in GROUPS:
        raise Undeliverable(Reason.UNKNOWN_GROUP, f"no group {outgoing.name!r}")
    if outgoing.target == "user" and outgoing.name not in USERS:
        raise Undeliverable(Reason.UNKNOWN_USER, f"no user {outgoing.name!r}")
    return outgoing


registry = groups_app.registry
source = registry.add_companion(
    AmqpSource(
        registry,
        os.environ["ASGI_GROUPS_AMQP_URL"],
        os.environ["ASGI_GROUPS_AMQP_QUEUE"],
        decode=decode,
        connection_name=os.environ.get("ASGI_GROUPS_AMQP_NAME"),
        reconnect_backoff=(0.05, 0.5),
        backend_backoff=(0.05, 0.5),
        resume_after=float(os.environ.get("ASGI_GROUPS_AMQP_RESUME", "1.0")),
    )
)
app = groups_app.app
