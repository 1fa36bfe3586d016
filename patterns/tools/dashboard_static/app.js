"use strict";
// The dashboard page: asks the dashboard server for its latest snapshot about once a second
// and draws it. The server alone talks to the storage service; this page only talks to it.
//
// Everything that came from a message or a record (bodies, reasons, ids, blob and service
// names) is added as text - text nodes, never innerHTML - so a body of
// <img src=x onerror=alert(1)> shows as those characters and runs nothing.

const TAB = Math.random().toString(36).slice(2, 12).replace(/[^a-z0-9]/g, "") || "tab";
const SVG = "http://www.w3.org/2000/svg";
const history = new Map(); // queue -> [[ms, messages, visible, poison], ...]
let since = 0; // the newest sample we have (ms since 1970)
let started = null; // when the server started: a restarted server's history starts afresh
let chosen = null; // the journey whose hops are shown

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

async function poll() {
  try {
    const answer = await fetch(`/api/state?since=${since}&tab=${TAB}`, { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const state = await answer.json();
    remember(state);
    draw(state);
  } catch (error) {
    const line = document.getElementById("connection");
    line.className = "connection down";
    line.textContent = "The dashboard server does not answer (stopped?): trying again every " +
      "second. Start it with `make dashboard`.";
  } finally {
    setTimeout(poll, 1000);
  }
}

function remember(state) {
  if (state.started !== started) {
    history.clear();
    started = state.started;
  }
  for (const [name, samples] of Object.entries(state.history)) {
    const kept = history.get(name) || [];
    kept.push(...samples);
    history.set(name, kept);
    for (const sample of samples) since = Math.max(since, sample[0]);
  }
  const oldest = state.now - state.window * 1000;
  for (const [name, kept] of history) {
    if (!(name in state.history)) history.delete(name); // the queue is gone
    else history.set(name, kept.filter((sample) => sample[0] >= oldest));
  }
}

function draw(state) {
  const service = state.service;
  const line = document.getElementById("connection");
  const tabs = `${state.tabs} open tab${state.tabs === 1 ? "" : "s"}`;
  if (service.ok === false) {
    line.className = "connection down";
    const last = state.updated ? `; the counts below are from ${clock(state.updated)}` : "";
    line.textContent = `${service.error} (trying again every second${last})`;
  } else if (service.ok) {
    line.className = "connection live";
    line.textContent = `live: ${state.endpoint}` +
      (state.prefix ? `, queues starting with '${state.prefix}'` : "") +
      ` · updated ${clock(state.updated)}`;
  }
  document.body.classList.toggle("stale", service.ok === false);
  drawQueues(state);
  drawPoison(state.poison);
  drawBlobs(state.blobs);
  drawTables(state.tables);
  drawJourneys(state.traces);
  document.getElementById("footer").textContent =
    `One poller in the dashboard server asks the storage service about once every ` +
    `${state.interval} s, whatever the number of tabs (${tabs} now); ` +
    `${state.polls} polls since it started.`;
}

// --- queues ---------------------------------------------------------------------------------

function number(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function drawQueues(state) {
  const place = document.getElementById("queue-groups");
  if (!state.groups.length) {
    const scope = state.prefix ? ` starting with '${state.prefix}'` : "";
    let empty = `No queues${scope} at ${state.endpoint} yet: start a lesson's producer and ` +
      "they appear here.";
    if (state.updated === null) {
      empty = state.service.ok === null ? "Reading the queues…" : "Nothing read yet.";
    }
    place.replaceChildren(el("p", { class: "empty" }, empty));
    return;
  }
  const traffic = state.traces.traffic || {};
  const groups = state.groups.map((group) => {
    const head = el("tr", {}, ...["queue", "messages", "visible", "in flight", "poison",
      "depth", "in / out per second"].map((name) => el("th", {}, name)));
    const rows = group.queues.map((queue) => {
      const samples = history.get(queue.name) || [];
      let visible = number(queue.visible);
      if (queue.messages !== null && queue.visible === null) visible = "?";
      if (queue.visible === 32) visible = "32+";
      let inFlight = number(queue.in_flight);
      if (queue.messages !== null && queue.in_flight === null) inFlight = "?";
      return el("tr", { "data-queue": queue.name },
        el("td", { class: "name" }, queue.name),
        el("td", { class: "messages" }, number(queue.messages)),
        el("td", { class: "visible" }, visible),
        el("td", { class: "in-flight" }, inFlight),
        el("td", { class: queue.poison ? "poison bad" : "poison" }, number(queue.poison)),
        el("td", { class: "graph" }, depthGraph(samples, state)),
        el("td", { class: "graph" }, rateGraph(samples, state, traffic[queue.name])));
    });
    return el("section", { class: "group" }, el("h3", {}, group.title),
      el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  });
  place.replaceChildren(...groups);
}

const W = 180, H = 36;

function xOf(ms, state) {
  return W - ((state.now - ms) / (state.window * 1000)) * W;
}

function depthGraph(samples, state) {
  const points = samples.filter((s) => s[1] !== null);
  const top = Math.max(1, ...points.map((s) => s[1]));
  const y = (value) => (H - 2 - (value / top) * (H - 10)).toFixed(1);
  const line = (i) => points.filter((s) => s[i] !== null)
    .map((s) => `${xOf(s[0], state).toFixed(1)},${y(s[i])}`).join(" ");
  return svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "depth" },
    svg("title", {}, `messages (line) and visible (dotted), the last ${state.window / 60} min`),
    svg("line", { x1: 0, y1: H - 2, x2: W, y2: H - 2, class: "axis" }),
    svg("polyline", { points: line(2), class: "visible" }),
    svg("polyline", { points: line(1), class: "messages" }),
    svg("text", { x: 2, y: 8, class: "scale" }, `max ${top}`));
}

function rateGraph(samples, state, moved) {
  if (moved && moved.length) {
    // traced: what was sent to the queue (up) and taken off it (down), each second
    return bars(moved, state, "traced",
      "from the traces: messages sent to the queue (up) and taken off it, done or poisoned " +
      "(down), per second");
  }
  const rates = []; // [ms, up, down]: the net change per second between two counts
  for (let i = 1; i < samples.length; i++) {
    const [t0, m0] = samples[i - 1], [t1, m1] = samples[i];
    if (m0 === null || m1 === null || t1 <= t0) continue;
    const rate = ((m1 - m0) * 1000) / (t1 - t0);
    rates.push([t1, Math.max(0, rate), Math.max(0, -rate)]);
  }
  return bars(rates, state, "net",
    "net change per second: up, more came in than went out; down, the reverse");
}

function bars(rows, state, kind, title) {
  const top = Math.max(1, ...rows.map((r) => Math.max(r[1], r[2])));
  const mid = H / 2, half = H / 2 - 3;
  const path = (i, sign) => rows.filter((r) => r[i] > 0).map((r) => {
    const x = xOf(r[0], state).toFixed(1), h = ((r[i] / top) * half).toFixed(1);
    return `M${x} ${mid}v${sign * h}`;
  }).join("");
  return svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: `rate ${kind}` },
    svg("title", {}, title),
    svg("line", { x1: 0, y1: mid, x2: W, y2: mid, class: "axis" }),
    svg("path", { d: path(1, -1) || "M0 0", class: "in" }),
    svg("path", { d: path(2, 1) || "M0 0", class: "out" }),
    svg("text", { x: 2, y: 8, class: "scale" }, `${kind} ±${Math.round(top * 10) / 10}/s`));
}

// --- poison, blobs, tables ----------------------------------------------------------------

function drawPoison(records) {
  const list = document.getElementById("poison-list");
  if (!records.length) {
    list.replaceChildren(el("li", { class: "empty" }, "No poison records."));
    return;
  }
  list.replaceChildren(...records.map((r) => el("li", { class: "record" },
    el("div", { class: "head" },
      el("span", { class: "when" }, isNaN(Date.parse(r.at)) ? "" : clock(Date.parse(r.at))),
      el("span", { class: "queue" }, r.queue),
      el("span", { class: "id" }, r.id || "(no id)"),
      el("span", { class: "attempts" },
        r.attempts === null ? "" : `after ${r.attempts} deliver${r.attempts === 1 ? "y" : "ies"}`)),
    el("div", { class: "reason" }, r.reason),
    el("div", { class: "body" }, r.body))));
}

function bytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function drawBlobs(blobs) {
  const place = document.getElementById("blob-list");
  if (blobs.error) {
    place.replaceChildren(el("p", { class: "empty" }, blobs.error));
    return;
  }
  if (!blobs.containers.length) {
    place.replaceChildren(el("p", { class: "empty" },
      "No blobs: the claim-check lesson keeps its big payloads here while they wait."));
    return;
  }
  const parts = blobs.containers.map((c) => el("div", { class: "container", "data-container": c.name },
    el("p", {}, el("b", {}, c.name), `: ${c.count} blob${c.count === 1 ? "" : "s"} ` +
      `(${bytes(c.bytes)}), ${c.count - c.orphans.length - c.unknown} referred to by a ` +
      `message, ${c.orphans.length} orphan${c.orphans.length === 1 ? "" : "s"}` +
      (c.unknown ? `, ${c.unknown} not sure` : "")),
    el("ul", {}, ...c.orphans.map((o) => el("li", { class: "orphan" },
      `orphan: ${o.name}, ${bytes(o.bytes)}, ${o.age} s old`)))));
  parts.push(el("p", { class: "note" }, "orphan: no message refers to it and it is older than " +
    "the orphan age; not sure: younger, or its queue holds messages a peek cannot see. " +
    "`cleanup --orphans` removes orphans."));
  place.replaceChildren(...parts);
}

function drawTables(tables) {
  const section = document.getElementById("tables");
  section.hidden = !tables.length;
  document.getElementById("table-list").replaceChildren(...tables.map((t) =>
    el("div", { class: "table" }, el("h3", {}, `${t.lesson}: ${t.name}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...t.columns.map((c) => el("th", {}, c)))),
        el("tbody", {}, ...t.rows.map((row) => el("tr", {}, ...row.map((v) => el("td", {}, v)))))),
      t.more ? el("p", { class: "note" }, `and ${t.more} more`) : "")));
}

// --- journeys -------------------------------------------------------------------------------

let drawn = ""; // the journeys on the page: redrawn only when they change (keeps the focus)

function drawJourneys(traces, again) {
  const signature = JSON.stringify(traces);
  if (signature === drawn && !again) return;
  drawn = signature;
  const list = document.getElementById("journey-list");
  if (!traces.present) {
    list.replaceChildren(el("p", { class: "empty" },
      `No traces file at ${traces.file}: run the scripts with OTEL_TRACES_EXPORTER=jsonl ` +
      "(after pip install -e '.[trace]'), in the folder the dashboard runs in, and each " +
      "message's journey appears here."));
    document.getElementById("journey-detail").replaceChildren();
    return;
  }
  if (!traces.journeys.length) {
    list.replaceChildren(el("p", { class: "empty" }, `No journeys in ${traces.file} yet.`));
    return;
  }
  const done = traces.journeys.filter((j) => !j.waiting); // a journey under way is no slowest
  const slowest = Math.max(...done.map((j) => j.total_ms));
  const rows = traces.journeys.map((j) => {
    const row = el("li", { class: "journey", tabindex: "0", role: "button", "data-trace": j.trace },
      el("span", { class: "id" }, j.id || "(no id)"),
      el("span", { class: "total" }, `${j.total_ms.toFixed(1)} ms`),
      gantt(j, 240, 4),
      j.waiting ? el("span", { class: "waiting" }, `now waiting in ${j.waiting}`) : "",
      !j.waiting && j.total_ms === slowest ? el("span", { class: "slowest" }, "slowest") : "");
    if (chosen && chosen.trace === j.trace) row.classList.add("chosen");
    const choose = () => { chosen = j; drawJourneys(traces, true); };
    row.addEventListener("click", choose);
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") choose(); });
    return row;
  });
  list.replaceChildren(el("p", { class: "note" }, "The latest journeys, newest first " +
    "(click one to see its hops). In the queue: ", el("span", { class: "key poll" }, "consumer " +
    "asleep between polls"), " ", el("span", { class: "key behind" }, "behind other messages"),
    " · ", el("span", { class: "key work" }, "work"),
    traces.skipped ? ` · ${traces.skipped} line(s) skipped: not spans` : ""),
  el("ol", {}, ...rows));
  drawDetail();
}

function gantt(j, width, row) {
  const total = Math.max(j.total_ms, 0.001);
  const x = (ms) => ((ms / total) * width).toFixed(1);
  const bars = [];
  j.hops.forEach((hop, i) => {
    const y = i * (row + 1);
    const span = (from, ms, cls) => {
      if (ms > 0) bars.push(svg("rect", { x: x(from), y, width: Math.max(0.5, x(ms)), height: row, class: cls }));
    };
    span(hop.at_ms, hop.poll_ms, "poll");
    span(hop.at_ms + hop.poll_ms, hop.wait_ms - hop.poll_ms, "behind");
    span(hop.at_ms + hop.wait_ms, hop.work_ms, "work");
  });
  const height = Math.max(row, j.hops.length * (row + 1));
  return svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "gantt" }, ...bars);
}

function outcome(hop) {
  // "poisoned: <reason>" says all that "poisoned" says
  const notes = hop.notes.filter((note) => note !== hop.outcome);
  const said = notes.some((note) => note.startsWith(`${hop.outcome}:`));
  return [said ? "" : hop.outcome, ...notes].filter(Boolean).join("; ");
}

function drawDetail() {
  const place = document.getElementById("journey-detail");
  if (!chosen) {
    place.replaceChildren();
    return;
  }
  const j = chosen;
  const head = el("tr", {}, ...["hop", "queue", "wait ms", "(asleep)", "work ms", "", "outcome"]
    .map((name) => el("th", {}, name)));
  const rows = j.hops.map((hop) => el("tr", { class: "hop" },
    el("td", {}, hop.action === "send" ? `${hop.role} sends` : hop.role),
    el("td", {}, hop.queue),
    el("td", { class: "num" }, hop.action === "send" ? "" : hop.wait_ms.toFixed(1)),
    el("td", { class: "num" }, hop.poll_ms ? hop.poll_ms.toFixed(1) : ""),
    el("td", { class: "num" }, hop.work_ms.toFixed(1)),
    el("td", {}, gantt({ ...j, hops: [hop] }, 300, 10)),
    el("td", { class: "outcome" }, outcome(hop))));
  place.replaceChildren(el("h3", {}, `${j.id || "(no id)"}: ${j.total_ms.toFixed(1)} ms`,
    el("span", { class: "trace" }, ` trace ${j.trace}, began ${clock(Date.parse(j.began))}`)),
  el("table", { class: "hops" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

poll();
