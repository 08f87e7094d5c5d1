"""Named limits of the core with their defaults: queues and message sizes.

The messaging view's own limits (rate, error budget, text length) are named in ``messaging``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OverflowPolicy = Literal["close", "drop_oldest"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Bounds of each connection's outbound queue.

    ``max_messages`` / ``max_bytes``: what may wait for a slow client before ``overflow`` applies:
    ``"close"`` closes it with 1013 (it can reconnect and catch up), ``"drop_oldest"`` discards
    the oldest queued frames. ``close_timeout``: how long a closing socket may take to flush its
    close frame before the library ends its task (it leaves every group; the server drops the
    TCP connection as :mod:`asgi_groups.servers` describes). ``coalesce``: when several text frames
    wait for one connection, send up to this many as ONE frame joined by ``"\n"`` (opt-in,
    default 1 = off; only for messages without raw newlines, such as compact JSON — the
    client splits on ``"\n"``). ``coalesce_json_only``: join only frames the library encoded as
    one JSON document (``Frame.json``), so that any other frame is sent as it is; the library's
    own client protocol (``RecoverableView``) coalesces that way by default.
    """

    max_messages: int = 1000
    max_bytes: int = 1 * MiB
    overflow: OverflowPolicy = "close"
    close_timeout: float = 5.0
    coalesce: int = 1
    coalesce_json_only: bool = False

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError("queue limits must be positive")
        if self.overflow not in ("close", "drop_oldest"):
            raise ValueError(f"unknown overflow policy {self.overflow!r}")
        if self.coalesce < 1:
            raise ValueError("coalesce must be at least 1")
        if self.close_timeout <= 0:
            raise ValueError("close_timeout must be positive")


DEFAULT_QUEUE_LIMITS = QueueLimits()

#: Most JSON frames the official clients take joined by ``"\n"`` in one WebSocket frame.
OFFICIAL_CLIENT_COALESCE = 16
#: JSON frames joined into one WebSocket frame for a connection of the library's own client
#: protocol (``RecoverableView.coalesce``): on by default, as docs/PROTOCOL.md says a client
#: splits a text frame on ``"\n"``; 1 turns it off (one document per frame).
DEFAULT_PROTOCOL_COALESCE = OFFICIAL_CLIENT_COALESCE

#: Largest outbound message a registry accepts (refused at the sender with ``MessageTooLarge``).
DEFAULT_MAX_MESSAGE_SIZE = 1 * MiB
#: Largest inbound frame a view accepts; larger closes with 1009.
DEFAULT_MAX_INBOUND_SIZE = 64 * KiB
