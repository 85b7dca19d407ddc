// The live TCP state machine: draws the diagram once, then refreshes its numbers and the
// tables from the daemon's /api/v1/state every few seconds. Data is only ever set as text
// (process and pod names come from anyone on the host), never as markup.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 5000;
  const W = 150, H = 48;
  // Where each state sits: the textbook's picture, handshake above, teardown below.
  // "closed" is drawn twice: where connections start (top) and where they end (bottom).
  const NODES = {
    close: [450, 45, "CLOSED"], listen: [210, 140, "LISTEN"], syn_sent: [690, 140, "SYN_SENT"],
    syn_recv: [210, 245, "SYN_RECV"], established: [450, 330, "ESTABLISHED"],
    fin_wait1: [210, 430, "FIN_WAIT1"], close_wait: [690, 430, "CLOSE_WAIT"], closing: [450, 500, "CLOSING"],
    fin_wait2: [210, 565, "FIN_WAIT2"], last_ack: [690, 565, "LAST_ACK"],
    time_wait: [210, 670, "TIME_WAIT"], closed_end: [690, 670, "CLOSED"],
  };
  // [from, to as the kernel reports it, node drawn to]: every edge of the tracepoint. Entering
  // TIME_WAIT is reported as "-> close" (the full socket ends; a timewait socket replaces it).
  const EDGES = [
    ["close", "syn_sent", "syn_sent"], ["close", "listen", "listen"], ["listen", "close", "close"],
    ["listen", "syn_recv", "syn_recv"], ["syn_sent", "established", "established"],
    ["syn_sent", "close", "close"], ["syn_recv", "established", "established"],
    ["syn_recv", "close", "close"], ["syn_recv", "fin_wait1", "fin_wait1"],
    ["established", "fin_wait1", "fin_wait1"], ["established", "close_wait", "close_wait"],
    ["established", "close", "close"], ["fin_wait1", "fin_wait2", "fin_wait2"],
    ["fin_wait1", "closing", "closing"], ["fin_wait1", "close", "closed_end"],
    ["fin_wait2", "close", "time_wait"], ["closing", "close", "time_wait"],
    ["close_wait", "last_ack", "last_ack"], ["close_wait", "close", "closed_end", -85],
    ["last_ack", "close", "closed_end"],
  ];
  const STATE_ORDER = ["established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
    "close", "close_wait", "last_ack", "listen", "closing"];

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  let selected = params.get("netns") || "host";
  let timer = null;

  function el(name, attrs, parent, ns) {
    const node = ns ? document.createElementNS(SVG, name) : document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function edgeId(from, to) { return "edge-" + from + "-" + to; }

  function border(x1, y1, x2, y2) {
    // Where the line from the centre (x1, y1) towards (x2, y2) leaves the box.
    const dx = x2 - x1, dy = y2 - y1;
    const t = Math.min(dx ? (W / 2 + 4) / Math.abs(dx) : Infinity, dy ? (H / 2 + 4) / Math.abs(dy) : Infinity);
    return [x1 + dx * t, y1 + dy * t];
  }

  function drawDiagram() {
    const svg = $("diagram");
    const defs = el("defs", {}, svg, true);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, defs, true);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a6" }, marker, true);
    const edges = el("g", {}, svg, true);
    const all = EDGES.map((e) => [e[0], e[1], e[2], false, e[3]]).concat([["time_wait", "timer", "closed_end", true]]);
    for (const [from, to, target, isTimer, bendBy] of all) {
      const [x1, y1] = NODES[from], [x2, y2] = NODES[target];
      // Bend every edge a little to its right, so that A->B and B->A do not overlap.
      const len = Math.hypot(x2 - x1, y2 - y1) || 1;
      const bend = bendBy || 22;
      const cx = (x1 + x2) / 2 + (-(y2 - y1) / len) * bend, cy = (y1 + y2) / 2 + ((x2 - x1) / len) * bend;
      const [sx, sy] = border(x1, y1, cx, cy), [ex, ey] = border(x2, y2, cx, cy);
      const g = el("g", { class: "edge" + (isTimer ? " timer" : ""), id: edgeId(from, to) }, edges, true);
      const title = el("title", {}, g, true);
      title.textContent = isTimer ? "time_wait ends when its timer fires (60 s) or the socket is reused"
        : from + " \u2192 " + to + (target !== to ? " (reported by the kernel as \u2192 " + to + ")" : "");
      el("path", { d: `M${sx},${sy} Q${cx},${cy} ${ex},${ey}`, "marker-end": "url(#arrow)" }, g, true);
      const label = el("text", { x: (sx + 2 * cx + ex) / 4, y: (sy + 2 * cy + ey) / 4 + 4, class: "rate" }, g, true);
      label.textContent = "";
    }
    for (const [state, [x, y, name]] of Object.entries(NODES)) {
      const g = el("g", { class: "node", id: "node-" + state }, svg, true);
      el("rect", { x: x - W / 2, y: y - H / 2, width: W, height: H, rx: 9 }, g, true);
      el("text", { x: x, y: y - 5, class: "name" }, g, true).textContent = name;
      if (state !== "closed_end") {
        const count = el("text", { x: x, y: y + 16, class: "count", id: "count-" + state }, g, true);
        count.textContent = "\u2013";
      }
    }
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "\u2013";
    if (s < 1) return (s * 1000).toPrecision(3) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  function fmtRate(r) {
    if (r === null || r === undefined) return "";
    if (r === 0) return "0/s";
    return (r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(1) : r.toFixed(3)) + "/s";
  }

  function fillTable(id, rows, empty) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    if (!rows.length) {
      const td = el("td", { colspan: String($(id).tHead.rows[0].cells.length), class: "empty" }, el("tr", {}, body));
      td.textContent = empty;
      return;
    }
    for (const cells of rows) {
      const tr = el("tr", {}, body);
      for (const cell of cells) {
        const td = el("td", cell.cls ? { class: cell.cls } : {}, tr);
        td.textContent = cell.text;
        if (cell.value !== undefined && cell.value !== null) td.dataset.value = String(cell.value);
        if (cell.field) td.dataset.field = cell.field;
      }
    }
  }

  function render(doc) {
    const select = $("netns");
    const names = doc.namespaces.map((n) => n.netns);
    if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
      select.replaceChildren();
      for (const n of doc.namespaces) {
        const opt = el("option", { value: n.netns }, select);
        opt.textContent = n.netns + (n.kind ? " (" + n.kind + ")" : "") + " \u2013 " + n.sockets + " sockets";
      }
    }
    select.value = selected;
    const ns = doc.netns[selected];
    $("ebpf-note").hidden = doc.ebpf;
    $("diagram").classList.toggle("no-ebpf", !doc.ebpf);
    $("window").textContent = doc.ebpf ? (doc.rate_window_seconds
      ? "rates over the last " + Math.round(doc.rate_window_seconds) + " s" : "rates from the next refresh") : "";
    for (const state of STATE_ORDER) {
      const n = ns.states[state] || 0;
      const text = $("count-" + state);
      text.textContent = String(n);
      text.dataset.value = String(n);
    }
    $("node-close_wait").classList.toggle("hot", ns.piling_up.close_wait);
    $("node-time_wait").classList.toggle("hot", ns.piling_up.time_wait);
    const seen = new Map(ns.transitions.map((t) => [edgeId(t.from, t.to), t]));
    for (const [from, to] of EDGES) {
      const g = $(edgeId(from, to));
      const t = seen.get(edgeId(from, to));
      const label = g.querySelector("text");
      label.textContent = doc.ebpf && t ? fmtRate(t.per_second) : "";
      g.dataset.total = t ? String(t.total) : "";
      g.classList.toggle("active", Boolean(t && t.per_second));
      g.classList.toggle("untaken", !t || !t.total);
    }
    // Every transition the kernel reported, the drawn ones and any other (self-transitions).
    const taken = ns.transitions.filter((t) => t.total > 0)
      .sort((x, y) => (y.per_second || 0) - (x.per_second || 0) || y.total - x.total);
    fillTable("transitions", taken.map((t) => [
      { text: t.from, field: "from" }, { text: t.to, field: "to" },
      { text: doc.ebpf ? fmtRate(t.per_second) || "\u2013" : "\u2013", cls: "n" },
      { text: String(t.total), value: t.total, cls: "n", field: "total" },
    ]), doc.ebpf ? "none yet" : "needs eBPF");
    fillTable("owners", ns.close_wait_owners.map((o) => [
      { text: o.process, field: "process" },
      { text: o.pod ? o.pod_namespace + "/" + o.pod : o.container },
      { text: String(o.sockets), value: o.sockets, cls: "n", field: "sockets" },
      { text: fmtSeconds(o.oldest_age_seconds), value: o.oldest_age_seconds, cls: "n", field: "age" },
    ]), "no process holds CLOSE_WAIT sockets");
    fillTable("queues", ns.listen_queues.map((q) => [
      { text: q.port, field: "port" },
      { text: String(q.length), value: q.length, cls: "n", field: "length" },
      { text: String(q.limit), value: q.limit, cls: "n", field: "limit" },
    ]), "no listening sockets");
    const shakes = Object.entries(ns.handshakes).map(([state, h]) => [
      { text: state + (h.window_seconds ? "" : " (since start)"), field: "state" },
      { text: fmtSeconds(h.p50_seconds), value: h.p50_seconds, cls: "n" },
      { text: fmtSeconds(h.p90_seconds), value: h.p90_seconds, cls: "n" },
      { text: fmtSeconds(h.p99_seconds), value: h.p99_seconds, cls: "n" },
      { text: String(h.count), value: h.count, cls: "n" },
    ]);
    fillTable("handshakes", shakes, doc.ebpf ? "no handshakes seen yet" : "needs eBPF");
    const ports = [];
    for (const side of ["server", "client"]) {
      for (const p of ns.ports[side]) {
        const parts = Object.entries(p.states).map(([s, n]) => s + " " + n);
        ports.push([{ text: side }, { text: p.port, field: "port" }, { text: parts.join(", ") }]);
      }
    }
    fillTable("ports", ports, "no connections");
  }

  async function refresh() {
    clearTimeout(timer);
    // Built from origin and path, never from location.href: a URL with user:password@ in
    // it cannot be fetched, and the browser re-sends the page's credentials by itself.
    const base = location.origin + location.pathname.replace(/[^/]*$/, "");
    const status = $("status");
    try {
      const response = await fetch(base + "api/v1/state?netns=" + encodeURIComponent(selected),
        { cache: "no-store", credentials: "same-origin" });
      if (response.status === 404 && selected !== "host") {
        selected = "host";          // the namespace went away
        history.replaceState(null, "", "?netns=host");
        timer = setTimeout(refresh, 0);
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      render(doc);
      status.textContent = "updated " + new Date(doc.time * 1000).toLocaleTimeString();
      status.classList.remove("error");
      document.body.dataset.loaded = String(doc.time);
    } catch (err) {
      status.textContent = "cannot reach the daemon: " + err.message;
      status.classList.add("error");
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  drawDiagram();
  $("netns").addEventListener("change", (event) => {
    selected = event.target.value;
    history.replaceState(null, "", "?netns=" + encodeURIComponent(selected));
    refresh();
  });
  refresh();
})();
