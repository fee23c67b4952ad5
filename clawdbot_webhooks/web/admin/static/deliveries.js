// The overview's delivery list: the filter form (its values come from the URL, so a filtered
// view can be linked and survives a reload), "Load older" pages, live updates that poll the
// first page, and the bulk replay of the dead letters a filter shows. Uses admin.js.
"use strict";

// Rows per page: 50, or the URL's ``limit`` (1-500).
const PAGE = (() => {
  const asked = Number(new URLSearchParams(window.location.search).get("limit"));
  return Number.isInteger(asked) && asked >= 1 && asked <= 500 ? asked : 50;
})();
const POLL_MS = 4000;
const BULK_PAGE = 500;
const BULK_MAX = 10000;

const list = {
  filters: {},
  items: [], // shown, newest first
  next: null, // where "Load older" continues: {incoming, outgoing} cursors or null
  live: true,
  timer: null,
  busy: false,
};

function readFilters(form) {
  const data = new FormData(form);
  const f = {};
  for (const key of ["kind", "status", "target", "since", "q"]) {
    const value = String(data.get(key) || "").trim();
    if (value) f[key] = value;
  }
  // A hook or subscription names its direction.
  if (f.target) {
    const [type, ...rest] = f.target.split(":");
    f.kind = type === "subscription" ? "outgoing" : "incoming";
    f[type === "subscription" ? "subscription" : "hook"] = rest.join(":");
  }
  return f;
}

function kinds() {
  return list.filters.kind ? [list.filters.kind] : ["incoming", "outgoing"];
}

function query(kind, extra) {
  const f = list.filters;
  const params = new URLSearchParams();
  for (const key of ["status", "since", "q"]) if (f[key]) params.set(key, f[key]);
  if (kind === "incoming" && f.hook) params.set("hook", f.hook);
  if (kind === "outgoing" && f.subscription) params.set("subscription", f.subscription);
  for (const [k, v] of Object.entries(extra)) if (v) params.set(k, v);
  return `/admin/api/${kind}?${params}`;
}

// Newest first, as the API orders: by creation time, then id.
function newer(a, b) {
  if (a.created_at !== b.created_at) return a.created_at > b.created_at;
  return a.id > b.id;
}

function sortNewestFirst(items) {
  return items.sort((a, b) => (newer(a, b) ? -1 : newer(b, a) ? 1 : 0));
}

// A page cursor for the position just after ``item``. Both directions list in the same order
// and the API's cursor is (created_at, id), so one position continues both lists.
function cursorAfter(item) {
  const bytes = new TextEncoder().encode(JSON.stringify([item.created_at, item.id]));
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// One page of both directions merged: ``PAGE`` items and where the next page starts.
async function fetchPage(cursors) {
  const wanted = kinds().filter((k) => !cursors || cursors[k] !== undefined);
  const pages = await Promise.all(
    wanted.map((k) => api(query(k, { limit: PAGE, cursor: cursors ? cursors[k] : "" })))
  );
  const merged = sortNewestFirst(pages.flatMap((p) => p.items));
  const items = merged.slice(0, PAGE);
  let next = null;
  if (wanted.length === 1) {
    if (pages[0].next_cursor) next = { [wanted[0]]: pages[0].next_cursor };
  } else if (merged.length > PAGE || pages.some((p) => p.next_cursor)) {
    const at = cursorAfter(items[items.length - 1]);
    next = Object.fromEntries(wanted.map((k) => [k, at]));
  }
  return { items, next, full: merged.length >= PAGE };
}

function text(tag, value, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = value;
  return node;
}

function link(href, value, className) {
  const a = text("a", value, className);
  a.href = href;
  return a;
}

function sessionHref(key) {
  return `/admin/session?key=${encodeURIComponent(key)}`;
}

function row(item) {
  const tr = document.createElement("tr");
  tr.dataset.row = item.id;
  tr.dataset.kind = item.kind;
  tr.dataset.status = item.status;
  const id = document.createElement("td");
  id.append(link(`/admin/deliveries/${encodeURIComponent(item.id)}`, item.id, "mono"));
  if (item.event_type) id.append(text("div", item.event_type, "muted small"));
  const session = document.createElement("td");
  if (item.session) session.append(link(sessionHref(item.session), item.session, "mono small"));
  else session.textContent = "-";
  const status = document.createElement("td");
  status.append(text("span", item.status, `badge status-${item.status}`));
  // An error the delivery got past (it is done now) is history, not an alarm.
  const errorClass = item.status === "done" || item.status === "dropped" ? "muted" : "error-text";
  const actions = document.createElement("td");
  actions.className = "actions";
  if (item.status === "dead") {
    const button = text("button", "Replay", "replay");
    button.type = "button";
    button.dataset.replay = `/admin/api/dead-letters/${encodeURIComponent(item.id)}/replay`;
    button.dataset.id = item.id;
    button.setAttribute("aria-label", `Replay ${item.id}`);
    actions.append(button);
  }
  tr.append(
    id,
    text("td", item.kind),
    text("td", item.target),
    session,
    status,
    text("td", String(item.attempts)),
    text("td", when(item.created_at), "nowrap"),
    text("td", item.last_error || "", `error-cell ${errorClass}`),
    actions
  );
  return tr;
}

// What a row shows, to redraw only the rows that changed.
function signature(item) {
  return [item.status, item.attempts, item.last_error, item.session].join("\u0000");
}

function render(highlight = new Set()) {
  const body = document.querySelector("#delivery-list tbody");
  const old = new Map([...body.children].map((tr) => [tr.dataset.row, tr]));
  const focused = document.activeElement;
  const rows = list.items.map((item) => {
    const tr = old.get(item.id);
    if (tr && tr.dataset.sig === signature(item)) return tr;
    const fresh = row(item);
    fresh.dataset.sig = signature(item);
    if (highlight.has(item.id)) fresh.classList.add("fresh");
    if (!tr || !tr.contains(focused)) return fresh;
    // The cell the user is on stays (its button keeps the focus); the others are redrawn,
    // and the row again once the focus has moved on.
    [...tr.children].forEach((cell, i) => {
      if (!cell.contains(focused)) cell.replaceWith(fresh.children[i].cloneNode(true));
    });
    Object.assign(tr.dataset, { status: item.status, sig: "" });
    return tr;
  });
  // Moving rows that are already in place would drop the focus: only insert what moved.
  let cursor = body.firstElementChild;
  for (const tr of rows) {
    if (tr === cursor) {
      cursor = cursor.nextElementSibling;
      continue;
    }
    body.insertBefore(tr, cursor);
  }
  while (cursor) {
    const gone = cursor;
    cursor = cursor.nextElementSibling;
    gone.remove();
  }
  document.getElementById("list-empty").hidden = list.items.length > 0;
  document.getElementById("load-more").hidden = !list.next;
  const n = list.items.length;
  document.getElementById("list-count").textContent = n
    ? `${n} shown${list.next ? "; older ones on the next page" : ""}`
    : "";
}

function setLive(state, message) {
  const label = document.getElementById("live-state");
  label.className = `live-state ${state}`;
  label.textContent = message;
}

async function loadFirst() {
  const page = await fetchPage(null);
  list.items = page.items;
  list.next = page.next;
  render();
}

async function loadMore() {
  if (!list.next) return;
  const button = document.getElementById("load-more");
  button.disabled = true;
  list.busy = true; // no live update in between: it could start the list over
  try {
    const page = await fetchPage(list.next);
    const seen = new Set(list.items.map((i) => i.id));
    list.items = list.items.concat(page.items.filter((i) => !seen.has(i.id)));
    list.next = page.next;
    render();
  } finally {
    button.disabled = false;
    list.busy = false;
  }
}

// The first page again: new deliveries go on top, changed ones are redrawn, and a row that
// no longer matches the filter (a replayed dead letter under "dead") leaves. Rows further
// down ("Load older") stay as they were.
async function poll() {
  const before = list.items.map((i) => i.id + signature(i)).join("\n");
  const page = await fetchPage(null);
  const fresh = new Map(page.items.map((i) => [i.id, i]));
  const oldest = page.items[page.items.length - 1];
  const covered = (item) => !page.full || (oldest && !newer(oldest, item));
  const top = list.items[0];
  const added = page.items.filter((i) => !list.items.some((s) => s.id === i.id));
  if (page.full && top && oldest && newer(oldest, top)) {
    // More arrived than a page holds: start over from the newest.
    list.items = page.items;
    list.next = page.next;
  } else {
    const kept = list.items
      .filter((i) => fresh.has(i.id) || !covered(i))
      .map((i) => fresh.get(i.id) || i);
    list.items = sortNewestFirst(kept.concat(added));
    if (!list.items.length) list.next = page.next;
  }
  render(new Set(added.map((i) => i.id)));
  return list.items.map((i) => i.id + signature(i)).join("\n") !== before;
}

async function tick() {
  if (!list.live || list.busy || document.hidden) return;
  list.busy = true;
  try {
    // Something happened: the health tables and the chart follow.
    if (await poll()) refreshOverview();
    setLive("on", `Live · updated ${when(Date.now() / 1000).slice(11)} UTC`);
  } catch (err) {
    setLive("error", `Update failed (${err.message}); retrying`);
  } finally {
    list.busy = false;
  }
}

function toggleLive() {
  const button = document.getElementById("live-toggle");
  list.live = !list.live;
  button.setAttribute("aria-pressed", String(!list.live));
  button.textContent = list.live ? "Pause" : "Resume";
  if (list.live) {
    setLive("on", "Live");
    tick();
  } else {
    setLive("paused", "Paused: the list stays as it is");
  }
}

// The health tables and the dead-letter count as the server renders them now (one renderer
// for both): swapped in unless the user is on a link inside them.
async function refreshHealth() {
  const response = await fetch("/admin/", { credentials: "same-origin" });
  if (!response.ok || !response.url.endsWith("/admin/")) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ["health", "dead-link"]) {
    const now = document.getElementById(id);
    const fresh = page.getElementById(id);
    if (now && fresh && !now.contains(document.activeElement)) {
      fresh.className = now.className; // the chip's "active" belongs to this page's filter
      now.replaceWith(document.adoptNode(fresh));
    }
  }
}

function refreshOverview() {
  const chart = document.getElementById("chart");
  if (chart) drawChart(chart).catch(() => {});
  refreshHealth().catch(() => {});
}

// Every id the filter shows (both directions, all pages), for the bulk replay.
async function filteredIds() {
  const ids = [];
  for (const kind of kinds()) {
    let cursor = "";
    do {
      const page = await api(query(kind, { limit: BULK_PAGE, cursor }));
      ids.push(...page.items.map((i) => i.id));
      cursor = page.next_cursor;
    } while (cursor && ids.length < BULK_MAX);
  }
  return ids.slice(0, BULK_MAX);
}

async function bulkReplay() {
  const button = document.getElementById("bulk-replay");
  const result = document.getElementById("bulk-result");
  const dialog = document.getElementById("bulk-dialog");
  button.disabled = true;
  result.textContent = "Counting…";
  let ids;
  try {
    ids = await filteredIds();
  } catch (err) {
    result.textContent = `Could not list them: ${err.message}`;
    button.disabled = false;
    return;
  }
  button.disabled = false;
  if (!ids.length) {
    result.textContent = "No dead letters match this filter.";
    return;
  }
  result.textContent = "";
  const what = ids.length === 1 ? "1 dead letter" : `${ids.length} dead letters`;
  document.getElementById("bulk-question").textContent =
    `Replay ${what} matching this filter? Each runs or is sent again from its first attempt.`;
  document.getElementById("bulk-confirm").textContent = `Replay ${what}`;
  dialog.returnValue = "";
  dialog.showModal();
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "confirm") {
        result.textContent = "Nothing replayed.";
        button.focus();
        return;
      }
      let replayed = 0;
      try {
        for (let i = 0; i < ids.length; i += BULK_PAGE) {
          const body = await api("/admin/api/dead-letters/replay", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ ids: ids.slice(i, i + BULK_PAGE) }),
          });
          replayed += body.replayed.length;
        }
        result.textContent = `${replayed} of ${ids.length} queued again.`;
      } catch (err) {
        result.textContent = `${replayed} queued again, then: ${err.message}`;
      }
      button.focus();
      tick();
    },
    { once: true }
  );
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filters");
  if (!form) return;
  list.filters = readFilters(form);
  document.getElementById("bulk").hidden = list.filters.status !== "dead";
  document.getElementById("load-more").addEventListener("click", () => loadMore());
  document.getElementById("live-toggle").addEventListener("click", toggleLive);
  document.getElementById("bulk-replay").addEventListener("click", () => bulkReplay());
  document.getElementById("delivery-list").addEventListener("replayed", () => {
    setTimeout(tick, 500);
  });
  document.addEventListener("visibilitychange", () => tick());
  loadFirst()
    .then(() => setLive("on", `Live · updated ${when(Date.now() / 1000).slice(11)} UTC`))
    .catch((err) => setLive("error", `Could not load: ${err.message}`));
  list.timer = setInterval(tick, POLL_MS);
  setInterval(() => list.live && !document.hidden && refreshOverview(), 30000);
});
