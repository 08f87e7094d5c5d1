"""The chat page keeps its conversation: across a reload, and across a server restart.

Debian's chromium driven by Playwright, as in ``test_browser.py``. The chat app runs in child
processes that a test stops (SIGTERM, as a deploy does: open sockets close with 1012) and starts
again on the same port, so that the pages reconnect to it by themselves.

Set ``SAVE_SCREENSHOT=1`` to refresh ``docs/recovery.png``; every run leaves one in the tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from .support.chat import ChatProcess, chat_process
from .support.redis import RedisServer
from .test_browser import CHROMIUM, CHROMIUM_ARGS, say, sign_in

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

async_api = pytest.importorskip("playwright.async_api")

APP = "examples.chat.starlette_app:app"
SECRET = "browser-recovery-secret"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "recovery.png"
#: What the page says when the server could not give it what it missed.
MISSING = "some messages may be missing — reloaded"
#: How long a page may take to come back after a restart: its reconnect delay grows while the
#: server is down (jittered, doubling from 0.5 s), so a guard against a hang, not a promise.
COMEBACK_MS = 45_000
#: The Redis database the Redis test keeps its history in, emptied first (other tests use 0).
REDIS_DB = 9


def chat_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}",
        "CHAT_SECRET_KEY": SECRET,
        "CHAT_REDIS_URL": "",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatProcess]:
    with chat_process(APP, chat_env(tmp_path_factory.mktemp("reload"))) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def texts(page: Page) -> Locator:
    """The conversation as the user reads it: every message's and every notice's text."""
    return page.locator("#messages li .text")


async def converse(lines: list[tuple[Page, str, str, str | None]]) -> None:
    """Each ``(page, kind, text, to)`` said in turn, each seen by its sender before the next."""
    for page, kind, text, target in lines:
        await say(page, kind, text, target)
        await async_api.expect(page.locator("#messages .message .text").last).to_have_text(text)


async def test_the_conversation_survives_a_reload(browser: Browser, site: ChatProcess) -> None:
    expect = async_api.expect
    greg = await sign_in(browser, site.base, "greg")
    chuck = await sign_in(browser, site.base, "chuck")
    lisa = await sign_in(browser, site.base, "lisa")
    await say(lisa, "Group", "Girls only: nobody else reads this.", "girls")
    await expect(texts(lisa)).to_have_text(["Girls only: nobody else reads this."])
    said = [
        (chuck, "Group", "Who brings the ball on Saturday?", "boys"),
        (greg, "Direct", "I can, if you bring the pump.", "chuck"),
        (greg, "Group", "Football on Saturday, anyone?", "girls"),  # not in girls: his own copy
        (lisa, "BroadCast", "The gym is closed on Saturday.", None),
        (chuck, "Direct", "Deal, see you there.", "greg"),
        (greg, "Group", "Then the park it is.", "boys"),
    ]
    await converse(said)
    conversation = [text for _, _, text, _ in said]
    await expect(texts(greg)).to_have_text(conversation)

    await greg.reload()
    await greg.wait_for_selector('#status[data-state="online"]')
    # loaded from the history of his group, his own channel and broadcasts: merged by time,
    # once each, and without the girls' message he never received
    await expect(texts(greg)).to_have_text(conversation)
    await expect(greg.locator("#messages .message.mine")).to_have_count(3)
    await expect(greg.locator("#messages .notice")).to_have_count(0)

    await say(chuck, "Group", "Back online?", "boys")  # and live messages follow
    await expect(texts(greg)).to_have_text([*conversation, "Back online?"])


async def test_a_server_restart_is_said_and_the_conversation_reloaded(
    browser: Browser, tmp_path: Path
) -> None:
    """The memory backend's history lives in the process: after a restart nothing can be
    recovered, and the page says so and loads what the new process has.

    Greg's browser is offline during the restart, so that Chuck certainly talks to the new
    process before Greg's page is back; Chuck's page comes back by itself.
    """
    expect = async_api.expect
    with chat_process(APP, chat_env(tmp_path)) as server:
        greg = await sign_in(browser, server.base, "greg")
        chuck = await sign_in(browser, server.base, "chuck")
        await say(chuck, "Group", "Deploy at noon, hold on.", "boys")
        await expect(texts(greg)).to_have_text(["Deploy at noon, hold on."])

        await greg.context.set_offline(True)
        await asyncio.to_thread(server.restart)
        await expect(chuck.locator("#messages .notice.warning .text")).to_have_text(
            [MISSING], timeout=COMEBACK_MS
        )
        await expect(chuck.locator("#status")).to_have_attribute("data-state", "online")
        await converse(
            [
                (chuck, "Group", "We are back.", "boys"),
                (chuck, "Group", "Did you get this?", "boys"),
            ]
        )
        await expect(greg.locator("#status")).to_have_attribute("data-state", "offline")

        await greg.context.set_offline(False)
        await expect(texts(greg)).to_have_text(
            ["Deploy at noon, hold on.", MISSING, "We are back.", "Did you get this?"]
        )
        await expect(greg.locator("#status")).to_have_attribute("data-state", "online")
        await expect(greg.locator(".presence-group li")).to_have_text(["chuck", "greg"])

        shot = await greg.screenshot(type="png")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "asgi_groups-recovery.png"
    path.write_bytes(shot)
    if os.environ.get("SAVE_SCREENSHOT") == "1" or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)


async def test_a_restart_behind_redis_loses_nothing(
    browser: Browser, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two processes on one Redis: Greg's process is restarted while Chuck, on the other one,
    goes on talking. Greg's page comes back to the restarted process and shows every message,
    once each, in order, with no notice: the history is in Redis, not in the process."""
    expect = async_api.expect
    if not redis_server.running:
        redis_server.start()
    with redis_server.client(db=REDIS_DB) as redis:
        redis.flushdb()
    url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    env = chat_env(tmp_path, CHAT_REDIS_URL=url)
    with chat_process(APP, env) as one, chat_process(APP, env) as two:
        greg = await sign_in(browser, one.base, "greg")
        chuck = await sign_in(browser, two.base, "chuck")
        await say(chuck, "Group", "Deploy at noon, hold on.", "boys")
        await expect(texts(greg)).to_have_text(["Deploy at noon, hold on."])

        await asyncio.to_thread(one.stop)
        await expect(greg.locator("#status")).to_have_attribute("data-state", "offline")
        while_away = ["Still here on my side.", "Did you get this?", "And this?"]
        await converse([(chuck, "Group", text, "boys") for text in while_away])
        await asyncio.to_thread(one.start)

        await expect(texts(greg)).to_have_text(
            ["Deploy at noon, hold on.", *while_away], timeout=COMEBACK_MS
        )
        await expect(greg.locator("#status")).to_have_attribute("data-state", "online")
        await expect(greg.locator("#messages .notice")).to_have_count(0)
        await say(greg, "Group", "Got all three.", "boys")
        await expect(texts(chuck)).to_have_text(
            ["Deploy at noon, hold on.", *while_away, "Got all three."]
        )
