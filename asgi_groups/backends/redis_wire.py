"""What the Redis backend puts on the wire: channel and key names, and the envelopes.

A frame travels in a binary envelope, its payload exactly as the sender encoded it once::

    byte 0      version (1)
    byte 1      flags: bit 0 (0x01) binary frame, else UTF-8 text;
                       bit 1 (0x02) json: the text is one JSON document (``Frame.json``);
                       bit 2 (0x04) positioned: the position follows the exclude id;
                       other bits reserved (0)
    byte 2      n = length of the exclude connection id (0 = none)
    3 .. 3+n    exclude id (UTF-8)
    positioned only:
      1 byte    m = length of the epoch
      m bytes   epoch (ASCII)
      8 bytes   offset, unsigned big-endian
    ..          payload

A positioned envelope is written by the history script in Redis (:mod:`.redis_history`), which
alone knows the offset; :func:`pack_frame` builds the same bytes. Control operations and
presence events travel as the version byte followed by compact JSON. A listener skips (and
counts) anything of another version or with a reserved flag set, so a listener that predates a
flag drops such messages loudly rather than misreading them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..frames import Frame
from ..history import Position
from .base import PresenceEvent

__all__ = [
    "CONTROL",
    "DEFAULT_PREFIX",
    "ENVELOPE_VERSION",
    "PRESENCE",
    "EnvelopeError",
    "Names",
    "envelope_head",
    "frame_flags",
    "pack_control",
    "pack_frame",
    "pack_json",
    "payload_bytes",
    "rebuild_frame",
    "unpack_control",
    "unpack_frame",
    "unpack_json",
    "unpack_presence_event",
]

DEFAULT_PREFIX = "asgi_groups"

#: First byte of every message this backend publishes; a listener skips other versions.
ENVELOPE_VERSION = 1
FLAG_BINARY = 0x01
FLAG_JSON = 0x02
FLAG_POSITIONED = 0x04
_KNOWN_FLAGS = FLAG_BINARY | FLAG_JSON | FLAG_POSITIONED
#: Longest epoch a positioned envelope carries (one length byte).
MAX_EPOCH = 255
#: Longest ``exclude`` connection id an envelope carries (ids are 32 hex characters).
MAX_EXCLUDE_ID = 255

#: Internal channel names; the core's channels are ``g:…``, ``u:…`` and ``*``, so never these.
CONTROL = "control"
PRESENCE = "presence"


class EnvelopeError(ValueError):
    """A message on the wire is not an envelope this version understands."""


@dataclass(frozen=True)
class Names:
    """Every Redis channel and key of one process under ``prefix``."""

    prefix: str
    process_id: str
    key_prefix: str = field(init=False)
    #: The Redis channels of control operations and presence events, as the listener sees them.
    control_key: bytes = field(init=False)
    presence_channel: bytes = field(init=False)
    #: The set of process ids that wrote presence entries.
    processes_key: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError("prefix must be a non-empty string without spaces")
        key_prefix = self.prefix + ":"
        object.__setattr__(self, "key_prefix", key_prefix)
        object.__setattr__(self, "control_key", (key_prefix + CONTROL).encode())
        object.__setattr__(self, "presence_channel", (key_prefix + PRESENCE).encode())
        object.__setattr__(self, "processes_key", key_prefix + "processes")

    def channel_key(self, channel: str) -> str:
        """The Redis channel of a core channel (``g:boys`` → ``asgi_groups:g:boys``)."""
        return self.key_prefix + channel

    def core_channel(self, key: bytes) -> str:
        """The core channel of a Redis channel this process subscribed to."""
        return key[len(self.key_prefix) :].decode()

    def presence_key(self, group: str, process_id: str | None = None) -> str:
        """The hash ``{user_id: connections}`` one process keeps for ``group``."""
        return f"{self.prefix}:presence:{group}:{process_id or self.process_id}"

    def process_key(self, process_id: str | None = None) -> str:
        """The key that says a process is alive (it expires with the process)."""
        return f"{self.prefix}:process:{process_id or self.process_id}"

    def revoked_key(self, user_id: str) -> str:
        """The last ``disconnect_user`` of a user, kept so that a process that missed it
        (partitioned at the time) applies it when it reconnects."""
        return f"{self.prefix}:revoked:{user_id}"

    def history_key(self, channel: str) -> str:
        """The stream of ``channel``'s kept messages, entry ID ``<offset>-0``.

        ``{channel}`` is a Redis Cluster hash tag: a channel's two keys share one slot, so one
        script may touch both.
        """
        return f"{self.prefix}:{{{channel}}}:h"

    def history_meta_key(self, channel: str) -> str:
        """The hash ``{e: epoch, o: newest offset}`` of ``channel`` (same slot as its stream)."""
        return f"{self.prefix}:{{{channel}}}:hm"

    def client_name(self) -> str:
        """``CLIENT SETNAME`` of this process's connections (printable ASCII only)."""
        name = f"{self.prefix}:{self.process_id}"
        return "".join(c if 32 < ord(c) < 127 else "_" for c in name)


def frame_flags(frame: Frame) -> int:
    """The envelope flags that say what kind of frame this is: binary, JSON text or text."""
    if frame.event.get("text") is None:
        return FLAG_BINARY
    return FLAG_JSON if frame.json else 0


def envelope_head(frame: Frame, exclude: str | None, *, positioned: bool = False) -> bytes:
    """The envelope up to the exclude id included: what precedes the position and payload."""
    excluded = exclude.encode() if exclude else b""
    if len(excluded) > MAX_EXCLUDE_ID:
        raise ValueError(f"exclude ids are at most {MAX_EXCLUDE_ID} bytes")
    flags = frame_flags(frame) | (FLAG_POSITIONED if positioned else 0)
    return bytes((ENVELOPE_VERSION, flags, len(excluded))) + excluded


def pack_frame(frame: Frame, exclude: str | None, position: Position | None = None) -> bytes:
    """Encode ``frame`` (and the connection id to skip, and its position) into one envelope."""
    if position is not None:
        head = envelope_head(frame, exclude, positioned=True)
        return head + _place(position) + payload_bytes(frame)
    excluded = exclude.encode() if exclude else b""
    if len(excluded) > MAX_EXCLUDE_ID:
        raise ValueError(f"exclude ids are at most {MAX_EXCLUDE_ID} bytes")
    text: str | None = frame.event.get("text")
    if text is not None:
        header = bytes((ENVELOPE_VERSION, FLAG_JSON if frame.json else 0, len(excluded)))
        return header + excluded + text.encode("utf-8", "surrogatepass")
    header = bytes((ENVELOPE_VERSION, FLAG_BINARY, len(excluded)))
    return header + excluded + bytes(frame.event["bytes"])


def _place(position: Position) -> bytes:
    epoch = position.epoch.encode("ascii")
    if len(epoch) > MAX_EPOCH:
        raise ValueError(f"epochs are at most {MAX_EPOCH} bytes")
    return bytes((len(epoch),)) + epoch + position.offset.to_bytes(8, "big")


def payload_bytes(frame: Frame) -> bytes:
    """The bytes ``frame`` carries, text encoded as UTF-8 (as the envelope holds them)."""
    text: str | None = frame.event.get("text")
    if text is None:
        return bytes(frame.event["bytes"])
    return text.encode("utf-8", "surrogatepass")


def unpack_frame(data: bytes) -> tuple[Frame, str | None, Position | None]:
    """Decode an envelope into ONE frame shared by every local recipient, the exclude id, and
    the message's position in its channel's history (None when it has none)."""
    if len(data) < 3 or data[0] != ENVELOPE_VERSION:
        version = data[0] if data else None
        raise EnvelopeError(f"unknown envelope version {version!r}")
    flags = data[1]
    if flags & ~_KNOWN_FLAGS or (flags & FLAG_BINARY and flags & FLAG_JSON):
        raise EnvelopeError(f"unknown envelope flags {flags:#04x}")
    end = 3 + data[2]
    if end > len(data):
        raise EnvelopeError("truncated envelope")
    exclude = data[3:end].decode("utf-8", "replace") or None
    position = _position(data, end) if flags & FLAG_POSITIONED else None
    if position is not None:
        end += len(position.epoch) + 9
    if flags & FLAG_BINARY:
        return Frame.binary(data[end:]), exclude, position
    try:
        text = data[end:].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("a text frame that is not UTF-8") from exc
    event = {"type": "websocket.send", "text": text}
    return Frame(event, len(data) - end, (flags & FLAG_JSON) != 0), exclude, position


def _position(data: bytes, start: int) -> Position:
    """The position at ``start``: epoch length, epoch, 8-byte offset."""
    if start >= len(data) or start + 9 + data[start] > len(data):
        raise EnvelopeError("truncated position in envelope")
    end = start + 1 + data[start]
    try:
        epoch = data[start + 1 : end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("an epoch that is not ASCII") from exc
    return Position(epoch, int.from_bytes(data[end : end + 8], "big"))


def rebuild_frame(flags: int, payload: bytes) -> Frame:
    """The frame a payload and its kind flags stand for, as the sender encoded it."""
    if flags & FLAG_BINARY:
        return Frame.binary(payload)
    try:
        text = payload.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("a text frame that is not UTF-8") from exc
    return Frame({"type": "websocket.send", "text": text}, len(payload), bool(flags & FLAG_JSON))


def pack_json(obj: object) -> bytes:
    """The version byte, then ``obj`` as compact JSON."""
    return bytes((ENVELOPE_VERSION,)) + json.dumps(obj, separators=(",", ":")).encode()


def unpack_json(data: bytes) -> Any:
    if not data or data[0] != ENVELOPE_VERSION:
        raise EnvelopeError(f"unknown envelope version {data[0] if data else None!r}")
    return json.loads(data[1:])


def pack_control(op: str, args: dict[str, Any]) -> bytes:
    return pack_json({"op": op, "args": args})


def unpack_control(data: bytes) -> tuple[str, dict[str, Any]]:
    """``(op, args)`` of a control message."""
    body = unpack_json(data)
    if not isinstance(body, dict) or not isinstance(body.get("args"), dict):
        raise EnvelopeError("malformed control message")
    return str(body.get("op")), body["args"]


def unpack_presence_event(data: bytes) -> PresenceEvent:
    body = unpack_json(data)
    if (
        not isinstance(body, dict)
        or body.get("event") not in ("join", "leave")
        or not isinstance(body.get("group"), str)
        or not isinstance(body.get("user_id"), str)
    ):
        raise EnvelopeError("malformed presence event")
    return {
        "type": "presence",
        "group": body["group"],
        "user_id": body["user_id"],
        "event": body["event"],
    }
