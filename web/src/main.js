// execd's browser terminal: a container picker and an xterm.js terminal
// speaking the Kubernetes remotecommand WebSocket protocol (v5.channel.k8s.io)
// to execd's pod exec path. Every frame starts with a channel byte:
// 0 stdin, 1 stdout, 2 stderr, 3 status (JSON), 4 resize (JSON), 255 close.

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import "./style.css";

const PROTOCOL = "v5.channel.k8s.io";
// Browsers cannot set headers on a WebSocket: the token rides in a
// subprotocol instead (never in the URL, which ends up in logs).
const BEARER_PROTOCOL = "base64url.bearer.authorization.k8s.io.";
const TOKEN_KEY = "execd.token";
const CH_STDIN = 0;
const CH_STDOUT = 1;
const CH_STDERR = 2;
const CH_STATUS = 3;
const CH_RESIZE = 4;

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();

const term = new Terminal({
  cursorBlink: true,
  fontFamily: "monospace",
  fontSize: 14,
  scrollback: 5000,
});
const fit = new FitAddon();
term.loadAddon(fit);

let socket = null;
let current = null; // { container, argv, sessionId } of the last session opened

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function base64url(text) {
  let binary = "";
  for (const byte of encoder.encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function setState(state, text) {
  document.body.dataset.state = state;
  $("state").textContent = text;
}

function banner(text, button) {
  $("banner-text").textContent = text;
  $("reconnect").hidden = !button;
  if (button) $("reconnect").textContent = button;
  $("banner").hidden = false;
}

async function api(path) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  return fetch(path, { headers, cache: "no-store", credentials: "same-origin" });
}

// Shows the token form and resolves once a token was entered (and stored).
function askToken(refused) {
  $("token-error").textContent = refused ? "That token was refused." : "";
  $("token-form").hidden = false;
  $("token").focus();
  return new Promise((resolve) => {
    $("token-form").onsubmit = (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      $("token-form").hidden = true;
      resolve();
    };
  });
}

// Makes `name` the select's choice, adding it first when the list does
// not have it (yet): a container named by a link, or one that stopped.
function selectContainer(name) {
  const select = $("container");
  if (!name) return;
  if (!Array.from(select.options).some((o) => o.value === name)) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = `${name} (not listed)`;
    select.prepend(option);
  }
  select.value = name;
}

function renderContainers(list) {
  const body = $("containers");
  const select = $("container");
  // The choice survives the new list: it may be a link's, or the session's.
  const chosen = select.value;
  body.replaceChildren();
  select.replaceChildren();
  for (const c of list) {
    const row = document.createElement("tr");
    for (const text of [c.name, c.image, c.status]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    row.title = `Open a terminal in ${c.name}`;
    row.onclick = () => {
      select.value = c.name;
      // A command from a link runs only after an explicit Open.
      if ($("confirm").hidden) openFromForm();
      else showConfirm();
    };
    body.append(row);
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = c.name;
    select.append(option);
  }
  selectContainer(chosen);
  $("picker-note").textContent = list.length ? "" : "No running containers.";
}

// Loads the container list; false when the server wants a (better) token.
async function loadContainers() {
  let resp;
  try {
    resp = await api("/api/containers");
  } catch (err) {
    $("picker-note").textContent = `Cannot reach execd: ${err}`;
    return true;
  }
  if (resp.status === 401) return false;
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    $("picker-note").textContent = body.message || `HTTP ${resp.status}`;
    return true;
  }
  renderContainers(body.containers || []);
  if (body.message) $("picker-note").textContent = body.message;
  return true;
}

function frame(channel, bytes) {
  const out = new Uint8Array(bytes.length + 1);
  out[0] = channel;
  out.set(bytes, 1);
  return out;
}

function send(channel, bytes) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(frame(channel, bytes));
}

// The size on screen, as an attribute: what `stty size` inside should say
// (read by the browser tests).
function showSize() {
  $("terminal").dataset.size = `${term.rows} ${term.cols}`;
}

function sendResize() {
  send(CH_RESIZE, encoder.encode(JSON.stringify({ Width: term.cols, Height: term.rows })));
}

// The exit code in a channel-3 Status: Success is 0, NonZeroExitCode
// carries it as the ExitCode cause; null for any other failure.
function exitCode(status) {
  if (status.status === "Success") return 0;
  if (status.reason === "NonZeroExitCode") {
    const causes = (status.details && status.details.causes) || [];
    const cause = causes.find((c) => c.reason === "ExitCode");
    const code = cause ? Number.parseInt(cause.message, 10) : Number.NaN;
    if (Number.isInteger(code)) return code;
  }
  return null;
}

/// A fresh session id: the page names its sessions, so that after a dropped
/// connection it can come back to the same one (execd with --reattach-grace
/// keeps it running meanwhile and replays what the page missed).
function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function openSession(container, argv, sessionId) {
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  const reconnecting = sessionId !== undefined;
  current = { container, argv, sessionId: sessionId || newSessionId() };
  // The picker shows the session's container, whatever was listed first.
  selectContainer(container);
  $("banner").hidden = true;
  $("picker").hidden = true;
  $("confirm").hidden = true;
  // Coming back to the same session: what the terminal shows stays, and
  // the replay continues it.
  if (!reconnecting) term.reset();
  const query = new URLSearchParams();
  for (const arg of argv) query.append("command", arg);
  query.set("stdin", "true");
  query.set("stdout", "true");
  query.set("tty", "true");
  query.set("session", current.sessionId);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const pod = encodeURIComponent(container);
  const url = `${scheme}//${location.host}/api/v1/namespaces/default/pods/${pod}/exec?${query}`;
  const protocols = [PROTOCOL];
  if (token()) protocols.push(BEARER_PROTOCOL + base64url(token()));
  setState("connecting", `connecting to ${container}…`);
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  socket = ws;
  let status = null;
  const decoder = new TextDecoder();
  ws.onopen = () => {
    setState("open", `${container}: ${argv.join(" ")}`);
    fit.fit();
    // The session started at the default size; tell it the real one.
    sendResize();
    term.focus();
  };
  ws.onmessage = (event) => {
    const data =
      typeof event.data === "string" ? encoder.encode(event.data) : new Uint8Array(event.data);
    if (data.length === 0) return;
    const payload = data.subarray(1);
    switch (data[0]) {
      case CH_STDOUT:
      case CH_STDERR:
        term.write(payload.slice());
        break;
      case CH_STATUS:
        try {
          status = JSON.parse(decoder.decode(payload));
        } catch {
          status = { status: "Failure", message: "unreadable status" };
        }
        break;
      default:
        break;
    }
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    if (status) {
      const code = exitCode(status);
      const text =
        code === null ? `Session ended: ${status.message || status.status}` : `Process exited with code ${code}`;
      setState("exited", text);
      banner(text, "Run again");
    } else {
      // The button comes back to the same session: with --reattach-grace
      // it still runs; without, the same command starts again.
      setState("closed", "connection lost");
      banner("Connection lost.", "Reconnect");
    }
  };
}

function argvFromField() {
  const argv = $("cmd").value.trim().split(/\s+/).filter(Boolean);
  return argv.length ? argv : ["sh"];
}

// A command for display: blanks between arguments, and any control or
// formatting character (a bidi override among them) shown as an escape, so
// what is on screen is what runs.
function displayCommand(argv) {
  return argv
    .map((arg) => arg.replace(/[\p{Cc}\p{Cf}]/gu, (c) => `\\u{${c.codePointAt(0).toString(16)}}`))
    .join(" ");
}

// The prefilled session, spelled out in full next to Open: nothing runs
// until Open is pressed (a click, or Enter in the form).
function showConfirm() {
  $("confirm-container").textContent = $("container").value || "(no container)";
  $("confirm-cmd").textContent = displayCommand(argvFromField());
  $("confirm").hidden = false;
}

function openFromForm() {
  const container = $("container").value;
  if (!container) return;
  const argv = argvFromField();
  // The address bar keeps the container, so it can be bookmarked; never
  // the command (it would land in the history, and a link must not run one).
  const params = new URLSearchParams();
  params.set("container", container);
  history.replaceState(null, "", `?${params}`);
  openSession(container, argv);
}

// Reads `?container=C&cmd=…` into the form, and takes `cmd` out of the
// address bar (and so out of the history) at once. Returns whether the
// link prefilled anything.
function prefillFromLink() {
  const params = new URLSearchParams(location.search);
  const container = params.get("container");
  const argv = params.getAll("cmd").flatMap((a) => a.split(/\s+/)).filter(Boolean);
  if (params.has("cmd")) {
    params.delete("cmd");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
  }
  if (argv.length) $("cmd").value = argv.join(" ");
  if (container) selectContainer(container);
  const prefilled = Boolean(container || argv.length);
  if (prefilled) showConfirm();
  return prefilled;
}

async function main() {
  // First of all: the command leaves the address bar.
  const prefilled = prefillFromLink();
  term.open($("terminal"));
  fit.fit();
  showSize();
  term.onData((data) => send(CH_STDIN, encoder.encode(data)));
  term.onBinary((data) => send(CH_STDIN, Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(() => {
    showSize();
    sendResize();
  });
  window.addEventListener("resize", () => fit.fit());
  new ResizeObserver(() => fit.fit()).observe($("terminal"));
  $("open-form").onsubmit = (event) => {
    event.preventDefault();
    openFromForm();
  };
  // The spelled-out command follows the form while it waits for Open.
  for (const field of [$("cmd"), $("container")]) {
    field.addEventListener(field === $("cmd") ? "input" : "change", () => {
      if (!$("confirm").hidden) showConfirm();
    });
  }
  $("reconnect").onclick = () => {
    if (!current) return;
    // After an exit, "Run again" is a new session; after a lost
    // connection, the same one.
    const sameSession = $("reconnect").textContent === "Reconnect";
    openSession(current.container, current.argv, sameSession ? current.sessionId : undefined);
  };

  let refused = false;
  setState("loading", "loading…");
  while (!(await loadContainers())) {
    setState("token", "token required");
    await askToken(refused);
    refused = true;
  }
  // A link never runs anything by itself: it fills the form, and Open runs it.
  if (prefilled) {
    showConfirm();
    setState("prefilled", "check the command, then Open");
    $("cmd").focus();
  } else {
    $("picker").hidden = false;
    setState("picking", "pick a container");
  }
}

main();
