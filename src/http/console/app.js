// The stategrid web console: plain JavaScript, no build step, no CDN. Everything it shows
// comes from the management JSON API on the same port (docs/operations.md), polled.
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"];
const POLL_MS = 2000;
let lastRequests = null;
let hostColors = {};

function $(id) { return document.getElementById(id); }

function bytesText(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

async function api(path, options) {
  const r = await fetch(path, options);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { message: text }; }
  if (!r.ok) {
    const msg = body && body.message ? body.message : r.status + " " + r.statusText;
    throw new Error(path + ": " + msg);
  }
  return body;
}

function td(text, cls) {
  const c = document.createElement("td");
  c.textContent = text;
  if (cls) c.className = cls;
  return c;
}

function colorOf(id) {
  if (!(id in hostColors)) hostColors[id] = COLORS[Object.keys(hostColors).length % COLORS.length];
  return hostColors[id];
}

function renderHosts(q) {
  $("store").textContent = q.member
    ? "store epoch " + q.epoch + " · " + q.hosts.length + " hosts · leader " + (q.leader || "none") +
      " · this host " + q.me
    : "host " + q.me + " is not in a store yet (use Join)";
  const body = $("hosts").querySelector("tbody");
  body.replaceChildren();
  for (const h of q.hosts) {
    const tr = document.createElement("tr");
    tr.className = "host";
    tr.dataset.id = h.id;
    const sw = document.createElement("td");
    const s = document.createElement("span");
    s.className = "swatch";
    s.style.background = colorOf(h.id);
    sw.appendChild(s);
    tr.appendChild(sw);
    tr.appendChild(td(h.id + (h.id === q.me ? " (this host)" : "") + (h.leader ? " ★" : "")));
    tr.appendChild(td(h.addr));
    tr.appendChild(td(h.state + (h.answered || h.state === "failed" ? "" : " (did not answer)"),
      "state-" + h.state));
    tr.appendChild(td(h.primaries, "num"));
    tr.appendChild(td(h.replicas, "num"));
    tr.appendChild(td(h.pending, "num"));
    tr.appendChild(td(h.objects === null ? "–" : h.objects, "num"));
    tr.appendChild(td(bytesText(h.memory_bytes), "num"));
    body.appendChild(tr);
  }
}

let mapCells = [];
let lastMap = null;

function buildMap() {
  const m = $("map");
  m.replaceChildren();
  mapCells = [];
  for (let p = 0; p < 1024; p++) {
    const c = document.createElement("div");
    c.className = "cell";
    c.dataset.p = String(p);
    const r = document.createElement("div");
    r.className = "rep";
    c.appendChild(r);
    m.appendChild(c);
    mapCells.push(c);
  }
  m.addEventListener("mouseover", (ev) => {
    const c = ev.target.closest(".cell");
    if (c && lastMap) $("cell-info").textContent = describe(lastMap, Number(c.dataset.p));
  });
}

function describe(m, p) {
  const name = (i) => (i === null || i === undefined) ? "none" : m.hosts[i].id;
  return "partition " + p + ": primary " + name(m.primaries[p]) +
    "; replicas " + (m.replicas[p].map(name).join(", ") || "none") +
    (m.pending[p].length ? "; receiving " + m.pending[p].map(name).join(", ") : "");
}

function renderMap(m) {
  lastMap = m;
  $("map-epoch").textContent = "epoch " + m.epoch + (m.moving ? " · " + m.moving + " moving" : "");
  if (mapCells.length !== m.primaries.length) buildMap();
  const colors = m.hosts.map((h) => colorOf(h.id));
  for (let p = 0; p < mapCells.length; p++) {
    const c = mapCells[p];
    const prim = m.primaries[p];
    c.style.background = prim === null ? "#ddd" : colors[prim];
    const rep = m.replicas[p][0];
    c.firstChild.style.background = rep === undefined ? "transparent" : colors[rep];
    c.classList.toggle("moving", m.pending[p].length > 0);
    c.title = describe(m, p);
  }
}

function renderParams(p) {
  const body = $("params").querySelector("tbody");
  body.replaceChildren();
  for (const name of Object.keys(p.params).sort()) {
    const tr = document.createElement("tr");
    tr.appendChild(td(name));
    tr.appendChild(td(p.params[name]));
    tr.appendChild(td(p.store_wide.includes(name) ? "store-wide, at run time" : "at restart"));
    body.appendChild(tr);
  }
  const sel = $("param-name");
  if (sel.options.length !== p.store_wide.length) {
    sel.replaceChildren();
    for (const n of p.store_wide) {
      const o = document.createElement("option");
      o.value = n;
      o.textContent = n;
      sel.appendChild(o);
    }
  }
}

async function pollHost() {
  const h = await api("/api/v1/host");
  const now = performance.now();
  if (lastRequests) {
    const dt = (now - lastRequests.t) / 1000;
    const rate = dt > 0 ? (h.requests - lastRequests.n) / dt : 0;
    $("ops").textContent = Math.max(0, Math.round(rate)) + " ops/s";
  }
  lastRequests = { t: now, n: h.requests };
}

async function refresh() {
  const results = await Promise.allSettled([
    api("/api/v1/hosts").then(renderHosts),
    api("/api/v1/map").then(renderMap),
    pollHost(),
  ]);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  $("action-result").dataset.poll = failed.length ? failed.join("; ") : "";
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function action(path, label) {
  $("action-result").textContent = label + "…";
  try {
    const r = await api(path, { method: "POST" });
    $("action-result").textContent = label + ": " + JSON.stringify(r);
  } catch (e) {
    $("action-result").textContent = label + " failed: " + e.message;
  }
  refresh();
}

$("join").addEventListener("click", () => action("/api/v1/join", "join"));
$("leave").addEventListener("click", () => {
  if (confirm("Move every partition off this host? It stays up, holding nothing.")) {
    action("/api/v1/leave", "leave");
  }
});
$("replica-layer").addEventListener("change", (ev) => {
  $("map").classList.toggle("replicas-only", ev.target.checked);
});
$("param-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("param-name").value;
  const value = $("param-value").value;
  try {
    await api("/api/v1/params/" + encodeURIComponent(name), {
      method: "PUT",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ value: value }),
    });
    $("param-result").textContent = name + " = " + value + " on every host";
    renderParams(await api("/api/v1/params"));
  } catch (e) {
    $("param-result").textContent = e.message;
  }
});

buildMap();
api("/api/v1/params").then(renderParams, (e) => { $("param-result").textContent = e.message; });
refresh().then(() => { document.body.dataset.loaded = "1"; });
setInterval(refresh, POLL_MS);
