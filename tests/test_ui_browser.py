"""The review page in a real browser (Debian's headless Chromium through Playwright): log in, accept a
conversation, export it, and check the downloaded file.

Skipped where Debian's Chromium is missing, except in CI (tests/debian.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from .conftest import KEY
from .dataset_kit import sample, start_review_proxy
from .debian import program
from .test_exports import check_sharegpt

pytestmark = pytest.mark.browser

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page() -> Iterator[Any]:
    chromium = program("chromium", "chromium")
    from playwright.sync_api import sync_playwright  # a test dependency; its own browser download is not used

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            context = browser.new_context(accept_downloads=True)
            tab = context.new_page()
            tab.set_default_timeout(15_000)
            yield tab
        finally:
            browser.close()


def test_log_in_accept_a_conversation_and_export_it(page: Any, stack: ExitStack, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = sample(tmp_path / "datasets")
    url = start_review_proxy(stack, tmp_path, monkeypatch).url

    # A browser without a session lands on the login page; a wrong key is refused, the right one lets it in.
    page.goto(url + "/ui")
    assert page.url.endswith("/ui/login")
    page.fill("#key", "not the key")
    page.click("button[type=submit]")
    assert "Incorrect key." in page.inner_text("[role=alert]")
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/ui")
    assert page.locator("h1").inner_text() == "Sessions"
    cookie = next(c for c in page.context.cookies() if c["name"] == "mooltiproxy_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]

    # Find the conversation, open it, accept its whole branch.
    page.fill("input[name=q]", "third answer")
    page.click("form[role=search] button")
    page.get_by_role("link", name="one", exact=True).click()
    assert page.locator(".answer").count() == 3
    page.click("text=Accept the whole branch")
    page.wait_for_load_state()
    assert page.locator(".answer.accepted").count() == 3

    # Export what was accepted (a row per conversation, the default), and check the downloaded file.
    page.click("nav >> text=Export")
    assert page.is_checked("input[name=accepted_only]") and not page.is_checked("input[name=every_turn]")
    page.click("button[name=check]")
    assert "1 row in sharegpt format." in page.inner_text("#report")
    with page.expect_download() as info:
        page.click("#report >> text=Download these 1")
    saved = tmp_path / "download.jsonl"
    info.value.save_as(saved)
    assert info.value.suggested_filename.startswith("mooltiproxy-sharegpt-")
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["id"] for r in rows] == [recorded["a3"]["id"]]
    check_sharegpt(rows[0])
    assert rows[0]["conversations"][-1] == {"from": "gpt", "value": "third answer"}
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)

    # Every answer of one session at once, from the filtered thread list.
    page.goto(url + "/ui/threads?session=s2")
    page.click("text=Accept all")
    page.wait_for_load_state()
    assert "6 of 6 answers in 5 threads set to accepted" in page.inner_text("main")
