// Forms: submitting a protocol (checked by the server before it can be queued), logging in, and the
// page for an address that names nothing.
"use strict";

function fmtBytes(n) {
  const short = (x) => String(+x.toPrecision(3)); // 1 MiB, 1.83 MiB
  if (n >= 1024 * 1024) return `${short(n / (1024 * 1024))} MiB`;
  if (n >= 1024) return `${short(n / 1024)} KiB`;
  return `${n} bytes`;
}

const submitView = { checkedKey: null, name: "protocol.yaml", f: {} };

function submitPage(main) {
  const title = pageTitle("Submit a protocol");
  if (!BOOT.can_control) {
    const why = BOOT.user
      ? `${BOOT.user} is a viewer: only an operator can queue protocols.`
      : "Only a logged-in operator can queue protocols.";
    main.replaceChildren(title, notice(why, "info"),
      BOOT.user ? "" : el("p", {}, el("a", { href: loginHref() }, "Log in")));
    return;
  }
  const f = submitView.f;
  const field = (label, input, hint) => el("label", { class: "field" }, el("span", {}, label), input,
    hint ? el("small", {}, hint) : null);
  f.channel = el("select", { id: "submit-channel", name: "channel", required: true });
  f.cell = el("input", { id: "cell-id", name: "cell", placeholder: "A1", autocomplete: "off" });
  f.area = el("input", { id: "cell-area", name: "area", placeholder: "1.13 cm^2", autocomplete: "off" });
  f.capacity = el("input", { id: "cell-capacity", name: "capacity", placeholder: "2 mAh", autocomplete: "off" });
  f.mass = el("input", { id: "cell-mass", name: "mass", placeholder: "12 mg", autocomplete: "off" });
  f.file = el("input", { id: "protocol-file", type: "file", accept: ".yaml,.yml,.json,text/yaml,application/json" });
  f.fileName = el("span", { class: "note", id: "protocol-name" });
  f.text = el("textarea", { id: "protocol-text", name: "text", rows: 16, spellcheck: "false",
    placeholder: "Paste a protocol (YAML) here, or choose a file above." });
  f.check = el("button", { type: "button", id: "check" }, "Check");
  f.submit = el("button", { type: "button", id: "submit", class: "primary", disabled: true }, "Submit");
  f.message = el("div", { id: "form-message" });
  f.errors = el("pre", { id: "errors", class: "errors", hidden: true });
  f.program = el("p", { id: "program", class: "note", hidden: true });
  f.plan = el("pre", { id: "plan", class: "plan", hidden: true });
  f.submitted = el("p", { id: "submitted", class: "notice info", hidden: true });
  const limit = BOOT.max_upload_bytes ? ` (at most ${fmtBytes(BOOT.max_upload_bytes)})` : "";
  main.replaceChildren(
    title,
    el("form", { class: "submit-form", id: "submit-form", onsubmit: (e) => e.preventDefault() },
      el("div", { class: "field-row" },
        field("Channel", f.channel),
        field("Cell id", f.cell),
        field("Area", f.area, "e.g. 1.13 cm^2"),
        field("Capacity", f.capacity, "e.g. 2 mAh"),
        field("Mass", f.mass, "e.g. 12 mg")),
      el("div", { class: "field-row" }, field(`Protocol file${limit}`, f.file), f.fileName),
      field("Protocol text", f.text),
      el("div", { class: "buttons" }, f.check, f.submit,
        el("span", { class: "note" }, "Submit is enabled after a successful check of exactly this text, channel and cell.")),
      f.message),
    f.submitted, f.errors, f.program, f.plan,
  );
  f.file.addEventListener("change", readProtocolFile);
  for (const input of [f.channel, f.cell, f.area, f.capacity, f.mass, f.text]) {
    input.addEventListener("input", updateSubmitButton);
    input.addEventListener("change", updateSubmitButton);
  }
  f.check.addEventListener("click", checkProtocol);
  f.submit.addEventListener("click", submitProtocol);
  loadSubmitChannels();
}

async function loadSubmitChannels() {
  const f = submitView.f;
  try {
    const body = await getJSON("/api/lab");
    const options = (body.channels || []).map((c) => {
      const busy = c.run !== null && c.run !== undefined ? `${c.state || "running"}` : "free";
      const queued = c.queued ? `, ${c.queued} queued` : "";
      return el("option", { value: c.name }, `${c.name} (${busy}${queued})`);
    });
    f.channel.replaceChildren(...options);
    const wanted = new URLSearchParams(location.search).get("channel");
    if (wanted) f.channel.value = wanted;
  } catch (err) {
    f.message.replaceChildren(notice(`Could not read the channels: ${err.message}`));
  }
  updateSubmitButton();
}

function readProtocolFile() {
  const f = submitView.f;
  const file = f.file.files[0];
  if (!file) return;
  const max = BOOT.max_upload_bytes;
  if (max && file.size > max) {
    f.message.replaceChildren(notice(`${file.name} is ${fmtBytes(file.size)}; the dashboard accepts protocol files ` +
      `of at most ${fmtBytes(max)}. Is it the right file?`));
    f.file.value = "";
    return;
  }
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    f.text.value = String(reader.result);
    submitView.name = file.name;
    f.fileName.textContent = `Loaded ${file.name} (${fmtBytes(file.size)}); you may edit it below.`;
    f.message.replaceChildren();
    updateSubmitButton();
  });
  reader.addEventListener("error", () => {
    f.message.replaceChildren(notice(`Could not read ${file.name}: ${reader.error?.message || "unknown error"}`));
  });
  reader.readAsText(file);
}

function protocolBody() {
  const f = submitView.f;
  return {
    channel: f.channel.value,
    name: submitView.name,
    text: f.text.value,
    cell: { cell: f.cell.value.trim(), area: f.area.value.trim(), capacity: f.capacity.value.trim(),
      mass: f.mass.value.trim() },
  };
}

/** What a check vouches for: the same text for the same channel and cell (not the file name). */
function checkKey(body) {
  return JSON.stringify([body.text, body.channel, body.cell]);
}

function updateSubmitButton() {
  const f = submitView.f;
  f.submit.disabled = submitView.checkedKey === null || submitView.checkedKey !== checkKey(protocolBody());
}

/** Refuses locally what the server would refuse anyway: no channel, no text, or too many bytes. */
function localProblem(body) {
  if (!body.channel) return "Choose a channel.";
  if (!body.text.trim()) return "Paste a protocol or choose a file first.";
  const bytes = new TextEncoder().encode(body.text).length;
  const max = BOOT.max_upload_bytes;
  if (max && bytes > max) return `The protocol is ${fmtBytes(bytes)}; the dashboard accepts at most ${fmtBytes(max)}.`;
  return null;
}

async function checkProtocol() {
  const f = submitView.f;
  const body = protocolBody();
  f.message.replaceChildren();
  f.submitted.hidden = true;
  const problem = localProblem(body);
  if (problem) {
    f.message.replaceChildren(notice(problem));
    return;
  }
  submitView.checkedKey = null;
  updateSubmitButton();
  f.check.disabled = true;
  let answer;
  try {
    answer = await postJSON("/api/protocols/check", body);
  } catch (err) {
    answer = err.body && typeof err.body.errors === "string" ? err.body : null;
    if (!answer) f.message.replaceChildren(notice(err.message));
  } finally {
    f.check.disabled = false;
  }
  if (!answer) return;
  if (answer.ok) {
    submitView.checkedKey = checkKey(body);
    f.errors.hidden = true;
    f.errors.textContent = "";
    f.program.textContent = `The protocol is valid${answer.name ? `: ${answer.name}` : ""}. Its plan:`;
    f.program.hidden = false;
    f.plan.textContent = answer.plan || "";
    f.plan.hidden = false;
  } else {
    f.plan.hidden = true;
    f.program.hidden = true;
    f.errors.textContent = answer.errors || answer.error || "The server refused the protocol without saying why.";
    f.errors.hidden = false;
  }
  updateSubmitButton();
}

async function submitProtocol() {
  const f = submitView.f;
  const body = protocolBody();
  if (submitView.checkedKey !== checkKey(body)) return updateSubmitButton();
  f.submit.disabled = true;
  f.message.replaceChildren();
  let answer;
  try {
    answer = await postJSON("/api/protocols/submit", body);
  } catch (err) {
    f.message.replaceChildren(notice(err.message));
    updateSubmitButton();
    return;
  }
  if (!answer.ok) {
    f.message.replaceChildren(notice(answer.error || "The server did not queue the protocol."));
    updateSubmitButton();
    return;
  }
  submitView.checkedKey = null; // one check, one job: queueing it twice needs a second, deliberate check
  updateSubmitButton();
  f.submitted.replaceChildren(`Protocol queued as job ${answer.job} on ${body.channel}. `,
    el("a", { href: `/history?channel=${encodeURIComponent(body.channel)}` }, "See the queue in History"));
  f.submitted.hidden = false;
}

/** Where to go after logging in: only a path on this site, never another origin (no open redirect). */
function safeNext() {
  const next = new URLSearchParams(location.search).get("next");
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.startsWith("/\\")) return "/";
  try {
    const url = new URL(next, location.origin);
    if (url.origin !== location.origin || url.pathname === "/login") return "/";
    return url.pathname + url.search + url.hash;
  } catch {
    return "/";
  }
}

function loginPage(main) {
  const user = el("input", { id: "login-user", name: "user", autocomplete: "username", required: true });
  const password = el("input", { id: "login-password", name: "password", type: "password",
    autocomplete: "current-password", required: true });
  const button = el("button", { id: "login-submit", type: "submit", class: "primary" }, "Log in");
  const error = el("p", { id: "login-error", class: "notice error", role: "alert", hidden: true });
  const form = el("form", { class: "login", id: "login-form" },
    el("label", { class: "field" }, el("span", {}, "User"), user),
    el("label", { class: "field" }, el("span", {}, "Password"), password),
    button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      await requestJSON("/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ user: user.value.trim(), password: password.value }),
      });
      location.assign(safeNext());
    } catch (err) {
      error.textContent = err.status === 401 || err.status === 403 || err.status === 429
        ? err.message
        : `Could not log in: ${err.message}`;
      error.hidden = false;
      password.value = "";
      password.focus();
      button.disabled = false;
    }
  });
  const already = BOOT.user ? notice(`You are logged in as ${BOOT.user}.`, "info") : "";
  main.replaceChildren(pageTitle("Log in"), already, form);
  user.focus();
}

function notFoundPage(main) {
  main.replaceChildren(pageTitle("Not found"),
    el("p", { id: "notfound-message" }, BOOT.message || "Nothing is at this address."),
    el("p", {}, el("a", { href: "/" }, "Go to the lab")));
}
