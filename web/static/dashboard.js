// llmsup dashboard: reads the live feed GET /v1/events (SSE over fetch, so it can send a bearer token),
// renders engines and jobs, and calls the admin routes with the admin token it asks for; charts of the last
// minutes (queue depth, running jobs, tokens/s, interrupts) from GET /v1/stats, polled once a second.
"use strict";

const MAX_ROWS = 300;
const jobs = new Map();          // id -> summary (+ _at: performance.now() when running_s was received)
let engines = [], starting = [], hosts = [], enginesAt = 0;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function say(text) { $("message").textContent = text || ""; }

// --- tokens ---------------------------------------------------------------------------------
function adminToken(ask) {
  let token = sessionStorage.getItem("llmsup_admin_token");
  if (!token && ask) {
    token = window.prompt("Admin token (from LLMSUP_ADMIN_TOKEN or <run-dir>/admin_token):");
    if (token) sessionStorage.setItem("llmsup_admin_token", token.trim());
  }
  return token ? token.trim() : null;
}

function feedToken() {
  return sessionStorage.getItem("llmsup_admin_token") || sessionStorage.getItem("llmsup_api_key");
}

async function admin(method, path, what) {
  const token = adminToken(true);
  if (!token) { say("admin token needed for: " + what); return; }
  const resp = await fetch(path, { method, headers: { Authorization: "Bearer " + token } });
  if (resp.status === 401 || resp.status === 403) {
    sessionStorage.removeItem("llmsup_admin_token");
    say("admin token rejected (" + resp.status + "): " + what);
    return;
  }
  const body = await resp.json().catch(() => ({}));
  say(resp.ok ? "" : what + " failed: " + (body.error || resp.status));
  if (resp.ok) restartFeed();  // engines may be shown now that an admin token is known
}

// --- live feed ----------------------------------------------------------------------------------
let feedAbort = null, feedUsing = null;

function restartFeed() {  // reconnect with the admin token once it is known: engines become visible
  if (feedAbort && feedToken() !== feedUsing) feedAbort.abort();
}

async function feed() {
  for (let delay = 500; ; delay = Math.min(delay * 2, 5000)) {
    feedAbort = new AbortController();
    try {
      const token = feedToken();
      feedUsing = token;
      const resp = await fetch("/v1/events", {
        headers: token ? { Authorization: "Bearer " + token } : {}, signal: feedAbort.signal,
      });
      if (resp.status === 401) {
        const key = window.prompt("This server needs an API key (or the admin token) to show jobs:");
        if (key) sessionStorage.setItem("llmsup_api_key", key.trim());
        continue;
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      setConn(true);
      delay = 500;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") say("live feed: " + err.message);
    }
    setConn(false);
    await new Promise((r) => setTimeout(r, delay));
  }
}

function setConn(up) {
  $("conn").className = up ? "live" : "down";
  $("conn").textContent = up ? "live" : "reconnecting…";
}

function handle(block) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i), value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") name = value; else if (field === "data") data += (data ? "\n" : "") + value;
  }
  if (!data) return;
  const msg = JSON.parse(data);
  const now = performance.now();
  if (name === "snapshot") {
    jobs.clear();
    for (const j of msg.jobs) jobs.set(j.id, { ...j, _at: now });
    setEngines(msg, now);
  } else if (name === "job") {
    jobs.set(msg.id, { ...msg, _at: now });
    while (jobs.size > MAX_ROWS) jobs.delete(jobs.keys().next().value);
  } else if (name === "engines") {
    setEngines(msg, now);
  }
  scheduleRender();
}

let renderPending = false;
function scheduleRender() {  // at most one rebuild per frame, however many events arrive
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => { renderPending = false; render(); });
}

function setEngines(msg, now) {
  if (msg.engines) { engines = msg.engines; starting = msg.starting || []; hosts = msg.hosts || []; enginesAt = now; }
  if (msg.counts) $("counts").replaceChildren(...["queued", "running", "succeeded", "timed_out", "cancelled", "failed"]
    .map((s) => el("span", {}, s + " " + (msg.counts[s] || 0))));
}

// --- rendering ------------------------------------------------------------------------------------
function secs(x) { return x == null ? "" : x.toFixed(1) + " s"; }

function jobElapsed(j, now) {
  if (j.running_s == null) return null;
  return j.status === "running" ? j.running_s + (now - j._at) / 1000 : j.running_s;
}

function engineCard(e, now) {
  const busy = e.busy_s == null ? null : e.busy_s + (now - enginesAt) / 1000;
  const pct = busy != null && e.deadline_s ? Math.min(100, (100 * busy) / e.deadline_s) : 0;
  return el("div", { class: "card engine", "data-engine-id": e.id, "data-state": e.state, "data-pool": e.pool || "default" },
    el("div", { class: "title" }, "engine " + e.id, el("span", { class: "state " + e.state }, e.state)),
    el("div", { class: "kv" }, "job ", el("b", { class: "engine-job" }, e.job_id || "—")),
    el("div", { class: "kv" }, "elapsed ",
      elapsedSpan(busy, true, now),
      e.deadline_s ? " / " + secs(e.deadline_s) : ""),
    el("div", { class: "bar" }, el("div", { class: pct >= 100 ? "late" : "", style: "width:" + pct + "%" })),
    el("div", { class: "kv" }, "jobs done ", el("b", { class: "jobs-done" }, String(e.jobs_done)),
      " · RSS ", el("b", {}, Math.round(e.rss_mb) + " MB"), " · GPU ", el("b", {}, e.gpu || "cpu"),
      e.gpu_mem_mb == null ? "" : el("b", { class: "gpu-mem" }, " " + Math.round(e.gpu_mem_mb) + " MB")),
    el("div", { class: "kv" }, "pid " + e.pid + " · " + e.host + " · restarts " + e.restarts),
    el("div", {}, el("button", { class: "restart", onclick: () => admin("POST",
      "/admin/engines/" + e.id + "/restart", "restart engine " + e.id) }, "restart engine")));
}

function render() {
  const now = performance.now();
  const standbyLast = (e) => (e.state === "standby" ? 1 : 0);  // serving engines first, warm standbys after
  const pools = [...new Set(engines.map((e) => e.pool || "default"))].sort();  // grouped by pool, by name
  const poolOf = (e) => pools.indexOf(e.pool || "default");
  const sorted = [...engines].sort((a, b) => poolOf(a) - poolOf(b) || standbyLast(a) - standbyLast(b) || a.id - b.id);
  const cards = [];
  sorted.forEach((e, i) => {
    if (pools.length > 1 && (i === 0 || poolOf(sorted[i - 1]) !== poolOf(e))) {
      const inPool = engines.filter((o) => poolOf(o) === poolOf(e));
      cards.push(el("div", { class: "pool-title", "data-pool": e.pool || "default" }, "pool " + (e.pool || "default"),
        el("span", { class: "kv" }, " · " + (e.backend || "?") + (e.model ? ": " + e.model : "") + " · " +
          inPool.length + " engine" + (inPool.length === 1 ? "" : "s"))));
    }
    cards.push(engineCard(e, now));
  });
  const pending = starting.map((s) => el("div", { class: "card engine", "data-state": "starting" },
    el("div", { class: "title" }, "engine set " + s.engine_set, el("span", { class: "state starting" }, "starting")),
    el("div", { class: "kv" }, "GPU " + (s.gpu || "cpu"))));
  if (cards.length || pending.length) $("engines").replaceChildren(...cards, ...pending);
  $("hosts").replaceChildren(...hosts.map((h) => el("div", { class: "card host", "data-host": h.host, "data-state": h.state },
    el("div", { class: "title" }, h.host + (h.local ? " (this server)" : ""), el("span", { class: "state " + h.state }, h.state)),
    el("div", { class: "kv" }, "engines ", el("b", { class: "host-engines" }, String(h.engines.length)),
      h.engines_wanted == null ? "" : " of " + h.engines_wanted, h.agent ? " · join agent" : "",
      h.gpus == null ? "" : " · GPUs " + h.gpus),
    el("div", { class: "kv" }, "last heard ", el("b", {}, h.silent_s == null ? "—" : secs(h.silent_s) + " ago"),
      " · lost " + h.losses + "×"))));

  const filter = $("filter").value;
  const rows = [...jobs.values()].reverse().filter((j) => !filter || j.status === filter ||
    (filter === "finished" && !["queued", "running"].includes(j.status))).map((j) => {
    const elapsed = jobElapsed(j, now);
    const live = j.status === "queued" || j.status === "running";
    return el("tr", { "data-job-id": j.id, "data-status": j.status },
      el("td", { class: "text" }, j.id),
      el("td", { class: "status " + j.status }, j.status),
      el("td", {}, j.engine == null ? "" : String(j.engine)),
      el("td", {}, elapsedSpan(elapsed, j.status === "running", now), j.deadline_s != null ? " / " + secs(j.deadline_s) : " / no deadline"),
      el("td", {}, String(j.tokens)),
      el("td", { class: "text", title: j.prompt }, j.prompt),
      el("td", { class: "text", title: j.error || j.output_tail }, j.error ? "[" + j.error + "] " + j.output_tail
        : j.output_tail),
      el("td", {}, live ? el("button", { class: "kill", onclick: () => admin("POST",
        "/admin/jobs/" + encodeURIComponent(j.id) + "/kill", "kill " + j.id) }, "kill") : ""));
  });
  $("jobs").replaceChildren(...rows);
}

function tick() {  // elapsed times grow between events without rebuilding the page
  const now = performance.now();
  for (const span of document.querySelectorAll(".elapsed[data-live]")) {
    const value = Number(span.dataset.base) + (now - Number(span.dataset.at)) / 1000;
    span.dataset.elapsed = value.toFixed(2);
    span.textContent = secs(value);
  }
}

function elapsedSpan(value, live, now) {
  const attrs = { class: "elapsed", "data-elapsed": value == null ? "" : value.toFixed(2) };
  if (live && value != null) Object.assign(attrs, { "data-live": "1", "data-base": value, "data-at": now });
  return el("b", attrs, secs(value));
}

// --- charts: the last minutes, from GET /v1/stats (one sample a second, kept by the server) -------------
const CHARTS = [
  { key: "queued", title: "queue depth", color: "#e65100" },
  { key: "running", title: "running jobs", color: "#1565c0" },
  { key: "tokens_per_s", title: "tokens / s", color: "#2e7d32" },
  { key: "interrupted", title: "interrupts", color: "#ef6c00", bars: "killed",
    help: "jobs stopped by their deadline or a cancel; engines SIGKILLed by the watchdog in dark red" },
];
const SVG_NS = "http://www.w3.org/2000/svg", CHART_W = 300, CHART_H = 64;
let stats = [], statsWindow = 300, statsSince = 0, serverOffset = 0;

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function buildCharts() {
  $("charts").replaceChildren(...CHARTS.map((c) => el("div", { class: "card chart", id: "chart-" + c.key,
    title: c.help || c.title },
    el("div", { class: "title" }, c.title, el("span", { class: "now" }, "–")),
    svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": c.title }),
    el("div", { class: "kv axis" }, el("span", { class: "from" }, ""), el("span", { class: "max" }, ""),
      el("span", {}, "now")))));
}

async function pollStats() {
  for (;;) {
    try {
      const token = feedToken();
      const resp = await fetch("/v1/stats?since=" + statsSince,
                               token ? { headers: { Authorization: "Bearer " + token } } : {});
      if (resp.ok) {
        const body = await resp.json();
        serverOffset = body.now - Date.now() / 1000;
        statsWindow = body.window_s;
        stats.push(...body.samples);
        if (body.samples.length) statsSince = body.samples[body.samples.length - 1].t;
        while (stats.length && stats[0].t < body.now - statsWindow) stats.shift();
      }
    } catch (err) {
      // the live feed's indicator tells the connection state
    }
    drawCharts();
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function fmt(v) { return v >= 100 ? String(Math.round(v)) : String(Math.round(v * 10) / 10); }

function ago(seconds) { return seconds < 120 ? Math.round(seconds) + " s" : Math.round(seconds / 60) + " min"; }

function drawCharts() {  // time runs right to left: the lines move as samples arrive and age
  const now = Date.now() / 1000 + serverOffset;
  // the span grows with the history the server has, from one minute up to all it keeps
  const span = Math.min(statsWindow, Math.max(60, stats.length ? now - stats[0].t : 0)), start = now - span;
  const round = (v) => Math.round(v * 10) / 10;
  const x = (t) => round(((t - start) / span) * CHART_W);
  $("window").textContent = ago(span);
  for (const c of CHARTS) {
    const box = $("chart-" + c.key), plot = box.querySelector("svg");
    const values = stats.map((s) => s[c.key] + (c.bars ? s[c.bars] : 0));
    const top = Math.max(1, ...values), y = (v) => round(CHART_H - 2 - (v / top) * (CHART_H - 6));
    const shapes = [svg("line", { x1: 0, x2: CHART_W, y1: y(top), y2: y(top), stroke: "#dde1e6" })];
    if (c.bars) {
      const width = Math.max(2, round(CHART_W / span));  // one sample wide
      for (const s of stats) {
        if (s[c.key] + s[c.bars] <= 0) continue;
        shapes.push(svg("rect", { x: x(s.t) - width, y: y(s[c.key] + s[c.bars]), width,
          height: CHART_H - 2 - y(s[c.key] + s[c.bars]), fill: c.color }));
        if (s[c.bars] > 0) shapes.push(svg("rect", { x: x(s.t) - width, y: y(s[c.bars]), width,
          height: CHART_H - 2 - y(s[c.bars]), fill: "#b71c1c" }));
      }
    } else if (stats.length) {
      const points = stats.map((s) => x(s.t) + "," + y(s[c.key])).join(" ");
      shapes.push(svg("polyline", { points, fill: "none", stroke: c.color, "stroke-width": 1.5,
        "vector-effect": "non-scaling-stroke" }));
    }
    plot.replaceChildren(...shapes);
    const last = values.length ? values[values.length - 1] : 0, sum = values.reduce((a, b) => a + b, 0);
    Object.assign(box.dataset, { count: stats.length, last, max: values.length ? Math.max(...values) : 0, sum,
      firstX: stats.length ? x(stats[0].t) : "" });
    // a count of events shows its total over the span, a level its latest value
    box.querySelector(".now").textContent = !stats.length ? "–" : c.bars ? fmt(sum) + " in " + ago(span) : fmt(last);
    box.querySelector(".max").textContent = "max " + fmt(top);
    box.querySelector(".from").textContent = "−" + ago(span);
  }
  const latest = stats[stats.length - 1];
  $("engine-counts").textContent = latest ? latest.serving + " serving · " + latest.standby + " standby" : "";
}

$("filter").addEventListener("change", render);
setInterval(tick, 200);
buildCharts();
feed();
pollStats();
