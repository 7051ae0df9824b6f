// The lab view: one tile per channel, read from /api/lab and kept current by the live socket.
"use strict";

const SPARK_SPAN_S = 3600;
const SPARK_MAX_POINTS = 1200;

const lab = { channels: new Map(), tiles: new Map(), grid: null, error: null };

function labPage(main) {
  lab.grid = el("div", { class: "tiles", id: "tiles" });
  lab.error = el("div", { id: "lab-error" });
  main.replaceChildren(lab.error, lab.grid);
  loadLab();
  connectLive(onLabMessage, loadLab);
  // Without a socket (read-only mode) the database may still be written by a daemon elsewhere.
  if (!BOOT.live) setInterval(loadLab, 15000);
  const redraw = debounce(() => lab.channels.forEach((_, name) => drawSpark(name)), 150);
  window.addEventListener("resize", redraw);
  window.addEventListener("cyclerd:rescale", redraw);
}

const reloadLab = debounce(loadLab, 400);

async function loadLab() {
  let body;
  try {
    body = await getJSON("/api/lab");
  } catch (err) {
    lab.error.replaceChildren(notice(`Could not read the lab: ${err.message}`));
    return;
  }
  lab.error.replaceChildren();
  const names = new Set();
  for (const channel of body.channels || []) {
    names.add(channel.name);
    const spark = channel.spark || { t: [], voltage: [] };
    const ch = { ...channel, spark: { t: [...spark.t], voltage: [...spark.voltage] } };
    anchorState(ch);
    lab.channels.set(channel.name, ch);
  }
  for (const name of [...lab.channels.keys()]) {
    if (!names.has(name)) {
      lab.channels.delete(name);
      lab.tiles.get(name)?.root.remove();
      lab.tiles.delete(name);
    }
  }
  for (const name of names) {
    if (!lab.tiles.has(name)) lab.tiles.set(name, buildTile(name));
    lab.grid.append(lab.tiles.get(name).root); // keeps the server's order
    renderTile(name);
  }
  if (!names.size) {
    lab.error.replaceChildren(notice("No channels: add them to lab.toml and restart the daemon.", "info"));
  }
}

function buildTile(name) {
  const f = {};
  const field = (tag, key, attrs = {}) => (f[key] = el(tag, { ...attrs, dataset: { field: key } }));
  const fact = (label, key, wide) => [el("dt", {}, label), el("dd", { class: wide ? "wide" : null },
    field("span", key))];
  const root = el(
    "article",
    { class: "tile", dataset: { channel: name } },
    el("div", { class: "tile-head" }, field("h2", "name", { class: "channel" }), field("span", "state")),
    el("div", { class: "tile-cell" }, el("span", { class: "label" }, "Cell "), field("span", "cell"),
      f.source = el("span", { class: "source" })),
    el("div", { class: "tile-run" }, field("a", "run", { class: "run-link" })),
    el("div", { class: "readouts" },
      el("div", {}, el("span", { class: "label" }, "Voltage"), field("span", "voltage", { class: "reading" })),
      el("div", {}, el("span", { class: "label" }, "Current"), field("span", "current", { class: "reading" }))),
    el("dl", { class: "facts" },
      fact("Step", "step", true), fact("Step time", "step_time"), fact("Cycle", "cycle"),
      fact("Elapsed", "elapsed"), fact("Queued", "queued"), fact("Time left", "left", true)),
    f.spark = el("canvas", { class: "spark", role: "img", "aria-label": `${name}: voltage, last hour` }),
    el("p", { class: "tile-event" }, f.eventTime = el("span", { class: "event-time" }), field("span", "event")),
  );
  return { root, f };
}

function renderTile(name) {
  const ch = lab.channels.get(name);
  const tile = lab.tiles.get(name);
  if (!ch || !tile) return;
  const f = tile.f;
  const running = ch.run !== null && ch.run !== undefined;
  f.name.textContent = name;
  setBadge(f.state, ch.state || (running ? "running" : "idle"));
  f.state.classList.add("state");
  f.state.dataset.field = "state";
  tile.root.dataset.state = ch.state || "";
  f.cell.textContent = ch.cell || DASH;
  f.source.textContent = ch.source ? ` · ${ch.source}` : "";
  if (running) {
    f.run.href = `/runs/${ch.run}`;
    f.run.textContent = ch.run_name ? `${ch.run_name} (run ${ch.run})` : `run ${ch.run}`;
    f.run.title = f.run.textContent;
  } else {
    f.run.removeAttribute("href");
    f.run.textContent = "no run";
    f.run.title = "";
  }
  const step = [ch.step_label, ch.step_kind && ch.step_kind !== ch.step_label ? `(${ch.step_kind})` : null];
  f.step.textContent = running ? step.filter(Boolean).join(" ") || DASH : DASH;
  f.cycle.textContent = running && isNum(ch.cycle) ? String(ch.cycle) : DASH;
  f.step_time.textContent = running ? fmtDuration(ch.step_time_s) : DASH;
  f.elapsed.textContent = running ? fmtDuration(ch.elapsed_s) : DASH;
  f.left.textContent = running ? fmtTimeLeft(ch.time_left_s, ch.time_left_min_s) : DASH;
  f.voltage.textContent = fmtVoltage(ch.voltage);
  f.current.textContent = fmtCurrent(ch.current);
  f.queued.textContent = isNum(ch.queued) ? String(ch.queued) : "0";
  const event = ch.last_event;
  f.event.textContent = event ? event.message || "" : "";
  f.event.title = event ? event.kind || "" : "";
  f.eventTime.textContent = event ? `${event.unix ? fmtDate(event.unix) : fmtDuration(event.t_s)} ` : "";
  drawSpark(name);
}

const RUN_FIELDS = ["run_name", "step_label", "step_kind", "cycle", "step", "step_time_s", "elapsed_s",
  "time_left_s", "time_left_min_s"];

function onLabMessage(message) {
  const ch = lab.channels.get(message.channel);
  if (message.type === "hello") return;
  if (!ch) {
    if (message.channel) reloadLab(); // a channel the page has not seen: the lab changed
    return;
  }
  if (message.type === "state" && message.state) applyState(ch, message.state);
  else if (message.type === "samples") {
    if (message.run !== ch.run) return;
    appendSpark(ch.spark, message.t || [], message.voltage || []);
    followSamples(ch, message);
  } else if (message.type === "event" && message.event) ch.last_event = message.event;
  else return;
  inFrame(`tile:${message.channel}`, () => renderTile(message.channel));
}

/**
 * State messages come when a step starts or the state changes; samples come with every batch. So the
 * tile's readings, step time, elapsed and time left follow the newest sample between two states.
 */
function followSamples(ch, message) {
  const t = message.t || [];
  const k = t.length - 1;
  if (k < 0 || !isNum(t[k]) || !(t[k] > (ch.reading_t ?? -Infinity))) return;
  const anchor = ch.anchor;
  ch.reading_t = t[k];
  if (isNum((message.voltage || [])[k])) ch.voltage = message.voltage[k];
  if (isNum((message.current || [])[k])) ch.current = message.current[k];
  if (!anchor || t[k] < anchor.t) return;
  const since = t[k] - anchor.t;
  ch.elapsed_s = t[k];
  if (isNum(anchor.step)) ch.step_time_s = anchor.step + since;
  if (isNum(anchor.left)) ch.time_left_s = Math.max(0, anchor.left - since);
  if (isNum(anchor.leftMin)) ch.time_left_min_s = Math.max(0, anchor.leftMin - since);
}

/** Where the newest state put the run in test time, for followSamples. */
function anchorState(ch) {
  ch.anchor = isNum(ch.elapsed_s)
    ? { t: ch.elapsed_s, step: ch.step_time_s, left: ch.time_left_s, leftMin: ch.time_left_min_s }
    : null;
  if (isNum(ch.elapsed_s) && ("voltage" in ch || "current" in ch)) ch.reading_t = ch.elapsed_s;
}

function applyState(ch, state) {
  const previousRun = ch.run;
  if ("run" in state && (state.run === null || state.run === undefined)) {
    // The run ended: the tile shows an idle channel (an instrument error stays visible) with its cell.
    for (const key of RUN_FIELDS) ch[key] = null;
    Object.assign(ch, state, { run: null, state: state.state === "error" ? "error" : "idle" });
    ch.spark = { t: [], voltage: [] };
  } else {
    Object.assign(ch, state);
  }
  anchorState(ch);
  if (ch.run !== previousRun) {
    // Another run (or none): its name, sparkline and the queue count come from /api/lab.
    if (ch.run !== null) {
      ch.run_name = null;
      ch.spark = { t: [], voltage: [] };
    }
    reloadLab();
  }
}

/** Adds live samples to a sparkline, keeping the last hour of test time and a bounded number of points. */
function appendSpark(spark, t, voltage) {
  const n = Math.min(t.length, voltage.length);
  // A message may repeat samples /api/lab already gave (the socket and the read race at the
  // page's start): only what is newer than the line's end is added, so the line never runs back.
  let last = spark.t.length ? spark.t[spark.t.length - 1] : -Infinity;
  for (let i = 0; i < n; i++) {
    if (!(t[i] > last)) continue;
    spark.t.push(t[i]);
    spark.voltage.push(voltage[i]);
    last = t[i];
  }
  if (!spark.t.length) return;
  const since = spark.t[spark.t.length - 1] - SPARK_SPAN_S;
  let first = 0;
  while (first < spark.t.length && spark.t[first] < since) first++;
  if (first) {
    spark.t.splice(0, first);
    spark.voltage.splice(0, first);
  }
  if (spark.t.length > SPARK_MAX_POINTS) Object.assign(spark, thinMinMax(spark.t, spark.voltage, 240));
}

/** Keeps each time bucket's lowest and highest voltage, so thinning never hides a spike. */
function thinMinMax(t, v, buckets) {
  const t0 = t[0];
  const width = (t[t.length - 1] - t0) / buckets || 1;
  const out = { t: [], voltage: [] };
  let i = 0;
  while (i < t.length) {
    const bucket = Math.floor((t[i] - t0) / width);
    let lo = i;
    let hi = i;
    let j = i;
    while (j < t.length && Math.floor((t[j] - t0) / width) === bucket) {
      if (v[j] < v[lo]) lo = j;
      if (v[j] > v[hi]) hi = j;
      j++;
    }
    for (const k of lo <= hi ? [lo, hi] : [hi, lo]) {
      out.t.push(t[k]);
      out.voltage.push(v[k]);
      if (lo === hi) break;
    }
    i = j;
  }
  return out;
}

function drawSpark(name) {
  const ch = lab.channels.get(name);
  const tile = lab.tiles.get(name);
  if (!ch || !tile) return;
  const canvas = tile.f.spark;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const { t, voltage } = ch.spark;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of voltage) {
    if (isNum(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  tile.root.classList.toggle("no-spark", !(t.length > 1 && hi >= lo));
  if (!(t.length > 1 && hi >= lo)) return;
  const tEnd = t[t.length - 1];
  const tStart = Math.min(t[0], tEnd - SPARK_SPAN_S);
  const spanV = hi - lo || Math.abs(hi) || 1;
  const pad = 3;
  const x = (ti) => ((ti - tStart) / (tEnd - tStart || 1)) * (width - 2 * pad) + pad;
  const y = (vi) => height - pad - ((vi - lo) / spanV) * (height - 2 * pad);
  const style = getComputedStyle(tile.root);
  if (lo < 0 && hi > 0) {
    ctx.strokeStyle = style.getPropertyValue("--grid").trim() || "#ccc";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, y(0));
    ctx.lineTo(width, y(0));
    ctx.stroke();
  }
  ctx.strokeStyle = style.getPropertyValue("--voltage").trim() || "#1f5fbf";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  for (let i = 0; i < t.length; i++) {
    if (!isNum(voltage[i])) {
      drawing = false;
      continue;
    }
    if (drawing) ctx.lineTo(x(t[i]), y(voltage[i]));
    else ctx.moveTo(x(t[i]), y(voltage[i]));
    drawing = true;
  }
  ctx.stroke();
}
