// History: the job queue and past runs, filtered by channel, cell, state and dates; the filters live
// in the URL so that a filtered list can be shared as a link.
"use strict";

const RUN_STATES = ["running", "paused", "stopping", "waiting", "completed", "stopped", "failed", "error"];
const FILTERS = ["channel", "cell", "state", "since", "until"];

const historyView = { form: null, runs: null, queue: null, error: null, count: null };

function historyPage(main) {
  const channel = el("select", { name: "channel", id: "filter-channel" }, el("option", { value: "" }, "all"));
  const state = el("select", { name: "state", id: "filter-state" }, el("option", { value: "" }, "all"),
    ...RUN_STATES.map((s) => el("option", { value: s }, s)));
  const labelled = (text, input) => el("label", {}, el("span", {}, text), input);
  const form = el("form", { class: "filters", id: "filters", role: "search" },
    labelled("Channel", channel),
    labelled("Cell", el("input", { name: "cell", id: "filter-cell", type: "search", placeholder: "any",
      autocomplete: "off" })),
    labelled("State", state),
    labelled("Since", el("input", { name: "since", id: "filter-since", type: "date" })),
    labelled("Until", el("input", { name: "until", id: "filter-until", type: "date" })),
    el("button", { type: "submit" }, "Apply"),
    el("button", { type: "button", class: "plain", onclick: clearFilters }, "Clear"));
  historyView.form = form;
  historyView.error = el("div", { id: "history-error" });
  historyView.queue = el("div", { id: "queue" });
  historyView.count = el("p", { class: "note", id: "runs-count" });
  historyView.runs = el("div", { id: "runs" });
  main.replaceChildren(
    el("section", { class: "panel" }, el("h2", {}, "Queue"), historyView.queue),
    el("section", { class: "panel" }, el("h2", {}, "Runs"), form, historyView.error, historyView.count,
      historyView.runs),
  );
  fillForm();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters();
  });
  form.addEventListener("change", (event) => {
    if (event.target.name !== "cell") applyFilters();
  });
  form.elements.cell.addEventListener("input", debounce(applyFilters, 400));
  window.addEventListener("popstate", () => {
    fillForm();
    loadRuns();
  });
  loadChannels();
  loadQueue();
  loadRuns();
  // Runs start and end with an event: then the queue and the list change.
  const refresh = debounce(() => {
    loadQueue();
    loadRuns();
  }, 1500);
  connectLive((message) => message.type === "event" && refresh(), refresh);
}

function filtersFromURL() {
  const query = new URLSearchParams(location.search);
  return Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || ""]));
}

function fillForm() {
  const filters = filtersFromURL();
  const form = historyView.form;
  for (const key of FILTERS) {
    const input = form.elements[key];
    if (input.tagName === "SELECT" && filters[key] && ![...input.options].some((o) => o.value === filters[key])) {
      input.append(el("option", { value: filters[key] }, filters[key])); // a channel not (yet) listed
    }
    input.value = filters[key];
  }
}

function applyFilters() {
  const query = new URLSearchParams();
  for (const key of FILTERS) {
    const value = historyView.form.elements[key].value.trim();
    if (value) query.set(key, value);
  }
  if (new URLSearchParams(location.search).get("large")) query.set("large", "1");
  const search = query.toString();
  const url = `${location.pathname}${search ? `?${search}` : ""}`;
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  loadRuns();
}

function clearFilters() {
  for (const key of FILTERS) historyView.form.elements[key].value = "";
  applyFilters();
}

async function loadChannels() {
  try {
    const body = await getJSON("/api/lab");
    const select = historyView.form.elements.channel;
    const current = filtersFromURL().channel;
    const names = (body.channels || []).map((c) => c.name);
    if (current && !names.includes(current)) names.push(current);
    select.replaceChildren(el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = current;
  } catch {
    /* the select keeps what the URL asked for; the runs list reports a dead server */
  }
}

let runsRequest = 0;

async function loadRuns() {
  const id = ++runsRequest;
  const filters = filtersFromURL();
  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  let body;
  try {
    body = await getJSON(`/api/runs${query.toString() ? `?${query}` : ""}`);
  } catch (err) {
    if (id === runsRequest) historyView.error.replaceChildren(notice(`Could not read the runs: ${err.message}`));
    return;
  }
  if (id !== runsRequest) return;
  historyView.error.replaceChildren();
  const runs = body.runs || [];
  const filtered = FILTERS.some((k) => filters[k]);
  historyView.count.textContent = runs.length
    ? `${runs.length} run${runs.length === 1 ? "" : "s"}${filtered ? ` match${runs.length === 1 ? "es" : ""} these filters` : ""}, newest first.`
    : filtered ? "No run matches these filters." : "No runs yet.";
  historyView.runs.replaceChildren(runs.length ? runsTable(runs) : "");
}

function runsTable(runs) {
  const now = Date.now() / 1000;
  const rows = runs.map((run) => {
    const ended = isNum(run.ended_unix);
    const duration = isNum(run.started_unix)
      ? fmtDuration((ended ? run.ended_unix : now) - run.started_unix) + (ended ? "" : " so far")
      : DASH;
    return el("tr", { dataset: { run: String(run.id) } },
      el("td", { class: "num" }, el("a", { href: `/runs/${run.id}` }, String(run.id))),
      el("td", {}, el("a", { href: `/runs/${run.id}` }, run.name || `run ${run.id}`)),
      el("td", {}, run.channel || DASH),
      el("td", {}, run.cell || DASH),
      el("td", {}, stateBadge(run.state)),
      el("td", { class: "date" }, fmtDate(run.started_unix)),
      el("td", { class: "date" }, ended ? fmtDate(run.ended_unix) : DASH),
      el("td", { class: "num" }, duration));
  });
  return el("div", { class: "table-scroll" }, el("table", { class: "data", id: "runs-table" },
    el("thead", {}, el("tr", {}, ...["Run", "Name", "Channel", "Cell", "State", "Started", "Ended", "Duration"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

async function loadQueue() {
  let body;
  try {
    body = await getJSON("/api/queue");
  } catch (err) {
    historyView.queue.replaceChildren(notice(`Could not read the queue: ${err.message}`));
    return;
  }
  const jobs = body.jobs || [];
  if (!jobs.length) {
    historyView.queue.replaceChildren(el("p", { class: "note" }, "The queue is empty."));
    return;
  }
  const rows = jobs.map((job) => el("tr", { dataset: { job: String(job.id) } },
    el("td", { class: "num" }, String(job.id)),
    el("td", {}, job.name || DASH),
    el("td", {}, job.channel || DASH),
    el("td", {}, job.cell || DASH),
    el("td", {}, stateBadge(job.state)),
    el("td", {}, job.source || DASH),
    el("td", { class: "date" }, fmtDate(job.submitted_unix))));
  historyView.queue.replaceChildren(el("div", { class: "table-scroll" }, el("table", { class: "data", id: "queue-table" },
    el("thead", {}, el("tr", {}, ...["Job", "Name", "Channel", "Cell", "State", "Source", "Submitted"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, rows))));
}
