"""The member daemon's conversation with the network's directory (the I/O
half of membership.py, which keeps the state and the peer door sans-IO):

* :meth:`MemberStream.follow` polls the member stream (``GET
  /network/members`` once when nothing is known, then ``?since=SEQ`` every
  POLL seconds and at once after a knock, paging while ``more``) and hands
  each answer to :meth:`Membership.apply_page`; a directory that does not
  answer is retried with :func:`backoff` (0.5 s doubling, capped at
  MAX_BACKOFF), every URL in turn, forever: never a wait that does not retry;
* :meth:`MemberStream.keep_advertised` sends this member's advertisement of
  routes and exit (``POST /network/advertise``, issue 22) at start and after
  a reload that changes it, retrying like the stream;
* :meth:`MemberStream.keep_renewed` renews the certificate at 2/3 of its
  lifetime (``POST /network/renew``), retrying after 10 s doubling up to
  RENEW_MAX_WAIT until it expires.

Every request is bounded (HTTP_TIMEOUT, MAX_PAGE bytes); an answer that is
not JSON, too large, or a 5xx/429 counts as no answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, Callable, Optional

import aiohttp

from ..network.certificate import Certificate
from ..network.join import accept_join_answer
from ..network.errors import NetworkError

log = logging.getLogger("phantom.daemon")

POLL = 1.0                       # seconds between two pages of the member stream
MAX_BACKOFF = 5.0                # at most this long between two tries of an unanswering directory
HTTP_TIMEOUT = 5.0               # one request to the directory
MAX_PAGE = 8 * 1024 * 1024       # bytes of one answer (a snapshot of thousands of members)
MAX_PAGES = 64                   # pages in a row while ``more`` (then the next poll continues)
MIN_POLL_GAP = 0.2               # a knock polls at once, but not more often than this
RENEW_MAX_WAIT = 300.0           # at most this long between two renewal attempts


def backoff(failures: int, cap: float = MAX_BACKOFF, rng: Callable[[], float] = random.random
            ) -> float:
    """The wait after ``failures`` failed tries in a row: 0.5 s doubling, capped, jittered."""
    base = min(cap, 0.5 * (2 ** max(0, failures - 1)))
    return base * (0.75 + 0.5 * rng())


class MemberStream:
    """The loops of one :class:`~phantom.node.membership.Membership` ``m``."""

    def __init__(self, m):
        self.m = m

    async def request(self, method: str, path: str, body: Any = None) -> tuple:
        """(url, status, JSON) of the first directory that answers; OSError naming each."""
        failures = []
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        for url in self.m.section.directory:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.request(method, url.rstrip("/") + path, json=body) as r:
                        raw = await r.content.read(MAX_PAGE + 1)
                        if len(raw) > MAX_PAGE:
                            raise ValueError("answer larger than %d bytes" % MAX_PAGE)
                        if r.status >= 500 or r.status == 429:
                            raise ValueError("HTTP %d" % r.status)
                        return url, r.status, json.loads(raw)
            except (OSError, ValueError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                failures.append("%s: %s" % (url, str(exc) or exc.__class__.__name__))
        raise OSError("no directory answered: " + "; ".join(failures))

    async def poll_once(self) -> list:
        """Fetch and apply what is new (a snapshot when nothing is known,
        then pages while ``more``); OSError/ValueError when no directory gives
        a usable answer."""
        m = self.m
        changes = []
        for _ in range(MAX_PAGES):
            seq = m.members.seq
            path = "/network/members" if seq == 0 else "/network/members?since=%d" % seq
            url, status, page = await self.request("GET", path)
            if status != 200:
                raise ValueError("%s answered HTTP %d: %s" % (url, status, str(page)[:200]))
            if isinstance(page, dict) and isinstance(page.get("seq"), int) \
                    and "events" in page and page["seq"] < seq:
                # the directory knows less than we do (its store was replaced):
                # start again from its snapshot
                log.warning("network: %s is at seq %d, this node at %d: taking its snapshot",
                            url, page["seq"], seq)
                url, status, page = await self.request("GET", "/network/members")
            changes += m.apply_page(page)
            if not page.get("more"):
                break
        return changes

    async def follow(self) -> None:
        """Poll the member stream every POLL s (at once after a knock); expire, save the cache."""
        m = self.m
        stop = m.d.shutdown
        m.poll_now = poll_now = asyncio.Event()
        failures = 0
        while not stop.is_set():
            wait = POLL
            poll_now.clear()
            try:
                await self.poll_once()
                if failures:
                    log.info("network: the directory answers again (after %d failed polls)", failures)
                failures = 0
                m.directory_ok, m.last_poll_error = True, None
            except (OSError, ValueError) as exc:
                failures += 1
                m.stats["poll_failures"] += 1
                m.directory_ok, m.last_poll_error = False, str(exc)
                if failures == 1 or failures % 60 == 0:
                    log.warning("network: member stream: %s (retrying; the members known "
                                "stay peers)", exc)
                wait = max(POLL, backoff(failures))
            m.expire()
            m.save()
            await _first(stop, poll_now if not failures else None, wait)
            if poll_now.is_set() and not stop.is_set():
                await asyncio.sleep(MIN_POLL_GAP)

    async def renew_once(self) -> Certificate:
        """POST /network/renew; the new certificate is written and used."""
        m = self.m
        url, status, doc = await self.request("POST", "/network/renew", m.renewal_request())
        if status != 200:
            reason = doc.get("error") if isinstance(doc, dict) else doc
            raise ValueError("%s refused the renewal: %s" % (url, str(reason)[:300]))
        try:
            _, cert = accept_join_answer(doc, m.definition.fingerprint, m.public_key, m.clock())
        except NetworkError as exc:
            raise ValueError("%s answered a renewal this node cannot accept: %s" % (url, exc))
        if cert.version <= m.cert.version:
            raise ValueError("%s answered a certificate no newer than ours" % url)
        m.use_certificate(cert)
        return cert

    async def keep_renewed(self) -> None:
        m = self.m
        stop = m.d.shutdown
        failures = 0
        while not stop.is_set():
            now = m.clock()
            if m.renew_due(now) and now < m.cert.not_after:
                try:
                    await self.renew_once()
                    failures = 0
                    continue
                except (OSError, ValueError) as exc:
                    failures += 1
                    m.stats["renew_failures"] += 1
                    log.warning("network: renewing the certificate failed (%s); it expires in "
                                "%d s; retrying", exc, m.cert.not_after - now)
                    wait = min(RENEW_MAX_WAIT, 5.0 * 2 ** min(failures, 8))
            else:
                wait = min(RENEW_MAX_WAIT, max(1.0, m.renews_at() - now))
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass


    async def advertise_once(self) -> None:
        """POST /network/advertise with what [interface] offers now."""
        m = self.m
        routes, exit = m.routes.wanted()
        doc = m.advertisement_request(routes, exit)
        url, status, answer = await self.request("POST", "/network/advertise", doc)
        if status != 200:
            reason = answer.get("error") if isinstance(answer, dict) else answer
            raise ValueError("%s refused the advertisement: %s" % (url, str(reason)[:300]))
        m.routes.sent, m.routes.last_error = (routes, exit), None
        log.info("network: advertised routes %s%s to %s (the admin approves them: "
                 "`phantom network routes approve %s`)",
                 ", ".join(map(str, routes)) or "none", " and exit" if exit else "", url,
                 m.cert.name)

    async def keep_advertised(self) -> None:
        m = self.m
        stop = m.d.shutdown
        failures = 0
        while not stop.is_set():
            wait = POLL
            if m.routes.should_send():
                try:
                    await self.advertise_once()
                    failures = 0
                except (OSError, ValueError) as exc:
                    failures += 1
                    m.stats["advertise_failures"] += 1
                    m.routes.last_error = str(exc)
                    if failures == 1 or failures % 60 == 0:
                        log.warning("network: advertising routes: %s (retrying)", exc)
                    wait = max(POLL, backoff(failures, cap=30.0))
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass


async def _first(stop: asyncio.Event, other: Optional[asyncio.Event], timeout: float) -> None:
    """Wait until ``stop`` or ``other`` is set, or ``timeout`` s."""
    waits = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
