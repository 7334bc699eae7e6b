"""Driving the web page in a real headless browser: Debian ``chromium`` with its
``chromium-driver`` through Selenium, for the web tests (in-process and end to end).

Without chromium (or selenium) :func:`need_browser` skips, except in CI (``CI=true``),
where it fails: CI must install them (``make system-packages``). Screenshots are taken
with the DevTools protocol, at an emulated viewport (a phone as a mobile one), whole
pages long; :func:`artifacts_dir` is where tests save them (``POPGATE_WEB_ARTIFACTS`` or
the test's own temp dir, which pytest keeps for its last three runs and then removes).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DESKTOP = (1280, 900)
PHONE = (390, 844)
WAIT = 30.0
"""Seconds a test waits for a navigation or an element."""


def need_browser() -> None:
    """Skip (fail under CI) when chromium, its driver or selenium is missing."""
    import pytest

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


def artifacts_dir(default: Path) -> Path:
    """Where screenshots go: ``POPGATE_WEB_ARTIFACTS`` (to keep them, e.g. in CI), else
    ``default``, a directory under the test's pytest temp dir (a ``mkdtemp`` of our own
    was never removed: every run left one in /tmp)."""
    where = os.environ.get("POPGATE_WEB_ARTIFACTS") or default
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium (a Selenium driver) with its profile in ``profile``."""
    need_browser()
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
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, path: Path, size: tuple[int, int], *, full: bool = True) -> None:
    """The page at ``size`` (CSS pixels; a phone is emulated as a mobile viewport), the
    whole length of the page when ``full``."""
    width, height = size
    mobile = width < 600
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.refresh()
    shot: dict[str, Any] = {"format": "png", "captureBeyondViewport": full}
    if full:
        content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot["clip"] = {"x": 0, "y": 0, "width": width, "height": content["height"], "scale": 1}
    data = driver.execute_cdp_cmd("Page.captureScreenshot", shot)["data"]
    path.write_bytes(base64.b64decode(data))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def sign_in(driver: Any, url: str, user: str, password: str) -> None:
    """Fill in and send the sign-in form (the navigation may still be running)."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/signin")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "signin").click()


def wait_url(driver: Any, url: str) -> None:
    """Wait for a form's navigation to end at ``url`` (a click may return before)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(expected_conditions.url_to_be(url))


def card(driver: Any, name: str) -> Any:
    """The upstream's card on the status page."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'article[data-upstream="{name}"]')


def number(element: Any, cls: str) -> int:
    """The integer shown in ``element``'s child of class ``cls`` (``count-total``...)."""
    from selenium.webdriver.common.by import By

    return int(element.find_element(By.CLASS_NAME, cls).text)


def upstream_names(driver: Any) -> list[str]:
    """The upstream cards on the page, in order."""
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.CSS_SELECTOR, "article.upstream")
    return [c.get_attribute("data-upstream") for c in cards]
