"""`phantom dns` (alias `phantom names`): what the name service answers,
as GET /dns reports it, for a person.  The CLI (phantom/cli.py) only
registers the command; the text is made here."""

from __future__ import annotations

__all__ = ["format_dns"]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_dns(d, resolv_conf: bool = False) -> str:
    if not isinstance(d, dict):
        return str(d)
    if not d.get("enabled"):
        return "the name service is off (no [dns] section in phantomd's config; docs/names.md)"
    if resolv_conf:
        return (d.get("resolv_conf") or "").rstrip("\n")
    listen = ", ".join("%s %s:%s" % (e.get("transport"), e.get("address"), e.get("port"))
                       if ":" not in str(e.get("address")) else
                       "%s [%s]:%s" % (e.get("transport"), e.get("address"), e.get("port"))
                       for e in d.get("listen") or [])
    lines = ["domain:      %s" % d.get("domain"),
             "nameserver:  %s" % d.get("nameserver"),
             "listen:      %s" % (listen or "-")]
    split = d.get("split_dns")
    if split:
        lines.append("split DNS:   systemd-resolved sends %s to %s on %s" % (
            ", ".join("~" + x for x in split.get("domains", [])), ", ".join(split.get("servers", [])),
            split.get("link")))
    elif d.get("split_dns_error"):
        lines.append("split DNS:   failed: %s" % d["split_dns_error"])
    else:
        lines.append("split DNS:   not registered (`phantom dns --resolv-conf` prints resolv.conf lines)")
    names = d.get("names") or []
    lines.append("")
    if names:
        rows = [["NAME", "IPV4", "IPV6"]]
        rows += [[n.get("fqdn", n.get("name", "")), ", ".join(n.get("ipv4") or []) or "-",
                  ", ".join(n.get("ipv6") or []) or "-"] for n in names]
        lines += _table(rows)
    else:
        lines.append("names: (none)")
    st = d.get("stats") or {}
    if st:
        resp = st.get("responses") or {}
        drops = st.get("drops") or {}
        lines.append("")
        lines.append("queries %d (udp %d, tcp %d); answers %s; drops %s" % (
            st.get("queries", 0), st.get("queries_udp", 0), st.get("queries_tcp", 0),
            ", ".join("%s %d" % kv for kv in sorted(resp.items())) or "-",
            ", ".join("%s %d" % kv for kv in sorted(drops.items())) or "-"))
        names_st = st.get("names") or {}
        if names_st.get("invalid_names"):
            lines.append("names not served (not DNS labels): %d" % names_st["invalid_names"])
    return "\n".join(lines)
