// The browser terminal: xterm.js on /api/v2/workspaceagents/{id}/pty. The reconnect id
// lives in the page's URL, so a reload re-attaches to the same session (the agent
// replays its scrollback); a dropped socket is retried with backoff, showing the state.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";

const box = document.getElementById("term");
const badge = document.getElementById("term-state");
const url = new URL(window.location.href);
let reconnect = url.searchParams.get("reconnect");
if (!/^[0-9a-f-]{36}$/i.test(reconnect || "")) {
  reconnect = crypto.randomUUID();
  url.searchParams.set("reconnect", reconnect);
  window.history.replaceState(null, "", url);
}
const command = url.searchParams.get("command") || "";

const term = new Terminal({
  cursorBlink: true,
  fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, monospace',
  fontSize: 14,
  scrollback: 5000,
  allowProposedApi: false,
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(box);
fit.fit();
term.focus();

function show(state, text) {
  badge.dataset.state = state;
  badge.textContent = text;
}

const encoder = new TextEncoder();
let socket = null;
let attempt = 0;
let attachedBefore = false;

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(encoder.encode(JSON.stringify(message)));
  }
}

function open() {
  const wsUrl = new URL(box.dataset.pty, window.location.href);
  wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
  wsUrl.searchParams.set("reconnect", reconnect);
  wsUrl.searchParams.set("width", String(term.cols));
  wsUrl.searchParams.set("height", String(term.rows));
  if (command) wsUrl.searchParams.set("command", command);
  show("connecting", attempt ? `reconnecting (attempt ${attempt})…` : "connecting…");
  const ws = new WebSocket(wsUrl);
  ws.binaryType = "arraybuffer";
  socket = ws;
  ws.onopen = () => {
    attempt = 0;
    // The agent replays the session's scrollback on every attach: start from a clean
    // screen so a re-attach does not show it twice.
    if (attachedBefore) term.reset();
    attachedBefore = true;
    show("connected", "connected");
    send({ height: term.rows, width: term.cols });
  };
  ws.onmessage = (event) => {
    term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    socket = null;
    if (event.code === 1000 && event.reason === "") {
      show("closed", "session ended — reload to start a new one");
      return;
    }
    attempt += 1;
    const delay = Math.min(5000, 250 * 2 ** Math.min(attempt, 5));
    show("disconnected", `disconnected${event.reason ? `: ${event.reason}` : ""} — retrying`);
    setTimeout(checkThenOpen, delay);
  };
}

async function checkThenOpen() {
  try {
    const me = await fetch("/api/v2/users/me", { credentials: "same-origin" });
    if (me.status === 401) {
      const back = window.location.pathname + window.location.search;
      window.location.assign(`/login?return_to=${encodeURIComponent(back)}`);
      return;
    }
  } catch {
    // The server is unreachable (restarting, network down): keep trying.
  }
  open();
}

term.onData((data) => send({ data }));
let pending = 0;
new ResizeObserver(() => {
  cancelAnimationFrame(pending);
  pending = requestAnimationFrame(() => {
    fit.fit();
  });
}).observe(box);
term.onResize(({ cols, rows }) => send({ height: rows, width: cols }));
open();
