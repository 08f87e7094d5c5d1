"""WebSocket close codes used by asgi_groups (RFC 6455 and the 4000-4999 application range).

Codes below 4000 are protocol-level; 44xx are terminal (do not reconnect with the same
credentials), 1012/1013 ask the client to reconnect later.
"""

from __future__ import annotations

NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003  # a binary frame on a text view (or the reverse)
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008  # generic refusal, e.g. anonymous user in a FastAPI dependency
MESSAGE_TOO_BIG = 1009  # inbound frame over ``max_message_size``
INTERNAL_ERROR = 1011  # an exception in a view hook
SERVICE_RESTART = 1012  # the server is shutting down
TRY_AGAIN_LATER = 1013  # slow reader: the outbound queue overflowed

UNAUTHORIZED = 4401  # logged out, session revoked, user deactivated
FORBIDDEN = 4403  # authorisation refused for the connection as a whole
TOO_MANY_ERRORS = 4408  # the error budget for malformed frames is exhausted
RATE_LIMITED = 4429  # inbound flood: the rate limit was exceeded repeatedly
