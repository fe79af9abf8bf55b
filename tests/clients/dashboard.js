// Drives headless Chromium over the DevTools protocol through a list of steps, and prints
// what each step read as JSON (one array). Used by tests/dashboard.rs.
//
// usage: node dashboard.js CHROMIUM PROFILE_DIR STEPS_JSON
// steps: {"goto": url} | {"fill": [selector, value]} | {"click": selector} (waits for the
// navigation it starts) | {"text": selector} | {"attr": [selector, name]} |
// {"screenshot": path}
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const WebSocket = require("ws");

const [chromium, profile, stepsJson] = process.argv.slice(2);
const steps = JSON.parse(stepsJson);

function fail(msg) {
  console.error(msg);
  process.exit(1);
}

const browser = spawn(chromium, [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`,
  "--window-size=1200,1400", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });
const timer = setTimeout(() => { browser.kill("SIGKILL"); fail("timed out"); }, 60000);

let stderr = "";
browser.stderr.on("data", async (chunk) => {
  stderr += chunk.toString();
  const m = stderr.match(/DevTools listening on (ws:\/\/[^\s]+)/);
  if (!m || browser.started) return;
  browser.started = true;
  const port = new URL(m[1]).port;
  try {
    const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const page = list.find((t) => t.type === "page");
    await run(page.webSocketDebuggerUrl);
  } catch (e) {
    browser.kill("SIGKILL");
    fail(`dashboard driver: ${e.stack || e}`);
  }
});

async function run(url) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await new Promise((ok, err) => { ws.once("open", ok); ws.once("error", err); });
  let id = 0;
  const pending = new Map();
  const waiters = [];
  ws.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { ok, err } = pending.get(msg.id);
      pending.delete(msg.id);
      msg.error ? err(new Error(JSON.stringify(msg.error))) : ok(msg.result);
    } else if (msg.method === "Page.loadEventFired") {
      while (waiters.length) waiters.shift()();
    }
  });
  const send = (method, params = {}) => new Promise((ok, err) => {
    const n = ++id;
    pending.set(n, { ok, err });
    ws.send(JSON.stringify({ id: n, method, params }));
  });
  const loaded = () => new Promise((ok) => waiters.push(ok));
  const evaluate = async (expression) => {
    const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`${expression}: ${JSON.stringify(r.exceptionDetails)}`);
    return r.result.value;
  };
  await send("Page.enable");
  const out = [];
  for (const step of steps) {
    if (step.goto) {
      const l = loaded();
      await send("Page.navigate", { url: step.goto });
      await l;
      out.push(await evaluate("document.location.href"));
    } else if (step.fill) {
      const [sel, value] = step.fill;
      out.push(await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(sel)}); if (!e) return null; e.value = ${JSON.stringify(value)}; return true; })()`));
    } else if (step.click) {
      const l = loaded();
      const found = await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(step.click)}); if (!e) return false; e.click(); return true; })()`);
      if (found) await l;
      out.push(found);
    } else if (step.text) {
      out.push(await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(step.text)}); return e ? e.textContent : null; })()`));
    } else if (step.attr) {
      const [sel, name] = step.attr;
      out.push(await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(sel)}); return e ? e.getAttribute(${JSON.stringify(name)}) : null; })()`));
    } else if (step.screenshot) {
      const shot = await send("Page.captureScreenshot", { format: "png", captureBeyondViewport: true });
      fs.writeFileSync(step.screenshot, Buffer.from(shot.data, "base64"));
      out.push(step.screenshot);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
  console.log(JSON.stringify(out));
  ws.close();
  clearTimeout(timer);
  browser.kill("SIGKILL");
  process.exit(0);
}
