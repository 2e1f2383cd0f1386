// The dashboard: renders the server's snapshot of the user's workspaces, then follows
// /dashboard/events (Server-Sent Events) so the page stays live without reloading.
const root = document.getElementById("workspaces");
const live = document.getElementById("live");
const logs = new Map(); // agent id -> array of {output, level}, newest last
const MAX_LINES = 500;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function when(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  return new Date(iso).toLocaleString();
}

function logBox(agentId) {
  const lines = logs.get(agentId) || [];
  if (!lines.length) return null;
  const pre = el("pre", { class: "log", "data-testid": "startup-log" });
  pre.textContent = lines.map((l) => l.output).join("\n");
  return el("details", {}, el("summary", {}, `Startup log (${lines.length} lines)`), pre);
}

function agentView(agent) {
  const apps = el("ul", { class: "links apps" });
  for (const app of agent.apps) {
    apps.append(
      el(
        "li",
        { "data-app": app.slug },
        el("a", { href: app.href, target: "_blank", rel: "noopener" }, app.name),
        " ",
        el("span", { class: `badge h-${app.health}` }, app.health),
      ),
    );
  }
  const ports = el("ul", { class: "links ports" });
  for (const port of agent.ports) {
    ports.append(
      el(
        "li",
        { "data-port": String(port.port) },
        el("a", { href: port.href, target: "_blank", rel: "noopener" }, String(port.port)),
        port.process ? el("span", { class: "muted" }, ` ${port.process}`) : null,
      ),
    );
  }
  return el(
    "div",
    { class: "agent", "data-agent": agent.name, "data-status": agent.status },
    el(
      "div",
      { class: "row" },
      el("h2", {}, agent.name),
      el("span", { class: `badge s-${agent.status}`, "data-testid": "status" }, agent.status),
      el("span", { "data-testid": "lifecycle" }, `lifecycle: ${agent.lifecycle}`),
      el("span", { class: "muted" }, agent.version ? `version ${agent.version}` : "no version yet"),
      el("span", { class: "muted" }, `last connected ${when(agent.last_connected_at)}`),
      agent.status === "connected" ? el("a", { href: agent.terminal }, "Terminal") : null,
    ),
    agent.apps.length ? el("div", {}, el("span", { class: "muted" }, "Apps"), apps) : null,
    agent.ports.length ? el("div", {}, el("span", { class: "muted" }, "Ports"), ports) : null,
    logBox(agent.id),
  );
}

let current = null;

function render(view) {
  current = view;
  // Keep open <details> (the startup logs) open across re-renders.
  const open = new Set(
    [...root.querySelectorAll("details[open]")].map((d) => d.closest("[data-agent]")?.dataset.agent),
  );
  const sections = view.workspaces.map((ws) =>
    el("section", { class: "workspace", "data-workspace": ws.name }, el("h2", {}, ws.name), ...ws.agents.map(agentView)),
  );
  if (!sections.length) sections.push(el("p", { class: "muted" }, "No workspaces yet."));
  root.replaceChildren(...sections);
  for (const node of root.querySelectorAll("[data-agent]")) {
    if (open.has(node.dataset.agent)) node.querySelector("details")?.setAttribute("open", "");
  }
}

const initial = document.getElementById("initial");
if (initial) render(JSON.parse(initial.textContent));
// For the benchmark (docs/benchmarks.md): when the first view was on screen.
performance.mark("wsagent:dashboard-rendered");

function connect() {
  const source = new EventSource(root.dataset.events);
  source.onopen = () => {
    live.textContent = "live";
    live.dataset.state = "live";
  };
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.dataset.state = "reconnecting";
  };
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  source.addEventListener("logs", (event) => {
    const { agent, lines } = JSON.parse(event.data);
    const kept = (logs.get(agent) || []).concat(lines).slice(-MAX_LINES);
    logs.set(agent, kept);
    if (current) render(current);
  });
  source.addEventListener("signedout", () => {
    source.close();
    window.location.assign("/login?return_to=/");
  });
}
connect();
