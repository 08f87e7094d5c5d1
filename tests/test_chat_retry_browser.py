"""The chat page's answer to ``unavailable``, in a real browser against a scripted server: it
sends the message again once, with the same id, and shows one copy of what comes back twice.

Debian's chromium driven by Playwright, as in test_browser.py; the page is served by the chat
example, its socket answered by the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from asgi_groups.messaging import MESSAGE_ID_PATTERN

from .support.servers import serve_process

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, WebSocketRoute

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 10_000

if not os.path.exists(CHROMIUM):
    pytest.skip("chromium not found: apt-get install chromium", allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("retry") / "chat.sqlite3"
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "CHAT_SECRET_KEY": "retry-test-secret",
        "CHAT_REDIS_URL": "",
    }
    with serve_process("examples.chat.starlette_app:app", env=env) as (address, _proc):
        yield f"http://{address}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            yield browser
        finally:
            await browser.close()


class ScriptedServer:
    """Answers the page's socket: welcome and hello, then ``answers`` in turn, one list of frames
    per chat message the page sends (``"echo"``: the message's copy, as every page gets it;
    an ``"id"`` of ``None``: the message's own id)."""

    def __init__(self, answers: list[list[Any]], hello: dict[str, Any] | None = None) -> None:
        self.answers = answers
        self.hello = hello or {}
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def until(self, count: int) -> list[dict[str, Any]]:
        """The chat messages received, once there are ``count`` of them."""
        async with asyncio.timeout(TIMEOUT_MS / 1000):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received

    async def __call__(self, ws: WebSocketRoute) -> None:
        def answer(raw: str | bytes) -> None:
            message = json.loads(raw)
            if message.get("type") == "ag.hello":
                welcome = {"type": "ag.welcome", "connection": "c1", "user": "1"}
                welcome |= {"recovered": True, "channels": {}}
                hello = {"type": "hello", "user": "greg", "groups": ["boys"]}
                hello |= {"all_groups": ["boys"], "users": [], **self.hello}
                ws.send("\n".join(json.dumps(f) for f in (welcome, hello)))
                return
            self.received.append(message)
            self.arrived.set()
            copy = {"type": "group", "from": "greg", "text": message["text"], "group": "boys"}
            copy |= {"id": message["id"], "ts": 1_700_000_000}
            for frame in self.answers[len(self.received) - 1]:
                if frame == "echo":
                    frame = {"type": "ag.message", "channel": "g:boys", "data": copy}
                elif frame.get("id", "") is None:
                    frame = {**frame, "id": message["id"]}
                ws.send(json.dumps(frame))

        ws.on_message(answer)


async def chat_page(browser: Browser, site: str, server: ScriptedServer) -> Page:
    """Greg's chat page on the scripted socket, having sent one group message."""
    context = await browser.new_context(base_url=site)
    await context.route_web_socket("**/ws", server)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto("/login")
    await page.fill("#username", "greg")
    await page.fill("#password", "Greg")
    await page.click("#login-button")
    await page.wait_for_url(site + "/")
    await page.wait_for_selector('#status[data-state="online"]')
    await page.select_option("#kind", "Group")
    await page.fill("#text", "hello boys")
    await page.press("#text", "Enter")
    return page


def unavailable(delivered: bool | str, retry_after: float = 0.05) -> dict[str, Any]:
    return {
        "type": "error",
        "error": "unavailable",
        "detail": "scripted",
        "id": None,
        "delivered": delivered,
        "retry_after": retry_after,
    }


async def test_unknown_delivery_is_retried_once_with_the_same_id_and_shown_once(
    browser: Browser, site: str
) -> None:
    """The first send may have gone out ("unknown"); the retry's copy and a late copy of the
    first attempt both arrive: one message is shown."""
    server = ScriptedServer([[unavailable("unknown")], ["echo", "echo"]])
    page = await chat_page(browser, site, server)
    texts = page.locator("#messages .message .text")
    await async_api.expect(texts).to_have_text(["hello boys"])
    await async_api.expect(page.locator("#messages .notice.warning")).to_contain_text(
        "trying again"
    )
    first, second = server.received
    assert first == second and re.fullmatch(MESSAGE_ID_PATTERN, first["id"])
    await page.context.close()


async def test_a_message_not_sent_twice_is_reported_and_not_sent_a_third_time(
    browser: Browser, site: str
) -> None:
    # the second refusal says "retry at once": a third attempt would come before "next"
    server = ScriptedServer([[unavailable(False)], [unavailable(False, 0)], ["echo"]])
    page = await chat_page(browser, site, server)
    await async_api.expect(page.locator("#messages .notice.error")).to_contain_text(
        "unavailable: scripted"
    )
    await page.fill("#text", "next")  # a new message, with a new id
    await page.press("#text", "Enter")
    await async_api.expect(page.locator("#messages .message .text")).to_have_text(["next"])
    first, second, third = server.received
    assert first == second and first["text"] == "hello boys"
    assert third["text"] == "next" and third["id"] != first["id"]
    await page.context.close()


async def test_a_directory_too_big_to_list_takes_the_recipient_by_name(
    browser: Browser, site: str
) -> None:
    """A hello with ``users_complete: false`` lists nobody: a direct message takes the name
    typed in a field instead of a choice in the (empty) list."""
    server = ScriptedServer([["echo"], []], hello={"users_complete": False})
    page = await chat_page(browser, site, server)
    await page.select_option("#kind", "Direct")
    await async_api.expect(page.locator("#user")).to_be_hidden()
    await page.fill("#user-name", " Lisa ")
    await page.fill("#text", "psst")
    await page.press("#text", "Enter")
    direct = (await server.until(2))[1]
    assert (direct["type"], direct["user_name"], direct["text"]) == ("Direct", "Lisa", "psst")
    await page.context.close()
