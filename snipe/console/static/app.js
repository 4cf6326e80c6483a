// The console's page: reads /api/snapshot and draws it. Every value comes from the catalog, some
// from tasks' own records, so values go into the page as text (textContent), never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";

function short(urn) { return urn ? String(urn).split(":").pop() : "-"; }

// A task row's migration under way ({from, to}), or null. While it moves, the task shows as
// `snipe-console ps` shows it: host "h1 → h2", its own state followed by ", migrating".
function migration(t) { return t.migrating && typeof t.migrating === "object" ? t.migrating : null; }

function where(t) {
  const m = migration(t);
  return m ? short(m.from) + " \u2192 " + short(m.to) : short(t.host);
}

function bytes(n) {
  if (typeof n !== "number") return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? n.toFixed(1) + " " + units[i] : n + " B";
}

function fill(table, columns, rows) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const v of row) {
      const td = tr.insertCell();
      td.textContent = v === null || v === undefined ? "-" : String(v);
      if (typeof v === "number") td.className = "num";
    }
  }
}

function drawTraffic(traffic) {
  const svg = document.getElementById("traffic");
  const legend = document.getElementById("legend");
  svg.replaceChildren();
  legend.replaceChildren();
  const t = traffic.t || [];
  const hosts = Object.keys(traffic.hosts || {}).sort();
  const W = 720, H = 180, pad = 30;
  let top = 1;
  for (const h of hosts) for (const v of traffic.hosts[h]) top = Math.max(top, v);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12); label.setAttribute("font-size", "11");
  label.textContent = t.length < 2 ? "waiting for two samples…" : Math.round(top) + " msg/s";
  svg.appendChild(label);
  if (t.length < 2) return;
  const t0 = t[0], span = Math.max(t[t.length - 1] - t0, 1e-9);
  hosts.forEach((h, k) => {
    const color = COLORS[k % COLORS.length];
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("points", traffic.hosts[h].map((v, i) =>
      (pad + (W - 2 * pad) * (t[i] - t0) / span).toFixed(1) + "," + (H - pad / 2 - (H - pad) * v / top).toFixed(1)
    ).join(" "));
    svg.appendChild(line);
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, short(h) + ": " + traffic.hosts[h][traffic.hosts[h].length - 1] + " msg/s");
    legend.appendChild(item);
  });
}

function draw(s) {
  const hosts = Object.entries(s.hosts || {}).sort();
  document.getElementById("hosts-title").textContent = hosts.length + " live host(s)";
  fill(document.getElementById("hosts"), ["host", "arch", "cpus", "memory", "load", "tasks", "state"],
    hosts.map(([u, h]) => [short(u), h.arch, h.cpus, bytes(h.memory), h.load, h.tasks,
      h.draining ? "draining" : "ok"]));
  const tasks = s.tasks || [];
  document.getElementById("tasks-title").textContent = tasks.length + " task(s)";
  fill(document.getElementById("tasks"), ["urn", "host", "state", "cpu", "memory", "age"],
    tasks.map((t) => [t.urn, where(t), migration(t) ? t.state + ", migrating" : t.state,
      typeof t.cpu_seconds === "number" ? t.cpu_seconds.toFixed(2) + "s" : "-", bytes(t.rss_bytes),
      typeof t.age_s === "number" ? Math.round(t.age_s) + "s" : "-"]));
  document.getElementById("unreachable").textContent = (s.unreachable || []).map((u) =>
    short(u.host) + " did not list its tasks (they may be running): " + u.reason).join("\n");
  const groups = s.groups || [];
  document.getElementById("groups-title").textContent = groups.length + " multicast group(s)";
  fill(document.getElementById("groups"), ["group", "members", "routers", "messages relayed (most by a router)"],
    groups.map((g) => [g.group, g.members, (g.routers || []).map(short).join(", ") || "-", g.relayed]));
  drawTraffic(s.traffic || {});
  const errors = Object.entries(s.errors || {});
  const status = document.getElementById("status");
  status.className = errors.length ? "bad" : "";
  status.textContent = "as of " + new Date(s.taken_at_ms).toLocaleTimeString() + ", every " + s.interval_s + " s"
    + errors.map(([part, e]) => "; " + part + " failed: " + e).join("");
}

async function refresh() {
  let wait = 5000;
  try {
    const r = await fetch("api/snapshot", { headers, cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    draw(body);
    wait = Math.max(1000, (body.interval_s || 5) * 1000);
  } catch (e) {
    const status = document.getElementById("status");
    status.className = "bad";
    status.textContent = "cannot read the console: " + e.message;
  }
  setTimeout(refresh, wait);
}

refresh();
