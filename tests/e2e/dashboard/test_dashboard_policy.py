"""The dashboard's firewall panel with a network policy in force (issue 21
item 4), in a real headless chromium: the policy's rules, whether each
applies to this node, and the packets each decided, as GET /firewall
reports them from a real firewall slot with a real signed policy compiled
and real packets classified.  The API is the daemon's real app
(phantom/node/app.py) over the API tests' controller double (a daemon needs
the member stream, not built yet, to receive a policy)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from phantom.dataplane.types import Mode
from phantom.network import policy as P
from phantom.node import policy as NP
from phantom.node.app import create_app
from phantom.node.firewall import FirewallSlot
from phantomlab import browser
from phantomlab.poll import wait_for
from tests.support.apidouble import FakeController
from tests.unit.network.factory import NOW, Net

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120),
              pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))]

POLICY = """\
default = "deny"
[[rule]]
from = "group:laptops"
to = "group:servers"
proto = "icmp"
comment = "<b>ping</b>"
[[rule]]
from = "*"
to = "group:printers"
proto = "tcp"
ports = [631]
"""


class PolicyController(FakeController):
    """The API double, answering GET /firewall from a real firewall slot."""

    def __init__(self, slot):
        super().__init__()
        self.slot = slot

    def status(self):
        return dict(super().status(), peers=[])

    def firewall(self):
        return self.slot.describe()


class Served:
    def __init__(self, app):
        self.app, self.loop, self.port = app, asyncio.new_event_loop(), None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from aiohttp import web
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.runner = runner
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def driver(tmp_path):
    profile = tmp_path / "chromium"
    profile.mkdir()
    d = browser.make_driver(profile)
    yield d
    d.quit()


def test_the_firewall_panel_shows_the_policy_rules_and_their_hits(driver):
    net = Net()
    slot = FirewallSlot(Mode.TUN, {"stateful": False}, {"bob": 7},
                        {"laptops": frozenset({7})}, ("servers",))
    doc = P.sign_policy(P.parse_policy_source(POLICY), net.definition, net.admission, 3, NOW).doc
    NP.apply_policy(slot, doc, net.definition, NP.Identity("srv", bytes(32), ("servers",)), NOW)
    ping = bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 9, 0, 2, 10, 9, 0, 1, 8, 0]) + \
        bytes(6)
    for _ in range(4):
        assert slot.current.classify("in", ping, 7, now=1.0).accept
    ctl = PolicyController(slot)
    with Served(create_app(ctl, "ab" * 32)) as served:
        driver.get("http://127.0.0.1:%d/" % served.port)

        def rows():
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('#policy-rules tbody tr'))"
                ".map(r => Array.from(r.cells).map(c => c.textContent));")
        wait_for(lambda: len(rows()) == 2, timeout=15, what="the policy's rules in the page")
        assert rows() == [["1", "group:laptops", "group:servers", "icmp", "accept", "yes", "4"],
                          ["2", "*", "group:printers", "tcp 631", "accept", "no", "0"]]
        facts = driver.execute_script("return document.getElementById('policy-facts').textContent")
        assert "seq 3" in facts and "default deny" in facts and "default in here drop" in facts
        assert not driver.execute_script("return document.getElementById('policy').hidden")
        # the editable local table carries no policy (PUT /firewall takes it as it is)
        text = driver.execute_script("return document.getElementById('firewall-text').value")
        assert '"policy"' not in text and '"rules": []' in text
        assert browser.console_errors(driver) == []
        # more hits show at the next poll
        assert slot.current.classify("in", ping, 7, now=2.0).accept
        wait_for(lambda: rows()[0][-1] == "5", timeout=10, what="the hit count to follow")
