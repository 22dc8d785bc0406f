"""The network most member tests need, made once per test: ``phantom
network init corp`` on lan3's host a (the admin), ``phantom directory serve
--network`` there, and helpers that join and start members in parallel."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .test_member_mesh import join_all, network_on, start_all


@dataclass
class Corp:
    hosts: tuple            # lan3's a (admin and directory), b, c
    auth: object            # the authority's directory (Path)
    url: str
    directory: object       # the directory's DaemonProcess
    daemon_factory: object
    tmp_path: object

    @property
    def admin(self):
        return self.hosts[0]

    def join(self, *specs):
        """Members joined at once: ``(host, name, groups[, state_parent])`` each."""
        return join_all(self.admin, self.auth, list(specs), self.tmp_path, self.url)

    def start(self, members, datapath):
        return start_all(self.daemon_factory, list(members), datapath)


@pytest.fixture
def corp(lan3, daemon_factory, tmp_path):
    a, b, c = lan3.hosts["a"], lan3.hosts["b"], lan3.hosts["c"]
    auth, url, directory = network_on(daemon_factory, a, tmp_path)
    return Corp((a, b, c), auth, url, directory, daemon_factory, tmp_path)
