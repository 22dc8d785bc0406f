"""The dashboard in a real headless browser (Debian's chromium and
chromium-driver, driven by Selenium, offline), against a live tunnel.

The page is loaded through a proxy from a loopback port to the daemon's API
Unix socket (phantomlab/browser.py), so it is also the "works over the Unix
socket proxy" check.  Screenshots go to $PHANTOM_ARTIFACTS (default
test-artifacts/ in the repository)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from phantomlab import browser, iperf
from phantomlab.nodes import mesh
from phantomlab.poll import wait_for
from tests.support import REPO

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

ARTIFACTS = Path(os.environ.get("PHANTOM_ARTIFACTS",
                                REPO / "test-artifacts"))


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / ("dashboard-%s.png" % name)
    driver.save_screenshot(str(path))
    return path


def text_of(driver, css):
    """The visible text of the first element matching ``css``, read in one
    script call: the page re-renders its tables every second, so an element
    found in one call may be gone by the next (a stale reference)."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : null", css)


def row_text(driver, peer, cls):
    return text_of(driver, 'tr[data-peer="%s"] %s' % (peer, cls))


def click(driver, css, timeout=10.0):
    """Click the element matching ``css``, finding it again if a re-render
    replaced it between the find and the click."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    deadline = time.monotonic() + timeout
    while True:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def js(driver, expr):
    return driver.execute_script("return " + expr)


def fetch(driver, method, path, token=None, body=None):
    """A request made by the page's origin (what a script in the page can do)."""
    return driver.execute_async_script("""
        const [method, path, token, body, done] = arguments;
        const headers = {};
        if (token) headers["Authorization"] = "Bearer " + token;
        fetch(path, {method, headers, body}).then(async r => done([r.status, await r.text()]))
          .catch(e => done([0, String(e)]));""", method, path, token, body)


def udp_delivered(src, dst_node, port, n=3):
    """Send n datagrams from src to dst_node's tunnel address:port; count arrivals."""
    listener = dst_node.host.ns.udp_socket(bind=(dst_node.tun4, port))
    listener.settimeout(0.5)
    sender = src.host.ns.udp_socket()
    got = 0
    try:
        for i in range(n):
            sender.sendto(b"fw-check %d" % i, (dst_node.tun4, port))
        for _ in range(n):
            try:
                listener.recvfrom(100)
                got += 1
            except socket.timeout:
                break
    finally:
        sender.close()
        listener.close()
    return got


@pytest.fixture
def driver(tmp_path):
    profile = tmp_path / "chromium"
    profile.mkdir()
    d = browser.make_driver(profile)
    yield d
    d.quit()


def test_dashboard_in_headless_chromium(two_hosts, daemon_factory, tmp_path, driver):
    from selenium.webdriver.common.by import By
    sock = tmp_path / "api.sock"
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b], start_daemons=False)
    from phantomlab.nodes import start
    from phantomlab.templates import peer_entry, write_config
    write_config(a, mode="tun", peers=[peer_entry(b, mode="tun")],
                 extra={"http_socket": str(sock)})
    start(daemon_factory, a)
    start(daemon_factory, b)
    assert a.host.ns.ping(b.tun4, timeout=10)
    token = a.daemon.token
    proxy = browser.UnixProxy(sock)
    try:
        # --- loads, no console errors, the live peer shown as established ---------------
        driver.get(proxy.url)
        wait_for(lambda: row_text(driver, "n2", ".state") == "established", timeout=10,
                 what="n2 established in the page")
        assert row_text(driver, "n2", ".path") == "direct"
        assert row_text(driver, "n2", ".endpoint") == "%s:9000" % two_hosts.b.ip
        assert a.pub in text_of(driver, "#daemon")
        wait_for(lambda: js(driver, "window.phantomDashboard.polls") >= 3, what="three polls")
        assert browser.console_errors(driver) == []

        # --- the throughput chart moves during an iperf3 run -----------------------------
        blank = js(driver, 'document.querySelector(\'canvas[data-peer="n2"]\').toDataURL()')
        with iperf.Server(b.host, b.tun4, 5221):
            client = iperf.Client(a.host, b.tun4, port=5221, seconds=5, json=False).start()
            wait_for(lambda: max([p["tx"] for p in js(driver, 'window.phantomDashboard.rates["n2"]')]
                                 or [0]) > 5e6, timeout=10, what="the chart to show > 5 Mbit/s")
            time.sleep(1.2)
            moving = js(driver, 'document.querySelector(\'canvas[data-peer="n2"]\').toDataURL()')
            assert moving != blank, "the canvas did not change"
            assert "Mbit/s" in row_text(driver, "n2", ".rate .tx") or \
                "Gbit/s" in row_text(driver, "n2", ".rate .tx")
            screenshot = shot(driver, "iperf3")
            client.result(timeout=20)

        # --- a request without the token is refused ----------------------------------------
        status, text = fetch(driver, "POST", "close/n2")
        assert status == 401 and "token" in json.loads(text)["error"]
        click(driver, 'tr[data-peer="n2"] button.close')
        wait_for(lambda: "missing or wrong API token" in text_of(driver, "#error"),
                 what="the page to show the 401")
        assert a.peer("n2")["state"] == "established"
        assert "token" not in driver.current_url and token not in driver.current_url

        # --- sign in: the token goes to sessionStorage, never into a URL ---------------------
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "signin-button").click()
        wait_for(lambda: text_of(driver, "#auth-state") == "signed in",
                 what="signed in")
        assert js(driver, 'sessionStorage.getItem("phantom.token")') == token
        assert js(driver, "localStorage.length") == 0
        assert token not in driver.current_url

        # --- a firewall edit in the page takes effect on the next packet ----------------------
        assert udp_delivered(b, a, 7400) == 3
        driver.find_element(By.CSS_SELECTOR, "#firewall-edit summary").click()
        area = driver.find_element(By.ID, "firewall-text")
        # An invalid edit first: the page shows the API's own error, word for word.
        bad = json.dumps({"rules": [{"direction": "in", "action": "explode"}]})
        driver.execute_script("arguments[0].value = arguments[1]", area, bad)
        driver.find_element(By.ID, "firewall-apply").click()
        code, api_err = a.api("PUT", "/firewall", json.loads(bad))
        assert code == 400
        wait_for(lambda: text_of(driver, "#error") == api_err["error"],
                 what="the API's error in the page")
        good = json.dumps({"rules": [{"direction": "in", "proto": "udp", "dst_port": 7400,
                                      "action": "drop", "comment": "from the dashboard"}]})
        driver.execute_script("arguments[0].value = arguments[1]", area, good)
        driver.find_element(By.ID, "firewall-apply").click()
        wait_for(lambda: (text_of(driver, "#firewall-result") or "").startswith("applied"),
                 what="the edit to apply")
        assert udp_delivered(b, a, 7400) == 0, "the rule made in the page did not drop"
        assert udp_delivered(b, a, 7401) == 3
        wait_for(lambda: text_of(driver, 'tr[data-rule="0"] .hits') == "3",
                 what="the rule's hit counter in the page")
        shot(driver, "firewall")

        # --- close and open the peer from the page ----------------------------------------------
        click(driver, 'tr[data-peer="n2"] button.close')
        wait_for(lambda: a.peer("n2")["state"] == "idle", what="n2 closed")
        wait_for(lambda: row_text(driver, "n2", ".state") == "idle", what="the page shows idle")
        click(driver, 'tr[data-peer="n2"] button.open')
        wait_for(lambda: row_text(driver, "n2", ".state") == "established", timeout=15,
                 what="n2 open again")
        events = text_of(driver, "#events")
        assert "n2" in events and "closed" in events
        assert browser.console_errors(driver) == [] or all(
            "401" in e["message"] or "400" in e["message"] for e in browser.console_errors(driver))
        shot(driver, "final")
    finally:
        proxy.close()
    print("screenshots in", screenshot.parent)


def test_dashboard_over_the_tcp_listener_and_host_check(two_hosts, daemon_factory, tmp_path,
                                                        driver):
    a, b = mesh(daemon_factory, tmp_path, [two_hosts.a, two_hosts.b])
    proxy = browser.NetnsProxy(two_hosts.a.ns.name)
    try:
        driver.get(proxy.url)
        wait_for(lambda: row_text(driver, "n2", ".name") == "n2", timeout=10, what="n2 listed")
        assert browser.console_errors(driver) == []
        # A name that is not an IP literal or localhost is refused (DNS rebinding).
        code, body = a.host.ns.http("GET", "/", headers={"Host": "evil.example:4567"})
        assert code == 403
    finally:
        proxy.close()
