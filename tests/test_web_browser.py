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

import base64
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.web import PASSWORDS, start_world

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (390, 844)


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        why = f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    _need_browser()
    built = start_world(tmp_path_factory.mktemp("web"))
    yield built
    built.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    where = os.environ.get("POPGATE_WEB_ARTIFACTS") or tempfile.mkdtemp(prefix="popgate-web-")
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    _need_browser()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver, path: Path, size: tuple[int, int], *, full: bool = True) -> None:
    """The page at ``size`` (CSS pixels; a phone is emulated as a mobile viewport), the
    whole length of the page when ``full``."""
    width, height = size
    mobile = width < 600
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.refresh()
    shot: dict = {"format": "png", "captureBeyondViewport": full}
    if full:
        content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot["clip"] = {"x": 0, "y": 0, "width": width, "height": content["height"], "scale": 1}
    data = driver.execute_cdp_cmd("Page.captureScreenshot", shot)["data"]
    path.write_bytes(base64.b64decode(data))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def _sign_in(driver, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/signin")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "signin").click()


def _wait_url(driver, url: str) -> None:
    """Wait for a form's navigation to end at ``url`` (a click may return before)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(expected_conditions.url_to_be(url))


def _card(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'article[data-upstream="{name}"]')


def _number(card, cls: str) -> int:
    from selenium.webdriver.common.by import By

    return int(card.find_element(By.CLASS_NAME, cls).text)


def test_sign_in_see_states_fetch_now_and_sign_out(world, browser, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(world.url + "/")
    assert browser.current_url.endswith("/signin")  # nothing without a session
    _sign_in(browser, world.url, "alice", "not-her-password")
    WebDriverWait(browser, 30).until(lambda b: "Wrong user name or password." in b.page_source)
    _sign_in(browser, world.url, "alice", PASSWORDS["alice"])
    _wait_url(browser, world.url + "/")
    assert browser.find_element(By.ID, "who").text == "alice"

    names = [
        e.get_attribute("data-upstream")
        for e in browser.find_elements(By.CSS_SELECTOR, "article.upstream")
    ]
    assert names == ["club", "family", "home"]  # hers and her household's, not bob's
    home, club = _card(browser, "home"), _card(browser, "club")
    assert home.get_attribute("data-state") == "ok"
    assert "✓ OK" in home.text
    assert _number(home, "count-total") == 5
    assert club.get_attribute("data-state") == "failing"
    assert "✗ Failing" in club.text and "Failing since" in club.text
    assert "wrong password" in club.find_element(By.CLASS_NAME, "error").text
    assert _number(club, "count-total") == 0
    day_before = _number(home, "count-day")

    _screenshot(browser, artifacts / "web-status-desktop.png", DESKTOP)
    _screenshot(browser, artifacts / "web-status-phone.png", PHONE)
    readme = os.environ.get("POPGATE_WEB_README_SHOT")
    if readme:
        _screenshot(browser, Path(readme), DESKTOP, full=False)

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
    _card(browser, "home").find_element(By.CLASS_NAME, "fetch-now").click()
    notice = WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "notice")).text
    assert notice == "Fetched 3 new messages from home."
    home = _card(browser, "home")
    assert _number(home, "count-total") == 8
    assert _number(home, "count-day") == day_before + 3

    browser.find_element(By.ID, "signout").click()
    _wait_url(browser, world.url + "/signin")
    browser.get(world.url + "/")
    assert browser.current_url.endswith("/signin")
    browser.get(world.url + "/api/status")
    assert json.loads(browser.find_element(By.TAG_NAME, "body").text) == {"error": "sign in first"}


def test_another_user_cannot_see_alices_upstreams(world, browser) -> None:
    from selenium.webdriver.common.by import By

    _sign_in(browser, world.url, "bob", PASSWORDS["bob"])
    _wait_url(browser, world.url + "/")
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

    _sign_in(browser, world.url, "alice", PASSWORDS["alice"])
    _wait_url(browser, world.url + "/")
    before = _number(_card(browser, "family"), "count-total")
    world.add_mail("family", 1)
    browser.execute_script(
        "document.querySelector('article[data-upstream=\"family\"] input[name=csrf]').remove()"
    )
    _card(browser, "family").find_element(By.CLASS_NAME, "fetch-now").click()
    _wait_url(browser, world.url + "/fetch")
    assert "Refused" in browser.find_element(By.TAG_NAME, "h1").text
    browser.get(world.url + "/")
    assert _number(_card(browser, "family"), "count-total") == before  # nothing was fetched
    assert re.search(r"Signed in as", browser.page_source)
