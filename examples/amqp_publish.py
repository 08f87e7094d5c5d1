"""Publish a chat message to RabbitMQ for the chat example to show (``CHAT_AMQP_URL`` set).

    python examples/amqp_publish.py --group boys "deploy at 5 pm"
    python examples/amqp_publish.py --user greg --from billing "your invoice is ready"
    python examples/amqp_publish.py --broadcast "maintenance in 5 minutes"

The body is ``{"target", "name", "data": {"text", "from"}}``, persistent, with a ``message_id``
(``--id``, default a new one): publishing again with the same id makes a copy that the chat
page drops. The queue must exist (the chat declares it when it starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_QUEUE = "ws_messages"
#: Seconds allowed to reach RabbitMQ and have the message confirmed.
TIMEOUT = 10.0


def body(args: argparse.Namespace) -> dict[str, Any]:
    """The message body in the chat's queue format."""
    data = {"text": args.text, "from": args.sender}
    if args.group is not None:
        return {"target": "group", "name": args.group, "data": data}
    if args.user is not None:
        return {"target": "user", "name": args.user, "data": data}
    return {"target": "broadcast", "data": data}


async def publish(url: str, queue: str, message: dict[str, Any], message_id: str) -> None:
    """Publish ``message`` to ``queue`` and wait for RabbitMQ to confirm it was routed."""
    import aio_pika

    async with asyncio.timeout(TIMEOUT):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(message).encode(),
                    message_id=message_id,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=queue,
                mandatory=True,  # no such queue: an error rather than a message lost silently
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("text")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--group", help="a group name")
    target.add_argument("--user", help="a username")
    target.add_argument("--broadcast", action="store_true", help="everyone")
    parser.add_argument("--from", dest="sender", default="system", help="shown as the sender")
    parser.add_argument("--id", dest="message_id", default=None, help="the AMQP message_id")
    parser.add_argument("--url", default=os.environ.get("CHAT_AMQP_URL") or DEFAULT_URL)
    parser.add_argument("--queue", default=os.environ.get("CHAT_AMQP_QUEUE") or DEFAULT_QUEUE)
    args = parser.parse_args(argv)
    message_id = args.message_id or uuid.uuid4().hex
    try:
        asyncio.run(publish(args.url, args.queue, body(args), message_id))
    except Exception as exc:  # one line, no traceback: unreachable, unroutable, timed out
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"published {message_id} to queue {args.queue!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
