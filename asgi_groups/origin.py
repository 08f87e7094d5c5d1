"""Origin allow-list for the WebSocket handshake (defence against cross-site WebSocket hijacking).

Pure functions over strings: no scope, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HTTP_OF = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _parse(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialised origin, or None when it is not one."""
    if not origin or origin != origin.strip() or any(c in origin for c in " \t\r\n\\"):
        return None
    try:
        parts = urlsplit(origin)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not host:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _parse_host(host: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Host header, with the scheme's default port."""
    try:
        parts = urlsplit("//" + host.strip())
        name = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name, port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


class OriginPolicy:
    """Which ``Origin`` headers may open a socket.

    ``allowed=None`` (default): same origin only — the Origin must match the request's own
    ``Host`` and scheme (``wss`` ↔ ``https``). Otherwise a list of entries:

    - ``"https://example.com"`` / ``"http://localhost:8000"`` — that exact origin;
    - ``".example.com"`` or ``"https://*.example.com"`` — the domain and every subdomain
      (any scheme for the first form);
    - ``"self"`` — same origin, as with the default;
    - ``"*"`` — any http(s) origin (opt-in; ``null`` still needs listing);
    - ``"null"`` — the opaque origin of sandboxed frames and files (rarely what you want).

    A request without an Origin header (non-browser clients) is refused unless
    ``allow_missing=True``; browsers always send one on WebSocket handshakes.
    """

    def __init__(self, allowed: Iterable[str] | str | None = None, *, allow_missing: bool = False):
        if isinstance(allowed, str):
            allowed = [a for a in allowed.split(",") if a.strip()]
        entries = ["self"] if allowed is None else [a.strip() for a in allowed]
        self.allow_missing = allow_missing
        self.allow_any = "*" in entries
        self.allow_self = "self" in entries
        self.allow_null = "null" in entries
        self._exact: set[tuple[str, str, int]] = set()
        self._domains: list[tuple[str | None, str]] = []
        for entry in entries:
            if entry in ("*", "self", "null"):
                continue
            if entry.startswith("."):
                self._domains.append((None, entry[1:].lower()))
                continue
            scheme, sep, rest = entry.partition("://")
            if sep and rest.startswith("*."):
                self._domains.append((scheme.lower(), rest[2:].rstrip("/").lower()))
                continue
            parsed = _parse(entry.rstrip("/"))
            if parsed is None:
                raise ValueError(f"not an origin: {entry!r}")
            self._exact.add(parsed)

    def allows(self, origin: str | None, *, host: str | None, scheme: str) -> bool:
        """True when a handshake from ``origin`` to ``host`` over ``scheme`` may proceed."""
        if origin is None:
            return self.allow_missing
        if origin == "null":
            return self.allow_null
        parsed = _parse(origin)
        if parsed is None:
            return False
        if self.allow_any or parsed in self._exact:
            return True
        o_scheme, o_host, _o_port = parsed
        for d_scheme, domain in self._domains:
            if (d_scheme is None or d_scheme == o_scheme) and (
                o_host == domain or o_host.endswith("." + domain)
            ):
                return True
        if self.allow_self and host:
            http_scheme = _HTTP_OF.get(scheme, scheme)
            own = _parse_host(host, http_scheme)
            return own is not None and (http_scheme, *own) == parsed
        return False
