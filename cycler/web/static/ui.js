// Shared by every page: the boot data, DOM building (text only, never HTML from data), number and time
// formats with units, JSON requests with the CSRF header, the header bar, large text and the live socket.
"use strict";

const BOOT = JSON.parse(document.getElementById("boot").textContent || "{}");

/** Builds an element; strings and numbers among the children become text nodes, so user text stays text. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const DASH = "—";

function isNum(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** Engineering prefixes for the units the lab reads: V and mV, A down to nA, Ω up to MΩ. */
const PREFIXES = {
  V: [[1, "V"], [1e-3, "mV"]],
  A: [[1, "A"], [1e-3, "mA"], [1e-6, "µA"], [1e-9, "nA"]],
  "Ω": [[1e6, "MΩ"], [1e3, "kΩ"], [1, "Ω"], [1e-3, "mΩ"]],
};

function fmtEng(x, unit, digits = 4) {
  if (!isNum(x)) return DASH;
  const steps = PREFIXES[unit] || [[1, unit]];
  if (x === 0) return `0 ${steps.find((s) => s[0] === 1)[1]}`;
  const abs = Math.abs(x);
  const [factor, name] = steps.find((s) => abs >= s[0] * 0.9995) || steps[steps.length - 1];
  return `${fmtSig(x / factor, digits)} ${name}`;
}

/** A number with `digits` significant digits but never in exponent notation, for readable tiles. */
function fmtSig(x, digits = 4) {
  if (!isNum(x)) return DASH;
  if (x === 0) return "0";
  const decimals = Math.max(0, digits - 1 - Math.floor(Math.log10(Math.abs(x))));
  return x.toFixed(Math.min(decimals, 6));
}

const fmtVoltage = (v) => fmtEng(v, "V");
const fmtCurrent = (a) => fmtEng(a, "A");
const fmtOhm = (r) => fmtEng(r, "Ω", 3);
const fmtMAh = (q) => (isNum(q) ? `${fmtSig(q, 4)} mAh` : DASH);
const fmtPercent = (p) => (isNum(p) ? `${p.toFixed(2)} %` : DASH);

/** "42 s", "12 min 30 s", "3 h 12 min", "2 d 4 h": the two largest units, as people say a duration. */
function fmtDuration(seconds) {
  if (!isNum(seconds) || seconds < 0) return DASH;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) {
    const total = Math.round(seconds);
    const m = Math.floor(total / 60);
    const s = total % 60;
    return s ? `${m} min ${s} s` : `${m} min`;
  }
  if (seconds < 86400) {
    const total = Math.round(seconds / 60);
    const h = Math.floor(total / 60);
    const m = total % 60;
    return m ? `${h} h ${m} min` : `${h} h`;
  }
  const total = Math.round(seconds / 3600);
  const d = Math.floor(total / 24);
  const h = total % 24;
  return h ? `${d} d ${h} h` : `${d} d`;
}

/** "2 h 10 min – 3 h" when the estimate is a range, one duration when both ends read the same. */
function fmtTimeLeft(maxS, minS) {
  if (!isNum(maxS)) return isNum(minS) ? `≥ ${fmtDuration(minS)}` : DASH;
  const hi = fmtDuration(maxS);
  if (!isNum(minS)) return hi;
  if (minS < 1) return `up to ${hi}`; // the run may end any moment (a step that ends on a condition)
  const lo = fmtDuration(minS);
  return lo === hi ? hi : `${lo} – ${hi}`;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** Local time as "2026-12-07 14:03": sortable, and unambiguous whatever the browser's locale. */
function fmtDate(unix, withSeconds = false) {
  if (!isNum(unix)) return DASH;
  const d = new Date(unix * 1000);
  const day = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return withSeconds ? `${day} ${time}:${pad2(d.getSeconds())}` : `${day} ${time}`;
}

const STATE_CLASS = {
  running: "good", paused: "warn", stopping: "warn", waiting: "warn", idle: "quiet", stopped: "quiet",
  completed: "done", failed: "bad", error: "bad",
};

function stateBadge(state, attrs) {
  const badge = el("span", { class: "badge", ...(attrs || {}) });
  setBadge(badge, state);
  return badge;
}

function setBadge(badge, state) {
  const text = state || "unknown";
  badge.textContent = text;
  badge.dataset.state = text;
  badge.className = `badge ${STATE_CLASS[text] || "quiet"}`;
}

class RequestError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** GET or POST JSON; a non-2xx answer throws with the server's own sentence when it gave one. */
async function requestJSON(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new RequestError(`The dashboard server did not answer (${err.message}). Is cyclerd still running?`, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const said = body && (body.error || (typeof body.errors === "string" && body.errors));
    throw new RequestError(said || `${path}: HTTP ${response.status} ${response.statusText}`, response.status, body);
  }
  return body;
}

const getJSON = (path) => requestJSON(path, { headers: { Accept: "application/json" } });

function postJSON(path, body) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (BOOT.csrf) headers["X-CSRF-Token"] = BOOT.csrf;
  return requestJSON(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
}

/** Runs `fn` at most once per animation frame per key, with the latest arguments: live data can
 * arrive many times a second per channel and the DOM should change only when the screen does. */
const frames = new Map();
function inFrame(key, fn) {
  const pending = frames.has(key);
  frames.set(key, fn);
  if (pending) return;
  requestAnimationFrame(() => {
    const latest = frames.get(key);
    frames.delete(key);
    latest();
  });
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/* Large text: the whole UI is sized in rem, so one class on <html> scales it for a wall screen. */
const LARGE_KEY = "cyclerd.large";

function largeWanted() {
  const asked = new URLSearchParams(location.search).get("large");
  if (asked === "1" || asked === "0") {
    storeLarge(asked === "1");
    return asked === "1";
  }
  try {
    return localStorage.getItem(LARGE_KEY) === "1";
  } catch {
    return false;
  }
}

function storeLarge(on) {
  try {
    localStorage.setItem(LARGE_KEY, on ? "1" : "0");
  } catch {
    /* private mode: the toggle still works for this page */
  }
}

function setLarge(on) {
  document.documentElement.classList.toggle("large", on);
  const button = document.getElementById("large-text");
  if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
  window.dispatchEvent(new Event("cyclerd:rescale"));
}

/** Pixel size of 1 rem now, for canvases and plots that need fonts and sizes in px. */
function remPx() {
  return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
}

function loginHref() {
  const here = location.pathname + location.search;
  return here === "/" || location.pathname === "/login" ? "/login" : `/login?next=${encodeURIComponent(here)}`;
}

function renderHeader() {
  const top = document.getElementById("top");
  const page = BOOT.page;
  const link = (href, text, current) => el("a", { href, "aria-current": current ? "page" : null }, text);
  const nav = el(
    "nav",
    { "aria-label": "Pages" },
    link("/", "Lab", page === "lab"),
    link("/history", "History", page === "history"),
    BOOT.can_control ? link("/submit", "Submit", page === "submit") : null,
  );
  const live = el("span", { id: "live", class: "live", role: "status" });
  const large = el("button", {
    id: "large-text",
    type: "button",
    class: "plain",
    title: "Larger text (for a wall screen); remembered in this browser",
    "aria-pressed": document.documentElement.classList.contains("large") ? "true" : "false",
    onclick: () => {
      const on = !document.documentElement.classList.contains("large");
      storeLarge(on);
      setLarge(on);
    },
  }, "A+");
  let who;
  if (BOOT.user) {
    const out = el("button", { type: "button", id: "logout", class: "plain", onclick: logOut }, "Log out");
    who = el("span", { class: "who" }, el("span", { class: "user", title: BOOT.role || "" }, BOOT.user), out);
  } else if (page !== "login") {
    who = el("span", { class: "who" }, el("a", { href: loginHref(), id: "login-link" }, "Log in"));
  }
  top.replaceChildren(el("a", { class: "lab-name", href: "/" }, BOOT.lab || "cyclerd"), nav, live,
    el("span", { class: "spacer" }), large, who);
  setLiveIndicator(BOOT.live ? "offline" : "read-only");
}

async function logOut() {
  try {
    await postJSON("/logout", {});
  } catch (err) {
    /* the session may be gone already; reloading shows the anonymous page either way */
  }
  location.reload();
}

function setLiveIndicator(text) {
  const live = document.getElementById("live");
  if (!live) return;
  live.textContent = text;
  live.dataset.status = text;
  live.title = {
    live: "Receiving live data from the daemon",
    offline: "Not connected to the daemon; reconnecting",
    "read-only": "Reading the database only (cyclerd web --db): no live data, no control",
  }[text] || "";
}

/**
 * The live WebSocket at /api/live: reconnects after 1, 2, 4, 8, 10, 10 ... s and calls `onReconnect`
 * after each reconnection so the page can re-read what it missed. Does nothing when boot.live is false.
 */
function connectLive(onMessage, onReconnect) {
  if (!BOOT.live) return;
  let delay = 1000;
  let opened = false;
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(`${scheme}//${location.host}/api/live`);
    } catch {
      setTimeout(open, delay);
      return;
    }
    socket.addEventListener("open", () => {
      delay = 1000;
      setLiveIndicator("live");
      if (opened && onReconnect) onReconnect();
      opened = true;
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      // One message per flush of the daemon's feed: an array of updates, applied in order.
      for (const update of Array.isArray(message) ? message : [message]) {
        if (update && typeof update.type === "string") onMessage(update);
      }
    });
    socket.addEventListener("close", (event) => {
      if (event.code === 4001) {
        // api.LOGGED_OUT: this session ended (logged out elsewhere, or taken out of the users file).
        location.href = loginHref();
        return;
      }
      setLiveIndicator("offline");
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    });
  };
  open();
}

/** A message line in a page (errors from requests, confirmations). */
function notice(text, kind = "error", attrs = {}) {
  return el("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", ...attrs }, text);
}

function pageTitle(text, ...extra) {
  return el("div", { class: "page-title" }, el("h1", {}, text), ...extra);
}
