"""asgi_groups with history, for ``benchmarks.recovery``: three views over one benchmark group.

``create_app(variant, redis_url)``, ``variant`` one of :data:`VARIANTS`:

* ``plain`` — the fan-out benchmark's ``WsView``, history off (the baseline);
* ``plain+history`` — the same view, ``Registry(history=HistoryLimits())``: every publish gets a
  position and is kept, the frames on the wire are unchanged;
* ``recoverable+history`` — a ``RecoverableView`` over that registry: every delivery is an
  ``ag.message`` envelope, clients say ``ag.hello`` first and may resume with their positions.

Every view takes the fan-out triggers (``burst m size``, ``steady …``) and one more command,
``count``, answered to the caller only with ``count <open connections>`` (a storm client polls
it to know that the server has let go of every socket it closed).
"""

from __future__ import annotations

from typing import Any

from asgi_groups import GroupsMiddleware, HistoryLimits, Registry
from asgi_groups.recoverable import RecoverableView
from asgi_groups.types import Receive, Scope, Send

from .groups import BenchView

VARIANTS = ("plain", "plain+history", "recoverable+history")
#: The command a storm client sends to learn how many sockets the server still holds.
COUNT = "count"


class CountingView(BenchView):
    """``BenchView`` plus ``count``; everything else is the fan-out benchmark's view."""

    async def on_receive(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.kwargs.get("text") == COUNT:
            await self.send_text(f"{COUNT} {len(self.registry.connections())}")
            return
        await super().on_receive(scope, receive, send)


class RecoverableBench(RecoverableView, CountingView):
    """The recoverable protocol in front; application frames reach ``CountingView``."""


def create_app(variant: str, redis_url: str | None = None) -> Any:
    """The middleware-wrapped view of ``variant``, handed to the server as is."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    history = HistoryLimits() if variant.endswith("+history") else None
    view = RecoverableBench if variant.startswith("recoverable") else CountingView
    return GroupsMiddleware(view.as_asgi(), Registry(redis_url, history=history))
