"""The chat page in a real browser: Debian's chromium driven by Playwright, two users talking.

Set ``SAVE_SCREENSHOT=1`` to refresh ``docs/chat.png``; every run leaves one in the tmp dir.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from .support.servers import serve_process

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page, WebSocketRoute

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
APPS = [
    "examples.chat.starlette_app",
    "examples.chat.fastapi_app",
    "examples.chat.quart_app",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "chat.png"
TIMEOUT_MS = 10_000

if not os.path.exists(CHROMIUM):
    pytest.skip("chromium not found: apt-get install chromium", allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api")


def _first_app() -> str | None:
    for module in APPS:
        try:
            if importlib.util.find_spec(module) is not None:
                return module
        except ImportError:
            continue
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    module = _first_app()
    if module is None:
        pytest.skip("not written yet")
    db = tmp_path_factory.mktemp("browser") / "chat.sqlite3"
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "CHAT_SECRET_KEY": "browser-test-secret",
        "CHAT_REDIS_URL": "",
    }
    with serve_process(f"{module}:app", env=env) as (address, _proc):
        yield f"http://{address}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(browser: Browser, base: str, username: str) -> Page:
    """A fresh browser profile that logs in through the login form and lands on the chat."""
    context = await browser.new_context(
        base_url=base, viewport={"width": 1000, "height": 560}, device_scale_factor=1
    )
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto("/")  # anonymous: redirected to the login page
    await page.wait_for_url("**/login")
    await page.fill("#username", username)
    await page.fill("#password", username.capitalize())
    await page.click("#login-button")
    await page.wait_for_url(base + "/")
    await page.wait_for_selector('#status[data-state="online"]')
    await async_api.expect(page.locator("#me")).to_have_text(username)
    return page


async def say(page: Page, kind: str, text: str, target: str | None = None) -> None:
    await page.select_option("#kind", kind)
    if kind == "Group" and target:
        await page.select_option("#group", target)
    if kind == "Direct" and target:
        await page.select_option("#user", target)
    await page.fill("#text", text)
    await page.press("#text", "Enter")


def last_text(page: Page) -> Locator:
    return page.locator("#messages .message .text").last


async def test_two_users_chat_in_the_browser(browser: Browser, site: str) -> None:
    expect = async_api.expect
    greg = await sign_in(browser, site, "greg")
    chuck = await sign_in(browser, site, "chuck")
    mike = await sign_in(browser, site, "mike")
    amanda = await sign_in(browser, site, "amanda")

    # presence: the boys online are listed in chuck's sidebar
    await expect(chuck.locator(".presence-group li")).to_have_text(["chuck", "greg", "mike"])

    await say(greg, "Group", "Anyone up for football tonight?", "boys")
    await expect(last_text(chuck)).to_have_text("Anyone up for football tonight?")
    await expect(last_text(greg)).to_have_text("Anyone up for football tonight?")

    await say(mike, "Group", "Yes! The field by the river at 7?", "boys")
    await expect(last_text(chuck)).to_have_text("Yes! The field by the river at 7?")

    await say(amanda, "BroadCast", "There is pizza in the kitchen for everyone.")
    for page in (greg, chuck, mike, amanda):
        await expect(last_text(page)).to_have_text("There is pizza in the kitchen for everyone.")

    await say(chuck, "Group", "Count me in, after the pizza.", "boys")
    await expect(last_text(greg)).to_have_text("Count me in, after the pizza.")

    await say(greg, "Direct", "Can you bring the ball?", "chuck")
    await expect(last_text(chuck)).to_have_text("Can you bring the ball?")
    await expect(chuck.locator("#messages .message.direct .where").last).to_have_text(
        "to chuck (direct)"
    )
    await say(chuck, "Direct", "Sure, see you there.", "greg")
    await expect(last_text(greg)).to_have_text("Sure, see you there.")
    await expect(last_text(chuck)).to_have_text("Sure, see you there.")
    await expect(mike.locator("#messages .message")).to_have_count(4)  # no direct messages
    await expect(amanda.locator("#messages .message")).to_have_count(1)  # only the broadcast

    shot = await chuck.screenshot(type="png")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "asgi_groups-chat.png"
    path.write_bytes(shot)
    if os.environ.get("SAVE_SCREENSHOT") == "1" or not DOCS_SCREENSHOT.exists():
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)


async def test_markup_in_a_message_is_shown_as_text(browser: Browser, site: str) -> None:
    expect = async_api.expect
    greg = await sign_in(browser, site, "greg")
    mike = await sign_in(browser, site, "mike")
    payload = (
        '<img src=x onerror="window.__pwned = 1"><b>bold</b><script>window.__pwned = 2</script>'
    )
    await say(greg, "Group", payload, "boys")
    await expect(last_text(mike)).to_have_text(payload)
    for page in (greg, mike):
        assert await page.locator("#messages img, #messages b, #messages script").count() == 0
        assert await page.evaluate("window.__pwned") is None


async def test_error_frames_are_shown(browser: Browser, site: str) -> None:
    lisa = await sign_in(browser, site, "lisa")
    await lisa.select_option("#kind", "Direct")
    await lisa.evaluate(
        """() => {
            const option = document.createElement("option");
            option.value = option.textContent = "nobody";
            document.getElementById("user").append(option);
        }"""
    )
    await say(lisa, "Direct", "hello?", "nobody")
    notice = lisa.locator("#messages .notice.error").last
    await async_api.expect(notice).to_contain_text("unknown_user")
    await async_api.expect(lisa.locator("#status")).to_have_attribute("data-state", "online")


async def test_logout_stops_every_tab_of_that_user(browser: Browser, site: str) -> None:
    anny = await sign_in(browser, site, "anny")
    second_tab = await anny.context.new_page()
    await second_tab.goto("/")
    await second_tab.wait_for_selector('#status[data-state="online"]')
    await anny.click("#logout")
    await anny.wait_for_url("**/login")
    # the other tab's socket was closed with 4401: it says so and does not reconnect
    status = second_tab.locator("#status")
    await async_api.expect(status).to_have_attribute("data-state", "stopped")
    await async_api.expect(status).to_have_text("signed out")
    await async_api.expect(second_tab.locator("#send")).to_be_disabled()


async def test_page_splits_coalesced_frames_and_reconnects(browser: Browser, site: str) -> None:
    """Against a scripted server: its answer to the client's hello is one frame of several JSON
    lines (the welcome, frames to this socket alone, channel messages), then a drop, then a
    4401."""
    context = await browser.new_context(base_url=site)
    connections: list[WebSocketRoute] = []

    async def fake_server(ws: WebSocketRoute) -> None:
        connections.append(ws)
        n = len(connections)
        welcome = {
            "type": "ag.welcome",
            "connection": f"c{n}",
            "user": "1",
            "recovered": True,
            "channels": {"g:boys": {"recovered": False, "reason": "no history"}},
        }
        direct = [
            {
                "type": "hello",
                "user": "greg",
                "groups": ["boys"],
                "all_groups": ["boys"],
                "users": [],
            },
            {"type": "presence", "group": "boys", "users": ["greg", "mike"]},
        ]
        chat = [
            {
                "type": "group",
                "from": "mike",
                "text": f"line {line} of drop {n}",
                "group": "boys",
                "id": f"drop{n}-{line}",
                "ts": 1_700_000_000 + 10 * n + i,
            }
            for i, line in enumerate(("one", "two"))
        ]
        envelopes = [{"type": "ag.message", "channel": "g:boys", "data": c} for c in chat]

        async def answer(message: str | bytes) -> None:
            if json.loads(message).get("type") != "ag.hello":
                return
            ws.send("\n".join(json.dumps(f) for f in [welcome, *direct, *envelopes]))
            await ws.close(code=1012 if n == 1 else 4401, reason="scripted")

        ws.on_message(answer)

    await context.route_web_socket("**/ws", fake_server)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto("/login")
    await page.fill("#username", "greg")
    await page.fill("#password", "Greg")
    await page.click("#login-button")
    await page.wait_for_url(site + "/")
    texts = page.locator("#messages .message .text")
    await async_api.expect(texts).to_have_text(
        ["line one of drop 1", "line two of drop 1", "line one of drop 2", "line two of drop 2"]
    )  # 1012 → reconnected after a backoff; 4401 → stopped
    await async_api.expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    await page.wait_for_timeout(1000)  # longer than the first backoff
    assert len(connections) == 2
    await context.close()
