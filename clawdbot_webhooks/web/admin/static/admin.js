// The dashboard's shared script: API calls, Replay buttons and the throughput chart
// (deliveries.js runs the overview's list). The admin token is never seen here: requests
// carry the HttpOnly session cookie plus the anti-CSRF header.
"use strict";

const CSRF = document.body.dataset.csrf;

// One admin API call; resolves to the JSON body, throws with the API's error message.
async function api(path, options = {}) {
  const init = { credentials: "same-origin", ...options };
  if (init.method && init.method !== "GET") {
    init.headers = { "X-Requested-With": CSRF, ...(init.headers || {}) };
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// Replay buttons anywhere on a page: the list (deliveries.js) redraws itself from the API,
// other pages reload to show the delivery pending again.
async function replay(button) {
  button.disabled = true;
  button.textContent = "Replaying…";
  try {
    await api(button.dataset.replay, { method: "POST" });
    button.textContent = "Queued ✓";
    button.classList.add("done");
    button.title = "Pending again; the server delivers it now.";
    button.dispatchEvent(new CustomEvent("replayed", { bubbles: true }));
    if (!button.closest("#delivery-list")) setTimeout(() => window.location.reload(), 2000);
  } catch (err) {
    button.textContent = "Failed";
    button.classList.add("failed");
    button.title = String(err.message || err);
    button.disabled = false;
  }
}

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

async function drawChart(svg) {
  const data = await api("/admin/api/stats/throughput?window=3600&bucket=60");
  const n = Math.max(1, Math.round((data.end - data.start) / data.bucket));
  const slots = Array.from({ length: n }, () => ({ done: 0, dead: 0, other: 0 }));
  for (const row of data.items) {
    const i = Math.min(n - 1, Math.max(0, Math.floor((row.at - data.start) / data.bucket)));
    const key = row.status === "done" ? "done" : row.status === "dead" ? "dead" : "other";
    slots[i][key] += row.count;
  }
  const W = 720, H = 140, top = 10, bottom = 18, left = 30;
  const max = Math.max(1, ...slots.map((s) => s.done + s.dead + s.other));
  const scale = (H - top - bottom) / max;
  const bw = (W - left) / n;
  svg.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    const y = H - bottom - f * max * scale;
    svg.append(el("line", { x1: left, x2: W, y1: y, y2: y, class: "grid-line" }));
    svg.append(el("text", { x: 2, y: y + 3, class: "axis" }, String(Math.round(f * max))));
  }
  slots.forEach((s, i) => {
    let y = H - bottom;
    for (const key of ["done", "other", "dead"]) {
      if (!s[key]) continue;
      const h = s[key] * scale;
      y -= h;
      const rect = el("rect", { x: left + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, class: key });
      rect.append(el("title", {}, `${s[key]} ${key}`));
      svg.append(rect);
    }
  });
  svg.append(el("text", { x: left, y: H - 4, class: "axis" }, "-60 min"));
  svg.append(el("text", { x: W - 30, y: H - 4, class: "axis" }, "now"));
}

// UTC, as the server-rendered pages show times.
function when(epoch) {
  if (!epoch) return "-";
  return new Date(epoch * 1000).toISOString().slice(0, 19).replace("T", " ");
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-replay]");
  if (button && !button.disabled) replay(button);
});

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("chart");
  if (chart) drawChart(chart).catch(() => {});
});
