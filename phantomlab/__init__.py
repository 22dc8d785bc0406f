"""Phantom's lab: the equipment the tests, bench/, ``phantom demo`` and
``phantom verify`` share.  It lives outside the ``phantom`` package and
phantomd never imports it (tests/unit/test_layout.py checks this).

  netns        the namespace rig in one name (namespaces, topology, daemons, capture)
  namespaces   named network namespaces, commands, sockets inside them, cleanup
  topology     hosts on veth pairs and bridges, NAT routers, a small internet
  daemons      phantomd inside a namespace
  capture      tcpdump inside a namespace, a pcap reader
  iperf        the one iperf3 helper (server, client, a whole run)
  procs        processes: kill a process group, CPU used, a port listening
  poll         wait_for: bounded polling instead of sleeps
  templates    phantomd config files, keys and peer entries for lab nodes
  nodes        a phantomd node of a test: key, config, API, peer state
  wggo         stock wireguard-go and wg inside a namespace
  packets      hand-built inner packets (ICMP echo) for sans-IO tests
  stores       a throw-away PostgreSQL cluster and a private DHT swarm
  browser      headless Chromium through Selenium, proxies into a namespace
  memscan      a process memory scanner (is a secret in a process's memory?)
  blaster      the hostile-datagram sender (blaster.c)
  dht_forger   a DHT node that stores forged items (run as a script)
  dirattack    hostile clients of a directory and a legitimate watcher (run as a script)
  soak         the soak run (bench/soak.py, tests/soak/)
  demo         the body of ``phantom demo``
  verify       the body of ``phantom verify``
"""
