"""Acceptance of the web page (issue 18) with real processes: a real ``popgate serve`` with
``[server] web`` configured, Dovecot as the POP3 upstream, and headless Chromium.

alice has two upstreams on the same Dovecot account: ``home`` (right password, mail
waiting) and ``club`` (wrong password). She signs in, sees both in the right states with
the right counts, presses "fetch now" after new mail reached Dovecot and sees the count
rise, and signs out. bob, a second user, sees none of alice's upstreams (page and
``/api/status``), and a POST without the CSRF token is refused. Screenshots at desktop
and phone widths are saved (``POPGATE_WEB_ARTIFACTS`` or a temp dir).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import samplemail
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
    upstream_names,
    wait_url,
)
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.ports import free_port
from gateway.testing.web import Client

pytestmark = pytest.mark.slow

PASSWORDS = {"alice": "alice-web-pw", "bob": "bob-web-pw"}
WAITING = 5
"""Messages on Dovecot before the gateway starts."""
WAIT = 90.0


def api_status(url: str, user: str) -> dict[str, Any]:
    """``/api/status`` as a script reads it (HTTP Basic, RFC 7617)."""
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    request = urllib.request.Request(
        url + "/api/status", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_both_passes(url: str) -> dict[str, dict[str, Any]]:
    """The first pass of each upstream has ended (one fetched, one failed)."""
    deadline = time.monotonic() + WAIT
    ups: dict[str, dict[str, Any]] = {}
    while True:
        try:
            ups = {u["name"]: u for u in api_status(url, "alice")["upstreams"]}
        except OSError:  # the web listener is not up yet
            pass
        if ups and ups["home"]["state"] == "ok" and ups["club"]["state"] == "failing":
            return ups
        assert time.monotonic() < deadline, ups
        time.sleep(0.5)


@pytest.fixture
def gateway(dovecot, tmp_path: Path):
    need_browser()
    dovecot.deliver_many("alice", samplemail.generate(WAITING, seed=18))
    web_port = free_port()

    def upstream(name: str, password: str) -> dict[str, Any]:
        return {
            "name": name,
            "owner": "alice",
            "host": "127.0.0.1",
            "port": dovecot.pop3_port,
            "tls": "none",
            "username": "alice",
            "password": password,
            "poll_interval": "1h",  # after the first pass, only "fetch now" fetches
            "notify": False,
        }

    proc = GatewayProcess(
        tmp_path / "gw",
        users=PASSWORDS,
        upstreams=[upstream("home", "secret"), upstream("club", "not-the-password")],
        extra_server={"web": [f"tcp:{web_port}:interface=127.0.0.1"], "admins": []},
    )
    with proc:
        proc.url = f"http://127.0.0.1:{web_port}"  # type: ignore[attr-defined]
        yield proc
        code = proc.stop()
    assert code == 0, proc.log_text()[-3000:]  # the recorder and the site stop cleanly
    assert "Traceback" not in proc.log_text()
    assert "alice-web-pw" not in proc.log_text() and "not-the-password" not in proc.log_text()


def test_a_household_uses_the_page_of_a_real_gateway(gateway, dovecot, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = gateway.url
    ups = wait_for_both_passes(url)
    assert ups["home"]["messages_fetched"] == WAITING
    assert ups["club"]["failing_since"] is not None and ups["club"]["node"] is None
    artifacts = artifacts_dir(tmp_path / "screenshots")

    with chromium(tmp_path / "profile") as browser:
        browser.get(url + "/")
        assert browser.current_url == url + "/signin"  # nothing without a session
        sign_in(browser, url, "alice", PASSWORDS["alice"])
        wait_url(browser, url + "/")
        assert browser.find_element(By.ID, "who").text == "alice"
        assert upstream_names(browser) == ["club", "home"]
        home, club = card(browser, "home"), card(browser, "club")
        assert home.get_attribute("data-state") == "ok" and "✓ OK" in home.text
        assert number(home, "count-total") == WAITING
        assert club.get_attribute("data-state") == "failing"
        assert "✗ Failing" in club.text and "Failing since" in club.text
        assert "wrong password" in club.find_element(By.CLASS_NAME, "error").text
        assert number(club, "count-total") == 0
        day_before = number(home, "count-day")

        screenshot(browser, artifacts / "web-e2e-desktop.png", DESKTOP)
        screenshot(browser, artifacts / "web-e2e-phone.png", PHONE)

        dovecot.deliver_many("alice", samplemail.generate(3, seed=19))
        card(browser, "home").find_element(By.CLASS_NAME, "fetch-now").click()
        notice = WebDriverWait(browser, WAIT).until(lambda b: b.find_element(By.ID, "notice"))
        assert notice.text == "Fetched 3 new messages from home."
        home = card(browser, "home")
        assert number(home, "count-total") == WAITING + 3
        assert number(home, "count-day") == day_before + 3

        browser.find_element(By.ID, "signout").click()
        wait_url(browser, url + "/signin")
        browser.get(url + "/")
        assert browser.current_url == url + "/signin"

        # bob: a second user sees none of alice's upstreams, on the page or in the JSON
        sign_in(browser, url, "bob", PASSWORDS["bob"])
        wait_url(browser, url + "/")
        assert browser.find_element(By.ID, "who").text == "bob"
        assert upstream_names(browser) == []
        assert "home" not in browser.find_element(By.TAG_NAME, "main").text
        browser.get(url + "/api/status")
        status = json.loads(browser.find_element(By.TAG_NAME, "body").text)
        assert status["upstreams"] == [] and "alice" not in json.dumps(status)
    assert api_status(url, "bob")["upstreams"] == []
    assert [u["name"] for u in api_status(url, "alice")["upstreams"]] == ["club", "home"]


def test_a_post_without_the_csrf_token_is_refused(gateway, dovecot) -> None:
    url = gateway.url
    wait_for_both_passes(url)
    client = Client(url)
    assert client.sign_in("alice", PASSWORDS["alice"]) == 303
    dovecot.deliver_many("alice", samplemail.generate(1, seed=20))
    code, _headers, text = client.request("POST", "/fetch", {"upstream": "home"})
    assert code == 403 and "Refused" in text
    code, _headers, text = client.request("POST", "/fetch", {"upstream": "home", "csrf": "forged"})
    assert code == 403
    assert api_status(url, "alice")["upstreams"][1]["messages_fetched"] == WAITING
