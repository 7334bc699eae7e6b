"""The web page in a real headless browser (Debian chromium + chromium-driver through
Selenium), against the household of gateway/testing/web.py served in-process: sign in,
two upstreams in the right states with the right counts, "fetch now" raises the count,
sign out; another user cannot see alice's upstreams (page and JSON); a form without its
CSRF token is refused. Screenshots at desktop and phone widths are saved as artifacts
(``POPGATE_WEB_ARTIFACTS`` or a temp dir); ``POPGATE_WEB_README_SHOT=path`` also writes
the README picture.

Without chromium the tests skip, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.browser import (
    DESKTOP,
    PHONE,
    artifacts_dir,
    card,
    chromium,
    need_browser,
    number,
    screenshot,
    sign_in,
    wait_url,
)
from gateway.testing.web import PASSWORDS, start_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    need_browser()
    built = start_world(tmp_path_factory.mktemp("web"))
    yield built
    built.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return artifacts_dir(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def test_sign_in_see_states_fetch_now_and_sign_out(world, browser, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(world.url + "/")
    assert browser.current_url.endswith("/signin")  # nothing without a session
    sign_in(browser, world.url, "alice", "not-her-password")
    WebDriverWait(browser, 30).until(lambda b: "Wrong user name or password." in b.page_source)
    sign_in(browser, world.url, "alice", PASSWORDS["alice"])
    wait_url(browser, world.url + "/")
    assert browser.find_element(By.ID, "who").text == "alice"

    names = [
        e.get_attribute("data-upstream")
        for e in browser.find_elements(By.CSS_SELECTOR, "article.upstream")
    ]
    assert names == ["club", "family", "home"]  # hers and her household's, not bob's
    home, club = card(browser, "home"), card(browser, "club")
    assert home.get_attribute("data-state") == "ok"
    assert "✓ OK" in home.text
    assert number(home, "count-total") == 5
    assert club.get_attribute("data-state") == "failing"
    assert "✗ Failing" in club.text and "Failing since" in club.text
    assert "wrong password" in club.find_element(By.CLASS_NAME, "error").text
    assert number(club, "count-total") == 0
    day_before = number(home, "count-day")

    screenshot(browser, artifacts / "web-status-desktop.png", DESKTOP)
    screenshot(browser, artifacts / "web-status-phone.png", PHONE)
    readme = os.environ.get("POPGATE_WEB_README_SHOT")
    if readme:
        screenshot(browser, Path(readme), DESKTOP, full=False)

    # one column on a phone: the cards sit under each other
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True},
    )
    browser.refresh()
    lefts = {c.rect["x"] for c in browser.find_elements(By.CSS_SELECTOR, "article.upstream")}
    assert len(lefts) == 1
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.refresh()

    world.add_mail("home", 3)
    card(browser, "home").find_element(By.CLASS_NAME, "fetch-now").click()
    notice = WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "notice")).text
    assert notice == "Fetched 3 new messages from home."
    home = card(browser, "home")
    assert number(home, "count-total") == 8
    assert number(home, "count-day") == day_before + 3

    browser.find_element(By.ID, "signout").click()
    wait_url(browser, world.url + "/signin")
    browser.get(world.url + "/")
    assert browser.current_url.endswith("/signin")
    browser.get(world.url + "/api/status")
    assert json.loads(browser.find_element(By.TAG_NAME, "body").text) == {"error": "sign in first"}


def test_another_user_cannot_see_alices_upstreams(world, browser) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, world.url, "bob", PASSWORDS["bob"])
    wait_url(browser, world.url + "/")
    names = [
        e.get_attribute("data-upstream")
        for e in browser.find_elements(By.CSS_SELECTOR, "article.upstream")
    ]
    assert names == ["bobs", "family"]
    assert "home" not in browser.find_element(By.ID, "upstreams").text
    owners = [
        e.get_attribute("data-owner")
        for e in browser.find_elements(By.CSS_SELECTOR, "article[data-owner]")
    ]
    assert owners == ["bob", "shared:family"]
    browser.get(world.url + "/api/status")
    status = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert [u["name"] for u in status["upstreams"]] == ["bobs", "family"]
    assert "alice" not in json.dumps(status)


def test_a_form_without_its_csrf_token_is_refused(world, browser) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, world.url, "alice", PASSWORDS["alice"])
    wait_url(browser, world.url + "/")
    before = number(card(browser, "family"), "count-total")
    world.add_mail("family", 1)
    browser.execute_script(
        "document.querySelector('article[data-upstream=\"family\"] input[name=csrf]').remove()"
    )
    card(browser, "family").find_element(By.CLASS_NAME, "fetch-now").click()
    wait_url(browser, world.url + "/fetch")
    assert "Refused" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(world.url + "/")
    assert number(card(browser, "family"), "count-total") == before  # nothing was fetched
    assert re.search(r"Signed in as", browser.page_source)
