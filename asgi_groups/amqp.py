"""Messages from a RabbitMQ (AMQP 0-9-1) queue to groups, users or everyone, none lost between.

One :class:`AmqpSource` per process reads a queue (competing consumers across processes: each
message is taken by one of them, and the registry fans it out to every process), decodes each
message, publishes it through the registry and acknowledges it only once the registry accepted
it: at-least-once from the queue into the registry (with Redis, into Redis).

- A message that cannot be decoded or routed is published to a dead-letter exchange with the
  reason in its headers (``x-asgi-groups-reason``, ``x-asgi-groups-detail``), then acknowledged:
  never requeued forever.
- A backend outage (``BackendUnavailable``, ``DeliveryUnknown``) stops acknowledging: the channel
  is closed, so RabbitMQ keeps every unacknowledged message, in order, and consuming resumes once
  the backend is back. A ``DeliveryUnknown`` message may be delivered twice, both copies with the
  same AMQP ``message_id``.
- RabbitMQ going away is retried with capped, jittered backoff; one log line per state change.

``pip install 'asgi-groups[amqp]'``; ``registry.add_companion(AmqpSource(registry, url))`` starts
and stops it with the registry. See docs/AMQP.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import AsgiGroupsError, MessageTooLarge
from .limits import DEFAULT_MAX_MESSAGE_SIZE
from .registry import Registry

__all__ = [
    "DEFAULT_PREFETCH",
    "DEFAULT_QUEUE",
    "DETAIL_HEADER",
    "REASON_HEADER",
    "AmqpMessage",
    "AmqpSource",
    "Decoder",
    "Outgoing",
    "Reason",
    "Undeliverable",
    "decode_json",
    "parse",
]

logger = logging.getLogger("asgi_groups.amqp")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_QUEUE = "ws_messages"
#: Unacknowledged messages RabbitMQ hands this process at once.
DEFAULT_PREFETCH = 64
#: Largest message body taken; larger ones are dead-lettered as ``too_large``.
DEFAULT_MAX_BODY = DEFAULT_MAX_MESSAGE_SIZE
#: (first, cap) seconds between attempts to reach RabbitMQ.
DEFAULT_RECONNECT_BACKOFF = (0.5, 30.0)
#: (first, cap) seconds between looks at a backend that refused a publish.
DEFAULT_BACKEND_BACKOFF = (0.2, 10.0)
#: Seconds the backend must be back before consuming resumes, so that the other processes'
#: listeners have re-subscribed when the held messages go out.
DEFAULT_RESUME_AFTER = 1.0
#: Seconds allowed to open a connection to RabbitMQ.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds ``close()`` lets the message in hand finish before cancelling it (it is then
#: redelivered, with its id).
DEFAULT_CLOSE_TIMEOUT = 5.0
#: The field of a JSON object payload that receives the AMQP ``message_id`` (when absent).
DEFAULT_ID_FIELD = "id"
#: Headers of a dead-lettered message: why, and the details (cut to ``MAX_DETAIL`` chars).
REASON_HEADER = "x-asgi-groups-reason"
DETAIL_HEADER = "x-asgi-groups-detail"
QUEUE_HEADER = "x-asgi-groups-queue"
MAX_DETAIL = 500

State = Literal["stopped", "connecting", "consuming", "paused", "down"]


class Reason(StrEnum):
    """Why a message was dead-lettered (the ``x-asgi-groups-reason`` header)."""

    NOT_JSON = "not_json"
    INVALID = "invalid"  # JSON, but not the schema (an unknown target, a missing name, ...)
    TOO_LARGE = "too_large"
    UNKNOWN_GROUP = "unknown_group"
    UNKNOWN_USER = "unknown_user"
    UNROUTABLE = "unroutable"  # refused by the registry (e.g. an invalid group name)


class Undeliverable(AsgiGroupsError):
    """A message that can never be delivered: a decoder raises it to dead-letter the message."""

    def __init__(self, reason: Reason | str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = str(reason)
        self.detail = detail


class AmqpMessage(BaseModel):
    """The default body: ``{"target": "group" | "user" | "broadcast", "name"?, "data"}``.

    ``name`` is the group or the user id, required for those targets and absent for broadcast.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["group", "user", "broadcast"]
    name: str | None = None
    data: Any

    @model_validator(mode="after")
    def _named(self) -> AmqpMessage:
        if self.target == "broadcast" and self.name is not None:
            raise ValueError("a broadcast has no name")
        if self.target != "broadcast" and not self.name:
            raise ValueError(f"a {self.target} message needs a name")
        return self


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a decoder returns: send ``message`` to a group, a user id or everyone."""

    target: Literal["group", "user", "broadcast"]
    name: str | None
    message: Any
    message_id: str | None = None


#: ``decode(incoming) -> Outgoing`` (sync or async); raises :class:`Undeliverable` to dead-letter.
Decoder = Callable[[AbstractIncomingMessage], Outgoing | Awaitable[Outgoing]]


def parse(body: bytes) -> AmqpMessage:
    """The body as an :class:`AmqpMessage`, or :class:`Undeliverable` (``not_json``/``invalid``)."""
    try:
        return AmqpMessage.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise Undeliverable(Reason.NOT_JSON, "the body is not JSON") from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
        raise Undeliverable(Reason.INVALID, detail) from None


def decode_json(
    incoming: AbstractIncomingMessage, *, id_field: str | None = DEFAULT_ID_FIELD
) -> Outgoing:
    """The default decoder: :func:`parse`, the payload sent as it is.

    A JSON object payload without ``id_field`` gets the AMQP ``message_id`` there, so that a
    client can drop a redelivered copy; ``id_field=None`` leaves payloads untouched.
    """
    body = parse(incoming.body)
    data, message_id = body.data, incoming.message_id
    if id_field and message_id and isinstance(data, dict) and id_field not in data:
        data = {**data, id_field: message_id}
    return Outgoing(body.target, body.name, data, message_id)


class _Paused(Exception):
    """The message in hand could not be published now: stop consuming for a while."""


class _ChannelLost(Exception):
    """The channel or the connection to RabbitMQ closed under the consumer."""


class AmqpSource:
    """A queue consumer that publishes every message through ``registry``; see the module doc.

    ``decode`` turns a message into an :class:`Outgoing` (default :func:`decode_json`).
    ``declare`` declares the (durable) queue, the dead-letter exchange (fanout,
    ``dead_letter_exchange``, default ``<queue>.dead``) and a queue of the same name bound to
    it; with ``declare=False`` they must exist. Every limit is a keyword with a named default.
    """

    def __init__(
        self,
        registry: Registry,
        url: str = DEFAULT_URL,
        queue: str = DEFAULT_QUEUE,
        *,
        decode: Decoder = decode_json,
        dead_letter_exchange: str | None = None,
        declare: bool = True,
        prefetch: int = DEFAULT_PREFETCH,
        max_body: int = DEFAULT_MAX_BODY,
        reconnect_backoff: tuple[float, float] = DEFAULT_RECONNECT_BACKOFF,
        backend_backoff: tuple[float, float] = DEFAULT_BACKEND_BACKOFF,
        resume_after: float = DEFAULT_RESUME_AFTER,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        connection_name: str | None = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.registry = registry
        self.url = url
        self.queue = queue
        self.decode = decode
        self.dead_letter_exchange = dead_letter_exchange or f"{queue}.dead"
        self.declare = declare
        self.prefetch = prefetch
        self.max_body = max_body
        self.reconnect_backoff = reconnect_backoff
        self.backend_backoff = backend_backoff
        self.resume_after = resume_after
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.connection_name = connection_name or f"asgi-groups {queue} pid {os.getpid()}"
        self._state: State = "stopped"
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._stopping = False
        self._consuming = asyncio.Event()
        self._counts = dict.fromkeys(
            ("received", "published", "dead_lettered", "requeued", "pauses", "connections"), 0
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in the background (returns at once; RabbitMQ may still be down)."""
        if self._task is not None:
            return
        self._stopping = False
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=repr(self))

    async def close(self) -> None:
        """Stop: the message in hand may finish (``close_timeout``), the rest stay queued."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                await self._idle.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._set_state("stopped")

    async def __aenter__(self) -> AmqpSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def state(self) -> State:
        """``connecting``, ``consuming``, ``paused`` (backend down), ``down`` or ``stopped``."""
        return self._state

    async def wait_consuming(self, timeout: float | None = None) -> None:
        """Wait until the consumer is registered with RabbitMQ (e.g. for readiness)."""
        async with asyncio.timeout(timeout):
            await self._consuming.wait()

    def stats(self) -> dict[str, Any]:
        """Counters since creation, and the state."""
        return {**self._counts, "state": self._state}

    def _set_state(self, state: State, cause: object = None) -> None:
        """One log line per state change, loud when messages stop flowing."""
        previous, self._state = self._state, state
        if state == "consuming":
            self._consuming.set()
        else:
            self._consuming.clear()
        if state == previous:
            return
        where = f"queue {self.queue!r} at {_safe(self.url)}"
        if state == "consuming":
            log = logger.warning if previous in ("down", "paused") else logger.info
            log("AMQP source consuming %s (was %s)", where, previous)
        elif state == "down":
            logger.error("AMQP source cannot reach RabbitMQ for %s: %s; retrying", where, cause)
        elif state == "paused":
            logger.error(
                "AMQP source paused on %s: the registry refused a publish (%s); messages stay "
                "in the queue until its backend is back",
                where,
                cause,
            )

    # -- the consumer ------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, consume, and after any loss reconnect with capped, jittered backoff."""
        delay = self.reconnect_backoff[0]
        self._set_state("connecting")
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._consuming.is_set() or self._state == "paused":
                    delay = self.reconnect_backoff[0]  # it worked: start the backoff again
                self._set_state("down", _describe(exc))
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, self.reconnect_backoff[1])

    async def _session(self) -> None:
        """One connection: consume on a channel; a pause closes it (RabbitMQ keeps what was
        not acknowledged) and opens another once the backend is back."""
        connection = await aio_pika.connect(
            self.url,
            timeout=self.connect_timeout,
            client_properties={"connection_name": self.connection_name},
        )
        self._counts["connections"] += 1
        try:
            while True:
                channel = await connection.channel(publisher_confirms=True)
                try:
                    await self._consume(channel, connection)
                except _Paused as exc:
                    self._counts["pauses"] += 1
                    self._set_state("paused", exc)
                with contextlib.suppress(Exception):
                    await channel.close()  # every unacknowledged message goes back, in order
                await self._wait_for_backend()
        finally:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _consume(self, channel: AbstractChannel, connection: Any) -> None:
        """Handle messages one at a time, in queue order, until a pause or a loss."""
        await channel.set_qos(prefetch_count=self.prefetch)
        queue, dead = await self._declare(channel)
        buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()

        def lost(*_: object) -> None:
            buffer.put_nowait(None)

        async def take(message: AbstractIncomingMessage) -> None:
            buffer.put_nowait(message)

        channel.close_callbacks.add(lost)
        connection.close_callbacks.add(lost)
        try:
            await queue.consume(take)
            self._set_state("consuming")
            while not self._stopping:
                message = await buffer.get()
                if message is None:
                    raise _ChannelLost("the channel to RabbitMQ closed")
                self._idle.clear()
                try:
                    await self._handle(message, dead)
                finally:
                    self._idle.set()
            await asyncio.Future()  # stopping: close() cancels
        finally:
            channel.close_callbacks.discard(lost)
            connection.close_callbacks.discard(lost)

    async def _declare(self, channel: AbstractChannel) -> tuple[AbstractQueue, AbstractExchange]:
        if not self.declare:
            queue = await channel.get_queue(self.queue, ensure=True)
            dead = await channel.get_exchange(self.dead_letter_exchange, ensure=True)
            return queue, dead
        dead = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        parked = await channel.declare_queue(self.dead_letter_exchange, durable=True)
        await parked.bind(dead)
        queue = await channel.declare_queue(self.queue, durable=True)
        return queue, dead

    async def _handle(self, message: AbstractIncomingMessage, dead: AbstractExchange) -> None:
        """Publish through the registry, then acknowledge; dead-letter what never can go."""
        self._counts["received"] += 1
        try:
            if len(message.body) > self.max_body:
                raise Undeliverable(
                    Reason.TOO_LARGE, f"{len(message.body)} bytes, over max_body={self.max_body}"
                )
            outgoing = self.decode(message)
            if inspect.isawaitable(outgoing):
                outgoing = await outgoing
            await self._publish(outgoing)
        except Undeliverable as exc:
            await self._dead_letter(message, dead, exc.reason, exc.detail)
            return
        except MessageTooLarge as exc:
            await self._dead_letter(message, dead, Reason.TOO_LARGE, str(exc))
            return
        except ValueError as exc:  # e.g. a group name the registry refuses
            await self._dead_letter(message, dead, Reason.UNROUTABLE, str(exc))
            return
        except AsgiGroupsError as exc:  # backend down, delivery unknown, registry closed
            await self._requeue(message)
            raise _Paused(_describe(exc)) from exc
        except Exception as exc:  # a decoder's own failure (e.g. its database): try later
            logger.exception("AMQP source: decoding message %s failed", message.message_id)
            await self._requeue(message)
            raise _Paused(_describe(exc)) from exc
        await message.ack()
        self._counts["published"] += 1

    async def _publish(self, outgoing: Outgoing) -> None:
        registry = self.registry
        if outgoing.target == "group":
            await registry.send_group(str(outgoing.name), outgoing.message)
        elif outgoing.target == "user":
            await registry.send_user(str(outgoing.name), outgoing.message)
        elif outgoing.target == "broadcast":
            await registry.broadcast(outgoing.message)
        else:
            raise Undeliverable(Reason.INVALID, f"unknown target {outgoing.target!r}")

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        self._counts["requeued"] += 1
        with contextlib.suppress(Exception):  # a closed channel requeues it anyway
            await message.nack(requeue=True)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, dead: AbstractExchange, reason: str, detail: str
    ) -> None:
        """Park a copy with the reason in the dead-letter exchange, then acknowledge."""
        logger.warning(
            "AMQP source: message %s dead-lettered to %r: %s (%s)",
            message.message_id,
            self.dead_letter_exchange,
            reason,
            detail[:MAX_DETAIL],
        )
        headers: dict[str, Any] = dict(message.headers or {})
        headers.update(
            {REASON_HEADER: reason, DETAIL_HEADER: detail[:MAX_DETAIL], QUEUE_HEADER: self.queue}
        )
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await dead.publish(copy, routing_key=self.queue)
        except Exception as exc:  # parking failed: the queue's own dead-lettering, if any
            logger.error("AMQP source: dead-letter exchange refused the message: %s", exc)
            await message.reject(requeue=False)
        else:
            await message.ack()
        self._counts["dead_lettered"] += 1

    async def _wait_for_backend(self) -> None:
        """Back off until the registry's backend says it is up again, and ``resume_after``."""
        delay = self.backend_backoff[0]
        while True:
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, self.backend_backoff[1])
            if not _backend_down(self.registry):
                await asyncio.sleep(self.resume_after)
                if not _backend_down(self.registry):
                    return

    def __repr__(self) -> str:
        return f"<AmqpSource {self.queue!r} at {_safe(self.url)} {self._state}>"


def _backend_down(registry: Registry) -> bool:
    """True while the registry is closed or its backend reports itself down."""
    return not registry.started or bool(getattr(registry.backend, "down", False))


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _safe(url: str) -> str:
    """``url`` without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
