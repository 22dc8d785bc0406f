/* phantomd dashboard: polls the daemon's read routes once a second, draws a
 * throughput chart per peer, and sends changes (open, close, firewall) with
 * the API token kept in sessionStorage.  No build step, no external assets;
 * every URL is relative, so the page works behind a proxy or a path prefix
 * (the Unix-socket proxy in docs/operations.md). */
"use strict";

(function () {
  const POLL_MS = 1000;
  const HISTORY = 60;                     // chart points per peer
  const TOKEN_KEY = "phantom.token";

  const state = {                         // also read by the browser tests
    polls: 0, lastError: null, status: null, firewall: null,
    samples: {},                          // peer -> [{t, rx, tx}] (bytes, seconds)
    rates: {},                            // peer -> [{t, rx, tx}] (bits per second)
    signedIn: false,
  };
  window.phantomDashboard = state;

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const e = document.createElement(tag);
    if (props) for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };

  // ---------------------------------------------------------------- token
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const t = token();
    if (t && method !== "GET") headers["Authorization"] = "Bearer " + t;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
    } catch (e) {
      throw new Error("cannot reach phantomd: " + e.message);
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && typeof data.error === "string" ? data.error : "HTTP " + resp.status;
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function showError(msg) {
    state.lastError = msg;
    const box = $("error");
    box.textContent = msg;
    box.hidden = !msg;
  }

  async function checkToken() {
    const t = token();
    if (!t) { setSignedIn(false); return; }
    try {
      const resp = await fetch("auth", { headers: { "Authorization": "Bearer " + t },
                                         cache: "no-store", credentials: "omit" });
      setSignedIn(resp.ok);
      if (!resp.ok) showError("the API token was refused: sign in again");
    } catch (e) { /* the next poll reports the connection */ }
  }

  function setSignedIn(on) {
    state.signedIn = on;
    $("signin").classList.toggle("signed-in", on);
    $("auth-state").textContent = on ? "signed in" : "read-only";
    $("auth-state").classList.toggle("ok", on);
    $("signin-button").hidden = on;
    $("signout-button").hidden = !on;
  }

  // --------------------------------------------------------------- format
  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function bits(n) {
    const u = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
    let i = 0;
    while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }
  function ago(s) {
    if (s == null) return "never";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  // ---------------------------------------------------------------- chart
  function record(peer, now) {
    const s = (state.samples[peer.name] = state.samples[peer.name] || []);
    s.push({ t: now, rx: peer.rx_bytes, tx: peer.tx_bytes });
    if (s.length > HISTORY + 1) s.shift();
    const r = (state.rates[peer.name] = state.rates[peer.name] || []);
    if (s.length >= 2) {
      const a = s[s.length - 2], b = s[s.length - 1], dt = Math.max(1e-3, b.t - a.t);
      r.push({ t: now, rx: Math.max(0, b.rx - a.rx) * 8 / dt, tx: Math.max(0, b.tx - a.tx) * 8 / dt });
      if (r.length > HISTORY) r.shift();
    }
  }

  function draw(canvas, points) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 180, h = canvas.clientHeight || 40;
    if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.strokeStyle = "#dde1e8";
    g.beginPath(); g.moveTo(0, h - 0.5); g.lineTo(w, h - 0.5); g.stroke();
    if (!points.length) return;
    const max = Math.max(1, ...points.map((p) => Math.max(p.rx, p.tx)));
    const css = getComputedStyle(document.documentElement);
    for (const [key, color] of [["rx", css.getPropertyValue("--rx")], ["tx", css.getPropertyValue("--tx")]]) {
      g.strokeStyle = color.trim() || "#333";
      g.lineWidth = 1.5;
      g.beginPath();
      points.forEach((p, i) => {
        const x = w - (points.length - 1 - i) * (w / (HISTORY - 1));
        const y = h - 2 - (p[key] / max) * (h - 4);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }

  // ---------------------------------------------------------------- peers
  function renderDaemon(st) {
    $("version").textContent = st.version;
    const facts = $("daemon");
    facts.replaceChildren(...[
      ["key", st.public_key], ["mode", st.mode], ["data path", st.data_path],
      ["device", st.device || "-"], ["udp port", st.listen_port], ["uid", st.uid],
      ["up", ago(st.uptime).replace(" ago", "")],
    ].map(([k, v]) => el("span", null, k + " ", el("b", { text: String(v) }))));
  }

  // ------------------------------------------------------ network identity
  // GET /status's `network` object (a member of a network, issue 20/21):
  // our own name, addresses, groups and network, and the members as peers.
  function hosts(list) {
    return (list || []).filter((a) => /\/(32|128)$/.test(a)).map((a) => a.replace(/\/\d+$/, ""));
  }
  function when(t) {
    return t ? new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ") + "Z" : "-";
  }

  function renderNetwork(st) {
    const net = st.network;
    $("identity").hidden = !net;
    $("members-section").hidden = !net;
    if (!net) return;
    $("identity").replaceChildren(...[
      ["name", net.name + (net.domain ? "." + net.domain : "")],
      ["addresses", (net.addresses || []).join(", ")],
      ["network", net.network], ["groups", (net.groups || []).join(", ") || "-"],
    ].map(([k, v]) => el("span", { "data-fact": k }, k + " ", el("b", { text: String(v) }))));
    $("network-name").textContent = net.network;
    $("network-facts").replaceChildren(...[
      ["fingerprint", String(net.fingerprint || "").slice(0, 12) + "…"],
      ["domain", net.domain || "-"], ["members", net.members],
      ["directory", net.directory_ok === false ? "unreachable" : (net.directory_ok ? "ok" : "-")],
      ["certificate expires", when(net.certificate_expires)],
    ].map(([k, v]) => el("span", null, k + " ", el("b", { text: String(v) }))));
    const own = el("tr", { "data-member": net.name, class: "self" },
      el("td", { class: "name", text: net.name + " (this node)" }),
      el("td", { class: "addresses", text: (net.addresses || []).join(", ") }),
      el("td", { class: "groups", text: (net.groups || []).join(", ") || "-" }),
      el("td", { class: "online", text: "yes" }), el("td", { text: "-" }), el("td", { text: "-" }),
      el("td", { class: "expires", text: when(net.certificate_expires) }));
    const rows = st.peers.filter((p) => p.member).map((p) => el("tr", { "data-member": p.name },
      el("td", { class: "name", text: p.name, title: p.public_key }),
      el("td", { class: "addresses", text: hosts(p.allowed_ips).join(", ") || "-" }),
      el("td", { class: "groups", text: (p.groups || []).join(", ") || "-" }),
      el("td", { class: "online", text: p.state === "established" ? "yes" : "no" }),
      el("td", { class: "path", text: p.state === "established" ? (p.path || "direct") : "none" }),
      el("td", { text: ago(p.latest_handshake) }),
      el("td", { class: "expires", text: when(p.certificate_expires) })));
    $("members").querySelector("tbody").replaceChildren(own, ...rows);
  }

  function renderPeers(st) {
    const body = $("peers").querySelector("tbody");
    const rows = [];
    for (const p of st.peers) {
      const canvas = el("canvas", { class: "chart", width: "180", height: "40",
                                    "data-peer": p.name });
      const r = state.rates[p.name] || [];
      const last = r.length ? r[r.length - 1] : { rx: 0, tx: 0 };
      const up = p.state === "established" || p.state === "stale" || p.state === "handshaking";
      const button = up
        ? el("button", { type: "button", class: "close", onclick: () => act("POST", "close/" + encodeURIComponent(p.name)) }, "Close")
        : el("button", { type: "button", class: "open", onclick: () => act("POST", "open/" + encodeURIComponent(p.name)) }, "Open");
      rows.push(el("tr", { "data-peer": p.name },
        el("td", { class: "name", text: p.name, title: p.public_key }),
        el("td", null, el("span", { class: "state state-" + p.state, text: p.state })),
        el("td", { class: "path", text: p.path || "direct" }),
        el("td", { class: "endpoint", text: p.endpoint || "-" }),
        el("td", { text: (p.allowed_ips || []).join(", ") || "-" }),
        el("td", { class: "groups", text: (p.groups || []).join(", ") || "-" }),
        el("td", { text: ago(p.latest_handshake) }),
        el("td", { class: "num", text: bytes(p.rx_bytes) + " / " + bytes(p.tx_bytes) }),
        el("td", null, canvas, el("div", { class: "rate" },
          el("span", { class: "rx", text: "\u2193 " + bits(last.rx) }), " ",
          el("span", { class: "tx", text: "\u2191 " + bits(last.tx) }))),
        el("td", null, button)));
      canvas.__points = r;
    }
    body.replaceChildren(...rows);
    for (const c of body.querySelectorAll("canvas.chart")) draw(c, c.__points);
  }

  // ------------------------------------------------------------- firewall
  function ruleMatch(r) {
    const parts = [];
    for (const k of ["peer", "src_group", "dst_group", "cidr", "local_cidr", "src_port", "dst_port",
                     "comment"]) {
      if (r[k] !== undefined) parts.push(k + "=" + r[k]);
    }
    return parts.join(" ") || "any";
  }

  function editable(fw) {
    const copy = {};
    for (const [k, v] of Object.entries(fw)) {
      if (["mode", "drops", "accepts", "conntrack", "fragments", "rejects", "warnings", "own_groups",
           "policy"].includes(k)) continue;
      copy[k] = v;
    }
    copy.rules = (fw.rules || []).map((r) => { const c = Object.assign({}, r); delete c.hits; return c; });
    return JSON.stringify(copy, null, 2);
  }

  function renderFirewall(fw, force) {
    state.firewall = fw;
    const drops = Object.entries(fw.drops || {}).filter(([, n]) => n).map(([k, n]) => k + " " + n);
    $("firewall-facts").replaceChildren(
      el("span", null, "default in ", el("b", { text: fw.default_in || "accept" })),
      el("span", null, "default out ", el("b", { text: fw.default_out || "accept" })),
      el("span", null, "stateful ", el("b", { text: String(!!fw.stateful) })),
      el("span", null, "drops ", el("b", { text: drops.join(", ") || "none" })));
    const body = $("rules").querySelector("tbody");
    const rules = fw.rules || [];
    body.replaceChildren(...(rules.length ? rules.map((r, i) => el("tr", { "data-rule": String(i) },
      el("td", { text: String(i) }), el("td", { text: r.direction }), el("td", { text: r.action }),
      el("td", { text: String(r.proto) }), el("td", { text: ruleMatch(r) }),
      el("td", { class: "num hits", text: String(r.hits || 0) })))
      : [el("tr", null, el("td", { colspan: "6", class: "muted", text: "no rules: the defaults apply" }))]));
    renderPolicy(fw.policy);
    const text = $("firewall-text");
    if (force || (!text.value && document.activeElement !== text)) text.value = editable(fw);
  }

  // The network policy in force (issue 21): its rules, which apply to this
  // node, and the packets each decided here.  The local rules above narrow it.
  function renderPolicy(pol) {
    const box = $("policy");
    box.hidden = !pol;
    if (!pol) return;
    $("policy-facts").replaceChildren(
      el("span", null, "seq ", el("b", { text: String(pol.seq) })),
      el("span", null, "default ", el("b", { text: pol.default })),
      el("span", null, "default in here ", el("b", { text: pol.effective_default_in })),
      el("span", null, "signed by ", el("b", { text: String(pol.issuer || "").slice(0, 12) + "…" })));
    const list = (v) => (Array.isArray(v) ? v.join(", ") : String(v));
    const rules = pol.rules || [];
    $("policy-rules").querySelector("tbody").replaceChildren(...(rules.length ? rules.map((r) =>
      el("tr", { "data-policy-rule": String(r.index), class: r.applies ? "" : "muted" },
        el("td", { text: String(r.index) }), el("td", { text: list(r.from) }),
        el("td", { text: list(r.to) }),
        el("td", { text: r.proto + (r.ports && r.ports.length ? " " + list(r.ports) : "") }),
        el("td", { text: r.action }), el("td", { text: r.applies ? "yes" : "no" }),
        el("td", { class: "num hits", text: String(r.hits || 0) })))
      : [el("tr", null, el("td", { colspan: "7", class: "muted", text: "no rules: the default applies" }))]));
  }

  // --------------------------------------------------------------- events
  function renderEvents(list) {
    const ol = $("events");
    ol.replaceChildren(...list.slice(-50).reverse().map((e) =>
      el("li", { class: e.level }, new Date(e.time * 1000).toLocaleTimeString() + "  " + e.message)));
  }

  // -------------------------------------------------------------- actions
  async function act(method, path, body) {
    if (!token()) {
      // Sent anyway: the daemon answers 401 and the page shows its message.
    }
    try {
      const result = await api(method, path, body);
      showError(null);
      await poll();
      return result;
    } catch (e) {
      showError(e.message);
      if (e.status === 401) setSignedIn(false);
      return null;
    }
  }

  // ----------------------------------------------------------------- poll
  let polling = false;
  async function poll() {
    if (polling) return;
    polling = true;
    try {
      const [st, fw, ev] = await Promise.all([api("GET", "status"), api("GET", "firewall"),
                                              api("GET", "events").catch(() => ({ events: [] }))]);
      const now = performance.now() / 1000;
      state.status = st;
      for (const p of st.peers) record(p, now);
      renderDaemon(st);
      renderNetwork(st);
      renderPeers(st);
      renderFirewall(fw, false);
      renderEvents(ev.events || []);
      state.polls++;
      if (state.lastError && state.lastError.startsWith("cannot reach")) showError(null);
    } catch (e) {
      showError(e.message);
    } finally {
      polling = false;
    }
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    $("signin").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      $("token").value = "";
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      showError(null);
      checkToken();
    });
    $("signout-button").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      setSignedIn(false);
    });
    $("open-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = {};
      const key = $("open-key").value.trim(), name = $("open-name").value.trim();
      const allowed = $("open-allowed").value.split(",").map((s) => s.trim()).filter(Boolean);
      if (key) body.public_key = key;
      if (name) body.name = name;
      if (allowed.length) body.allowed_ips = allowed;
      const target = $("open-target").value.trim();
      const r = await act("POST", "open/" + encodeURIComponent(target),
                          Object.keys(body).length ? JSON.stringify(body) : undefined);
      if (r) $("open-form").reset();
    });
    $("firewall-apply").addEventListener("click", async () => {
      // The text goes as it is: the daemon validates it and its error is shown.
      const r = await act("PUT", "firewall", $("firewall-text").value);
      $("firewall-result").textContent = r ? "applied (" + (r.rules || []).length + " rules)" : "refused";
      if (r) renderFirewall(r, true);
    });
    $("firewall-reset").addEventListener("click", () => {
      if (state.firewall) renderFirewall(state.firewall, true);
    });
    checkToken();
    poll();
    setInterval(poll, POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
