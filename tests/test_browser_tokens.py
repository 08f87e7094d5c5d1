"""The browser client with a token in the subprotocol, in Debian's chromium (Playwright).

A real uvicorn serves a page, ``/asgi-groups.js``, a ``/token`` route minting JWTs, and a
``RecoverableView`` behind ``GroupsMiddleware`` reading ``SubprotocolToken``. The first token
lives two seconds: the page refreshes it on the open socket and stays connected past its expiry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jwt
import pytest

from asgi_groups import GroupsMiddleware, Registry
from asgi_groups.browser import ClientScript
from asgi_groups.credentials import SubprotocolToken
from asgi_groups.tokens import JwtVerifier
from asgi_groups.types import Receive, Scope, Send

from .support.servers import serve
from .test_browser import browser  # noqa: F401 - the module's chromium, as a fixture
from .test_client_tokens import SECRET, Clock, Room

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

async_api = pytest.importorskip("playwright.async_api")

TIMEOUT_MS = 10_000
PAGE = b"""<!doctype html>
<title>tokens</title>
<script type="module">
  import { GroupsClient } from "/asgi-groups.js";
  const seen = { welcomes: [], messages: [], refreshed: [], errors: [], closes: [] };
  const client = new GroupsClient("/ws", {
    token: () => fetch("/token", { method: "POST" }).then((response) => response.text()),
  });
  client.on("welcome", (welcome) => seen.welcomes.push(welcome));
  client.on("message", (message) => seen.messages.push(message.data));
  client.on("refreshed", (answer) => seen.refreshed.push(answer));
  client.on("error", (error) => seen.errors.push(error.code));
  client.on("close", (close) => seen.closes.push(close.code));
  Object.assign(window, { client, seen });
  client.connect();
</script>
"""


class Site:
    """The page, the script, the token route and the socket, as one ASGI app."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        self.minted = 0
        verifier = JwtVerifier(SECRET, clock=self.clock)
        self.app = GroupsMiddleware(
            self.route, self.registry, auth=[SubprotocolToken(verifier)], clock=self.clock
        )
        self.room = Room.as_asgi()
        self.script = ClientScript()

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.room(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/asgi-groups.js":
            await self.script(scope, receive, send)
        elif scope["type"] == "http":
            status, body = 404, b"not found"
            if scope["path"] == "/":
                status, body = 200, PAGE
            elif scope["path"] == "/token":
                status, body = 200, self.mint().encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/html")],
                }
            )
            await send({"type": "http.response.body", "body": body})

    def mint(self) -> str:
        """The first token lives two seconds (refreshed after one), the next ones a minute."""
        self.minted += 1
        lifetime = 2.0 if self.minted == 1 else 60.0
        return jwt.encode({"sub": "greg", "exp": self.clock() + lifetime}, SECRET, "HS256")


async def test_a_page_refreshes_its_subprotocol_token_and_stays_connected(
    browser: Browser,  # noqa: F811 - the fixture imported above
) -> None:
    site = Site()
    async with site.registry, serve(site.app) as address:
        page = await browser.new_page()
        await page.goto(f"http://{address}/")
        await page.wait_for_function("window.seen.welcomes.length === 1", timeout=TIMEOUT_MS)
        welcome = await page.evaluate("window.seen.welcomes[0]")
        assert welcome["user"] == "greg" and 0 < welcome["expires_in"] <= 2
        await page.wait_for_function("window.seen.refreshed.length === 1", timeout=TIMEOUT_MS)
        site.clock.offset += 10  # the first token lapsed; the refreshed one holds
        assert site.app.revalidator is not None
        assert site.app.revalidator.expire() == 0
        await site.registry.send_group("lobby", {"text": "still here"})
        await page.wait_for_function("window.seen.messages.length === 1", timeout=TIMEOUT_MS)
        seen = await page.evaluate("window.seen")
        assert seen["messages"] == [{"text": "still here"}]
        assert (seen["errors"], seen["closes"], site.minted) == ([], [], 2)
        assert 50 < seen["refreshed"][0]["expires_in"] <= 60
        assert await page.evaluate("window.client.state") == "open"
        await page.close()
