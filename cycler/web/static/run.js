// The run page: what the run is, its controls and downloads, its plots and its events, kept current
// by the live socket while the run goes on.
"use strict";

const ACTION_LABEL = { pause: "Pause", resume: "Resume", stop: "Stop" };

const runView = { id: null, run: null, parts: {}, series: null, plots: {}, cycles: null, spectrum: null,
  lastCycle: null };

function runPage(main) {
  const id = BOOT.run_id;
  runView.id = id;
  const p = runView.parts;
  p.title = el("h1", {}, `Run ${id}`);
  p.state = stateBadge(null, { id: "run-state" });
  p.meta = el("dl", { class: "run-meta" });
  p.live = el("dl", { class: "run-live", id: "run-live", hidden: true });
  p.actions = el("div", { class: "actions", id: "actions" });
  p.actionMessage = el("div", { id: "action-message" });
  p.links = el("nav", { class: "downloads", "aria-label": "Report and exports" });
  p.error = el("div", { id: "run-error" });
  p.vi = el("div", { id: "plot-vi", class: "plot" });
  p.cycles = el("div", { id: "plot-cycles", class: "plot" });
  p.cyclesNote = el("p", { class: "note", id: "cycles-note" });
  p.nyquist = el("div", { id: "plot-nyquist", class: "plot" });
  p.trend = el("div", { id: "plot-trend", class: "plot" });
  p.eisNote = el("p", { class: "note", id: "eis-note" });
  p.eisTitle = el("p", { class: "plot-caption", id: "eis-title" });
  p.trendTitle = el("h3", {}, "Fitted resistances");
  p.events = el("tbody");
  p.eventsBox = el("div", { class: "table-scroll events-scroll" },
    el("table", { id: "events", class: "data" },
      el("thead", {}, el("tr", {}, el("th", {}, "Test time"), el("th", {}, "Date"), el("th", {}, "Kind"),
        el("th", {}, "Message"))),
      p.events));
  main.replaceChildren(
    el("div", { class: "page-title" }, p.title, p.state),
    p.error,
    el("div", { class: "run-head" }, p.meta, el("div", { class: "run-side" }, p.live, p.actions, p.actionMessage,
      p.links)),
    el("section", { class: "panel" }, el("h2", {}, "Voltage and current"), p.vi),
    el("div", { class: "two-col" },
      el("section", { class: "panel" }, el("h2", {}, "Capacity and coulombic efficiency per cycle"),
        p.cyclesNote, p.cycles),
      el("section", { class: "panel", id: "eis" }, el("h2", {}, "Impedance"), p.eisNote, p.eisTitle, p.nyquist,
        p.trendTitle, p.trend)),
    el("section", { class: "panel" }, el("h2", {}, "Events"), p.eventsBox),
  );
  runView.series = new SeriesPlot(p.vi, id);
  // The server reads in one thread, in the order asked: the plot first, the spectrum fits last.
  runView.series.load();
  loadRun();
  loadCycles();
  loadEvents();
  loadSpectrum();
  connectLive(onRunMessage, () => {
    loadRun();
    loadCycles();
    loadSpectrum();
    loadEvents();
    if (!runView.series.zoom) runView.series.load();
  });
  const rebuild = debounce(() => {
    runView.series.rebuild();
    renderCycles();
    renderSpectrum();
  }, 200);
  let lastWidth = window.innerWidth;
  window.addEventListener("resize", () => {
    if (window.innerWidth !== lastWidth) rebuild();
    lastWidth = window.innerWidth;
  });
  window.addEventListener("cyclerd:rescale", rebuild);
}

async function loadRun() {
  const p = runView.parts;
  let run;
  try {
    run = await getJSON(`/api/runs/${runView.id}`);
  } catch (err) {
    p.error.replaceChildren(notice(`Could not read run ${runView.id}: ${err.message}`));
    return;
  }
  p.error.replaceChildren();
  runView.run = run;
  p.title.textContent = run.name ? `${run.name}` : `Run ${run.id}`;
  p.title.append(el("span", { class: "run-id" }, ` run ${run.id}`));
  setBadge(p.state, run.state);
  const cell = cellFacts(run.cell || {});
  const end = isNum(run.ended_unix) ? run.ended_unix : Date.now() / 1000;
  const rows = [
    ["Channel", run.channel || DASH],
    ["Cell", cell],
    ["Started", fmtDate(run.started_unix)],
    ["Ended", isNum(run.ended_unix) ? fmtDate(run.ended_unix) : "not yet"],
    ["Duration", isNum(run.started_unix) ? fmtDuration(end - run.started_unix) : DASH],
    ["Protocol", run.source || DASH],
    ["Samples", isNum(run.samples) ? run.samples.toLocaleString("en") : DASH],
  ];
  p.meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  renderActions(run);
  if (isNum(run.ended_unix)) p.live.hidden = true; // the readings of an ended run are in its plots
  const links = run.links || {};
  const names = [["report", "Report"], ["bdf_csv", "BDF CSV"], ["bdf_parquet", "BDF Parquet"],
    ["cycles_csv", "Cycle table CSV"]];
  p.links.replaceChildren(...names.filter(([k]) => links[k]).map(([k, text]) =>
    el("a", { href: links[k], class: "button-link", dataset: { link: k } }, text)));
}

/** A cell's unit suffixes in the store (SI) and how a person reads them. */
const CELL_UNITS = [
  ["_m2", 1e4, "cm²"], ["_Ah", 1e3, "mAh"], ["_kg", 1e6, "mg"], ["_g", 1e3, "mg"], ["_mm", 1, "mm"],
  ["_um", 1, "µm"], ["_degC", 1, "°C"], ["_V", 1, "V"],
];

function cellValue(key, value) {
  for (const [suffix, factor, unit] of CELL_UNITS) {
    if (key.endsWith(suffix) && isNum(value)) return [key.slice(0, -suffix.length), `${fmtSig(value * factor, 4)} ${unit}`];
  }
  return [key, isNum(value) ? fmtSig(value, 4) : String(value)];
}

/** The cell's name with its area, capacity and mass on one line, everything else folded away. */
function cellFacts(cell) {
  const main = [];
  const more = [];
  for (const [key, value] of Object.entries(cell)) {
    if (key === "cell" || value === null || value === "" || typeof value === "object") continue;
    const [name, text] = cellValue(key, value);
    (/^(area|capacity|mass)/.test(name) ? main : more).push([name.replace(/_/g, " "), text]);
  }
  const line = [cell.cell || DASH];
  if (main.length) line.push(` (${main.map(([k, v]) => `${k} ${v}`).join(", ")})`);
  if (!more.length) return line.join("");
  return el("span", {}, line.join(""), el("details", { class: "cell-more" },
    el("summary", {}, "more about the cell"),
    el("dl", {}, more.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))));
}

function renderActions(run) {
  const p = runView.parts;
  const buttons = (run.actions || []).map((action) => el("button", {
    type: "button",
    class: action === "stop" ? "danger" : "",
    dataset: { action },
    onclick: () => runAction(action),
  }, ACTION_LABEL[action] || action));
  p.actions.replaceChildren(...buttons);
}

async function runAction(action) {
  const run = runView.run;
  const p = runView.parts;
  if (action === "stop") {
    const what = `run ${run.id}${run.name ? ` (${run.name})` : ""} on ${run.channel}`;
    if (!confirm(`Stop ${what}? The cell is put in a safe state; a stopped run cannot be resumed.`)) return;
  }
  p.actions.querySelectorAll("button").forEach((b) => (b.disabled = true));
  p.actionMessage.replaceChildren();
  try {
    await postJSON(`/api/runs/${run.id}/${action}`, {});
    p.actionMessage.replaceChildren(notice(`${ACTION_LABEL[action] || action} requested.`, "info"));
  } catch (err) {
    p.actionMessage.replaceChildren(notice(err.message));
  }
  await loadRun();
}

async function loadCycles() {
  try {
    runView.cycles = await getJSON(`/api/runs/${runView.id}/cycles`);
  } catch (err) {
    runView.cycles = null;
    runView.parts.cyclesNote.textContent = `Could not read the cycles: ${err.message}`;
    return;
  }
  renderCycles();
}

function renderCycles() {
  const p = runView.parts;
  const cycles = runView.cycles;
  if (!cycles) return;
  runView.plots.cycles?.destroy();
  runView.plots.cycles = null;
  p.cycles.replaceChildren();
  const n = (cycles.cycle || []).length;
  p.cycles.hidden = n === 0;
  p.cyclesNote.textContent = n === 0 ? "No complete cycle yet: the table fills as cycles end." : "";
  if (n) runView.plots.cycles = cyclesPlot(p.cycles, cycles);
}

async function loadSpectrum() {
  try {
    runView.spectrum = await getJSON(`/api/runs/${runView.id}/spectrum`);
  } catch (err) {
    runView.spectrum = null;
    runView.parts.eisNote.textContent = `Could not read the spectra: ${err.message}`;
    return;
  }
  renderSpectrum();
}

function renderSpectrum() {
  const p = runView.parts;
  const spectrum = runView.spectrum;
  if (!spectrum) return;
  for (const key of ["nyquist", "trend"]) {
    runView.plots[key]?.destroy();
    runView.plots[key] = null;
    p[key].replaceChildren();
  }
  const latest = spectrum.latest;
  const trend = spectrum.trend || {};
  const hasTrend = (trend.t_s || []).length > 0 && Object.keys(trend.resistances_ohm || {}).length > 0;
  p.nyquist.hidden = !latest;
  p.eisTitle.hidden = !latest;
  p.trend.hidden = !hasTrend;
  p.trendTitle.hidden = !hasTrend;
  p.eisNote.textContent = latest ? "" : "No impedance spectra in this run.";
  if (!latest) return;
  const at = [`Spectrum ${latest.sequence ?? ""} at ${fmtDuration(latest.t_s)}`];
  if (isNum(latest.cycle)) at.push(`, cycle ${latest.cycle}`);
  const fit = latest.fit;
  if (fit && fit.parameters) {
    const params = Object.entries(fit.parameters).map(([k, v]) =>
      `${k} = ${/^R/.test(k) ? fmtOhm(v) : fmtParameter(v)}`);
    at.push(`. Fit ${fit.circuit || ""}: ${params.join(", ")}`);
  } else {
    at.push(". No fit.");
  }
  p.eisTitle.textContent = at.join("");
  runView.plots.nyquist = nyquistPlot(p.nyquist, latest);
  if (hasTrend) runView.plots.trend = trendPlot(p.trend, trend);
}

/** A fitted parameter without a known unit (CPE Q and n): three significant digits, small ones as 1.2e-5. */
function fmtParameter(v) {
  if (!isNum(v)) return DASH;
  const abs = Math.abs(v);
  return abs !== 0 && (abs < 0.01 || abs >= 1e5) ? v.toExponential(2) : fmtSig(v, 3);
}

async function loadEvents() {
  let body;
  try {
    body = await getJSON(`/api/runs/${runView.id}/events`);
  } catch (err) {
    runView.parts.events.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, `Could not read the events: ${err.message}`)));
    return;
  }
  runView.parts.events.replaceChildren(...(body.events || []).map(eventRow));
  const box = runView.parts.eventsBox;
  box.scrollTop = box.scrollHeight;
}

function eventRow(event) {
  const unix = isNum(event.unix) ? event.unix : Date.now() / 1000; // a live event is stamped on arrival
  return el("tr", { dataset: { kind: event.kind || "" } },
    el("td", { class: "num" }, isNum(event.t_s) ? fmtDuration(event.t_s) : DASH),
    el("td", { class: "date", title: fmtDate(unix, true) }, fmtDate(unix)),
    el("td", {}, event.kind || ""),
    el("td", { class: "message" }, event.message || ""));
}

const reloadAfterCycle = debounce(() => {
  loadCycles();
  loadSpectrum();
}, 500);
const reloadRunSoon = debounce(loadRun, 300);

function onRunMessage(message) {
  const run = runView.run;
  if (!run) return;
  const ours = message.run === runView.id;
  if (message.type === "state" && message.channel === run.channel && message.state) {
    const state = message.state;
    if ("run" in state && state.run !== runView.id) {
      if (!isNum(run.ended_unix)) reloadRunSoon(); // the run has just ended
      return;
    }
    if (isNum(state.cycle) && runView.lastCycle !== null && state.cycle !== runView.lastCycle) reloadAfterCycle();
    if (isNum(state.cycle)) runView.lastCycle = state.cycle;
    if (state.state && state.state !== run.state) reloadRunSoon();
    Object.assign(liveNow, state);
    anchorState(liveNow);
    inFrame("run-live", renderLive);
  } else if (message.type === "samples" && ours && message.channel === run.channel) {
    runView.series.append(message.t || [], message.voltage || [], message.current || []);
    if (Object.keys(liveNow).length) {
      followSamples(liveNow, message);
      inFrame("run-live", renderLive);
    }
  } else if (message.type === "event" && ours && message.event) {
    const box = runView.parts.eventsBox;
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    runView.parts.events.append(eventRow(message.event));
    if (atBottom) box.scrollTop = box.scrollHeight;
  } else if (message.type === "spectrum" && ours) {
    loadSpectrum();
  }
}

const liveNow = {};

/** The run's present step and readings, from the live feed (the run view itself has none). */
function renderLive() {
  const s = liveNow;
  if (!runView.run || isNum(runView.run.ended_unix)) return;
  const step = [s.step_label, s.step_kind && s.step_kind !== s.step_label ? `(${s.step_kind})` : null];
  const rows = [
    ["Now", step.filter(Boolean).join(" ") || DASH],
    ["Cycle", isNum(s.cycle) ? String(s.cycle) : DASH],
    ["Step time", fmtDuration(s.step_time_s)],
    ["Voltage", fmtVoltage(s.voltage)],
    ["Current", fmtCurrent(s.current)],
    ["Time left", fmtTimeLeft(s.time_left_s, s.time_left_min_s)],
  ];
  const p = runView.parts;
  p.live.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  p.live.hidden = false;
  if (s.state && runView.run && !isNum(runView.run.ended_unix)) setBadge(p.state, s.state);
}
