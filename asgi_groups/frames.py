"""Outbound frames: a message is encoded once into an ASGI send event shared by every recipient."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json

__all__ = ["Frame", "encode", "encode_json"]


class Frame:
    """One encoded outbound message: the ASGI ``websocket.send`` event and its size in bytes.

    The same ``Frame`` object is queued for every recipient, so a send to N connections
    costs one encode and N deque appends.
    """

    __slots__ = ("event", "json", "size")

    def __init__(self, event: dict[str, Any], size: int, json: bool = False) -> None:
        self.event = event
        self.size = size
        #: True when the text is one JSON document (the library encoded it), so that an
        #: envelope can carry it as a value rather than as a string.
        self.json = json

    @classmethod
    def text(cls, text: str) -> Frame:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return cls({"type": "websocket.send", "text": text}, size)

    @classmethod
    def binary(cls, data: bytes) -> Frame:
        return cls({"type": "websocket.send", "bytes": data}, len(data))

    @property
    def payload(self) -> str | bytes:
        """The text or bytes this frame carries."""
        text: str | None = self.event.get("text")
        return text if text is not None else self.event["bytes"]

    @property
    def is_text(self) -> bool:
        return "text" in self.event

    def __repr__(self) -> str:
        kind = "text" if self.is_text else "binary"
        return f"<Frame {kind} {self.size}B>"


def encode(message: Any) -> Frame:
    """``str`` → text frame, ``bytes`` → binary frame, anything else → JSON text (encoded once).

    JSON goes through pydantic-core (pydantic models, dataclasses, datetimes and UUIDs work).
    """
    if isinstance(message, Frame):
        return message
    if isinstance(message, str):
        return Frame.text(message)
    if isinstance(message, bytes | bytearray | memoryview):
        return Frame.binary(bytes(message))
    return encode_json(message)


def encode_json(obj: Any) -> Frame:
    """Always JSON, even for ``str`` (``"hi"`` becomes the text frame ``"hi"`` with quotes)."""
    data = obj.__pydantic_serializer__.to_json(obj) if isinstance(obj, BaseModel) else to_json(obj)
    return Frame({"type": "websocket.send", "text": data.decode("utf-8")}, len(data), True)
