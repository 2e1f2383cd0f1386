"""The web front end, measured in Debian's Chromium and with curl, in one run.

    .venv/bin/python bench/web.py [--loads 10] [--keys 300] [--mib 64] [--rounds 5]

- Dashboard first render: Chromium loads ``/`` ``--loads`` times (signed in, warm cache
  after the first); the Performance API gives the navigation's response end, DOM content
  loaded, and the ``wsagent:dashboard-rendered`` mark dashboard.js sets once the first
  view is on screen.
- JavaScript bytes over the wire: every script and style the dashboard and terminal pages
  load in a fresh browser context (cold cache), as ``encodedBodySize`` (gzip as sent).
- Keystroke echo in the browser terminal: ``cat >/dev/null`` in the terminal page; for
  each key the page records keydown → the echoed character on screen (xterm.js renders
  on the next animation frame). Beside it, in the same run, the CLI path: the same keys
  over a websockets client on ``/pty`` (bench/pty_latency.py's measure).
- App proxy throughput: curl downloads ``--mib`` MiB from a small app in the workspace
  through ``/@bench/ws.main/ports/<port>/``, and directly from the app on loopback; and
  the same bytes over ``/stream`` with a websockets client (the stream plane alone). The
  server's and the agent's CPU time per MB through the proxy is printed beside it.
  ``--only proxy`` runs these downloads alone, without the browser.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pty_latency import remote, summary
from pty_stack import REPO, running_stack

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ECHO_OBSERVER = """() => {
  window.keyTimes = []; window.echoTimes = [];
  const rows = document.querySelector('.xterm-rows');
  let seen = 0;
  document.addEventListener('keydown', () => window.keyTimes.push(performance.now()), true);
  new MutationObserver(() => {
    const n = (rows.innerText.match(/k/g) || []).length;
    while (seen < n) { seen++; window.echoTimes.push(performance.now()); }
  }).observe(rows, {childList: true, subtree: true, characterData: true});
}"""


async def sign_in(page: Any, url: str, token: str) -> None:
    await page.goto(f"{url}/login")
    await page.click("details summary")
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/")


async def dashboard_loads(page: Any, url: str, loads: int) -> list[dict[str, float]]:
    out = []
    for _ in range(loads):
        await page.goto(f"{url}/")
        await page.wait_for_function(
            "() => performance.getEntriesByName('wsagent:dashboard-rendered').length"
        )
        out.append(
            await page.evaluate(
                """() => { const n = performance.getEntriesByType('navigation')[0];
                return {response: n.responseEnd, dcl: n.domContentLoadedEventEnd,
                rendered: performance.getEntriesByName('wsagent:dashboard-rendered')[0].startTime};
                }"""
            )
        )
    return out


async def asset_bytes(browser: Any, url: str, token: str, path: str) -> dict[str, int]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await sign_in(page, url, token)
        await page.goto(f"{url}{path}")
        await page.wait_for_load_state("load")
        entries = await page.evaluate(
            """() => performance.getEntriesByType('resource').map(e => ({name: e.name,
            type: e.initiatorType, encoded: e.encodedBodySize, decoded: e.decodedBodySize}))"""
        )
    finally:
        await context.close()
    totals = {"js": 0, "js_decoded": 0, "css": 0}
    for entry in entries:
        if entry["name"].endswith(".js"):
            totals["js"] += entry["encoded"]
            totals["js_decoded"] += entry["decoded"]
        elif entry["name"].endswith(".css"):
            totals["css"] += entry["encoded"]
    return totals


# Before the page's scripts: note when each WebSocket message reaches the page.
WS_SPY = """(() => { window.messageTimes = []; window.sendTimes = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native { constructor(...args) { super(...args);
    this.addEventListener('message', () => window.messageTimes.push(performance.now())); }
    send(data) { window.sendTimes.push(performance.now()); super.send(data); } };
})();"""


async def browser_keys(
    page: Any, url: str, agent_path: str, keys: int
) -> tuple[list[float], list[float]]:
    """Per key: keydown -> echo on screen, and the page's send -> echo message."""
    await page.add_init_script(WS_SPY)
    await page.goto(f"{url}{agent_path}/terminal?command=cat%20%3E/dev/null")
    await page.wait_for_selector('#term-state[data-state="connected"]', state="attached")
    await page.click("#term")
    await page.evaluate(ECHO_OBSERVER)
    for i in range(keys):
        await page.keyboard.press("k")
        await page.wait_for_function(f"() => window.echoTimes.length >= {i + 1}")
        if i % 64 == 63:
            await page.keyboard.press("Enter")
    key_times, echo_times, message_times, send_times = await page.evaluate(
        "() => [window.keyTimes, window.echoTimes, window.messageTimes, window.sendTimes]"
    )
    # Only the 'k' keydowns, in order (an Enter keydown follows every 64th).
    ks = [t for i, t in enumerate(key_times) if i % 65 != 64]
    painted = [(echo - key) / 1000 for key, echo in zip(ks, echo_times, strict=False)][20:]
    received = []
    for key in ks[20:]:
        sent = [t for t in send_times if t >= key]
        if sent:
            later = [m for m in message_times if m >= sent[0]]
            if later:
                received.append((later[0] - sent[0]) / 1000)
    return painted, received


PAGE_LOOP = """async ([url, keys]) => {
  const ws = new WebSocket(url); ws.binaryType = 'arraybuffer';
  await new Promise((ok) => { ws.onopen = ok; });
  const enc = new TextEncoder(); const dec = new TextDecoder(); const out = [];
  // Wait for the shell-less cat to be ready: the first echo.
  for (let i = 0; i < keys + 20; i++) {
    const t = performance.now();
    await new Promise((ok) => {
      let got = '';
      ws.onmessage = (e) => { got += dec.decode(e.data); if (got.includes('k')) ok(); };
      ws.send(enc.encode(JSON.stringify({data: 'k'})));
    });
    if (i >= 20) out.push((performance.now() - t) / 1000);
  }
  ws.close(); return out;
}"""


async def page_loop(page: Any, stack: Any, keys: int) -> list[float]:
    """The same path from page script alone: no key events, no xterm.js, one key in
    flight, timed from ``send`` to the echo message."""
    url = stack.pty_url("cat >/dev/null")
    return list(await page.evaluate(PAGE_LOOP, [url, keys]))


async def curl_mib_per_s(url: str, headers: dict[str, str]) -> tuple[float, int]:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    proc = await asyncio.create_subprocess_exec(*args, url, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    size, seconds = out.decode().split()
    return int(size) / float(seconds) / (1 << 20), int(size)


async def raw_stream_mib_per_s(stack: Any, port: int, size: int) -> float:
    """The same download over ``/stream?target=tcp:<port>`` with a websockets client: the
    stream plane alone, without the proxy's HTTP handling."""
    import time

    from websockets.asyncio.client import connect

    url = stack.url.replace("http://", "ws://")
    url += f"/api/v2/workspaceagents/{stack.agent_id}/stream?target=tcp:{port}"
    async with connect(url, additional_headers=stack.headers, compression=None) as ws:
        started = time.perf_counter()
        await ws.send(f"GET /bytes?n={size}&length=1 HTTP/1.0\r\nHost: app\r\n\r\n".encode())
        total = 0
        async for message in ws:
            if not message:
                break
            total += len(message)
        return total / (time.perf_counter() - started) / (1 << 20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Downloads:
    proxied: list[float]
    direct: list[float]
    raw: list[float]
    cpu_per_mb: dict[str, float]  # through the proxy: ms of CPU per MB, per process


async def download_rounds(stack: Any, app_port: int, args: argparse.Namespace) -> Downloads:
    n = args.mib << 20
    runs = Downloads([], [], [], {})
    pids = {"server": stack.server.pid, "agent": stack.agent.pid}
    spent = dict.fromkeys(pids, 0.0)
    # Alternated, several rounds: one download lasts about a second, and the machine is
    # shared, so single runs swing widely.
    for _ in range(args.rounds):
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        rate, size = await curl_mib_per_s(
            f"{stack.url}/@bench/ws.main/ports/{app_port}/bytes?n={n}&length=1", stack.headers
        )
        for name, pid in pids.items():
            spent[name] += cpu_seconds(pid) - before[name]
        runs.proxied.append(rate)
        rate, direct_size = await curl_mib_per_s(
            f"http://127.0.0.1:{app_port}/bytes?n={n}&length=1", {}
        )
        runs.direct.append(rate)
        assert size == n and direct_size == n, (size, direct_size, n)
        runs.raw.append(await raw_stream_mib_per_s(stack, app_port, n))
    mb = args.rounds * n / 1e6
    runs.cpu_per_mb = {name: seconds * 1000 / mb for name, seconds in spent.items()}
    return runs


def print_downloads(args: argparse.Namespace, runs: Downloads) -> None:
    proxied = statistics.median(runs.proxied)
    direct = statistics.median(runs.direct)
    raw = statistics.median(runs.raw)
    ratio = proxied / direct

    def spread(values: list[float]) -> str:
        return f"{min(values):.0f}-{max(values):.0f}"

    print(f"download of {args.mib} MiB, median of {args.rounds} alternated rounds (range):")
    print(f"  through the app proxy (curl): {proxied:7.1f} MiB/s ({spread(runs.proxied)})")
    cpu = ", ".join(f"{name} {ms:.2f} ms" for name, ms in runs.cpu_per_mb.items())
    print(f"    CPU per MB through the proxy: {cpu}")
    print(f"  direct on loopback (curl):    {direct:7.1f} MiB/s ({spread(runs.direct)})")
    print(f"  the stream plane alone (/stream, websockets client): {raw:7.1f} MiB/s")
    print(f"  proxy / direct: {ratio:.0%} (goal >= 50 %) {'ok' if ratio >= 0.5 else 'MISSED'}")


async def proxy_only(args: argparse.Namespace) -> None:
    """``--only proxy``: the downloads alone, no browser."""
    app = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.web.echo_app", cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert app.stdout is not None
    app_port = int((await app.stdout.readline()).decode())
    try:
        async with running_stack() as stack:
            downloads = await download_rounds(stack, app_port, args)
    finally:
        app.terminate()
        await app.wait()
    print_downloads(args, downloads)


async def main(args: argparse.Namespace) -> None:
    if args.only == "proxy":
        await proxy_only(args)
        return
    from playwright.async_api import async_playwright

    app = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.web.echo_app", cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert app.stdout is not None
    app_port = int((await app.stdout.readline()).decode())
    try:
        async with running_stack() as stack, async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
            )
            context = await browser.new_context(viewport={"width": 1100, "height": 700})
            page = await context.new_page()
            await sign_in(page, stack.url, stack.user_token)
            loads = await dashboard_loads(page, stack.url, args.loads)
            dash = await asset_bytes(browser, stack.url, stack.user_token, "/")
            term = await asset_bytes(
                browser, stack.url, stack.user_token, "/@bench/ws.main/terminal"
            )
            painted, received = await browser_keys(page, stack.url, "/@bench/ws.main", args.keys)
            cli = await remote(stack.pty_url("cat >/dev/null"), stack.headers, args.keys)
            looped = await page_loop(page, stack, args.keys)
            await browser.close()
            downloads = await download_rounds(stack, app_port, args)
    finally:
        app.terminate()
        await app.wait()

    first, rest = loads[0], loads[1:] or loads
    print(f"dashboard first render ({len(loads)} loads; the first with a cold cache):")
    print(
        f"  cold: response {first['response']:.1f} ms, DOMContentLoaded {first['dcl']:.1f} ms,"
        f" rendered {first['rendered']:.1f} ms"
    )
    med = {k: statistics.median(x[k] for x in rest) for k in first}
    print(
        f"  warm median: response {med['response']:.1f} ms, DOMContentLoaded"
        f" {med['dcl']:.1f} ms, rendered {med['rendered']:.1f} ms"
    )
    print(
        f"bytes over the wire (gzip): dashboard JS {dash['js']} B + CSS {dash['css']} B;"
        f" terminal JS {term['js']} B ({term['js_decoded']} B unzipped) + CSS {term['css']} B"
    )
    (bp50, bp99), (cp50, cp99) = summary(painted), summary(cli)
    mp50, mp99 = summary(received)
    lp50, lp99 = summary(looped)
    print(f"keystroke echo, {len(painted)} keys in the browser, {len(cli)} over the CLI path:")
    print(f"  browser terminal (keydown -> on screen): p50 {bp50:6.2f} ms  p99 {bp99:6.2f} ms")
    print(f"  browser, WebSocket send -> echo message:  p50 {mp50:6.2f} ms  p99 {mp99:6.2f} ms")
    print(f"  page script on /pty, no key events:      p50 {lp50:6.2f} ms  p99 {lp99:6.2f} ms")
    print(f"  CLI client on /pty (send -> echo):       p50 {cp50:6.2f} ms  p99 {cp99:6.2f} ms")
    print_downloads(args, downloads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=("all", "proxy"), default="all")
    asyncio.run(main(parser.parse_args()))
