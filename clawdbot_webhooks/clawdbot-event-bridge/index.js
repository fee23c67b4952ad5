// clawdbot-event-bridge: a Clawdbot plugin (runs inside the Clawdbot gateway) that forwards
// the hooks only in-process plugins can see to clawdbot-webhooks' event ingress
// (POST /events/ingest with a bearer token), where they become events on its bus.
//
// Each hook call is POSTed once as {id, hook, timestamp, event, context}; `id` is fixed for
// the call, so a retried POST is recognised by the receiver. Failures are logged, retried a
// few times with backoff, and never block Clawdbot (hooks here are fire-and-forget).
import { randomUUID } from "node:crypto";

export const HOOKS = ["message_received", "message_sent", "session_start", "session_end", "agent_end"];

// agent_end carries the whole conversation; only its last assistant reply is forwarded.
function lastAssistantText(messages) {
  if (!Array.isArray(messages)) return "";
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (!m || m.role !== "assistant") continue;
    if (typeof m.content === "string") return m.content;
    if (Array.isArray(m.content)) {
      return m.content
        .filter((p) => p && p.type === "text" && typeof p.text === "string")
        .map((p) => p.text)
        .join("");
    }
  }
  return "";
}

function summarize(hook, event) {
  if (hook !== "agent_end") return event;
  const { messages, ...rest } = event ?? {};
  return { ...rest, text: lastAssistantText(messages), messageCount: messages?.length ?? 0 };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export default function register(api) {
  const cfg = api.pluginConfig ?? {};
  const log = api.logger ?? console;
  if (!cfg.url || !cfg.token) {
    log.warn?.("clawdbot-event-bridge: url and token are required; not forwarding anything");
    return;
  }
  const timeoutMs = cfg.timeoutMs ?? 5000;
  const retries = cfg.retries ?? 3;
  const wanted = new Set(Array.isArray(cfg.events) && cfg.events.length ? cfg.events : HOOKS);

  async function post(body) {
    const text = JSON.stringify(body);
    for (let attempt = 0; attempt <= retries; attempt++) {
      try {
        const res = await fetch(cfg.url, {
          method: "POST",
          headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.token}` },
          body: text,
          signal: AbortSignal.timeout(timeoutMs),
        });
        if (res.ok) return;
        // 4xx (bad token, bad body) will not heal by trying again.
        if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) {
          log.warn?.(`clawdbot-event-bridge: ${body.hook} refused (${res.status}): ${await res.text()}`);
          return;
        }
      } catch (err) {
        if (attempt === retries) {
          log.warn?.(`clawdbot-event-bridge: ${body.hook} not delivered: ${err}`);
          return;
        }
      }
      await sleep(Math.min(200 * 2 ** attempt, 5000) * (0.5 + Math.random() / 2));
    }
    log.warn?.(`clawdbot-event-bridge: ${body.hook} not delivered after ${retries + 1} attempts`);
  }

  for (const hook of HOOKS) {
    if (!wanted.has(hook)) continue;
    api.on(hook, (event, ctx) => {
      const body = {
        id: randomUUID(),
        hook,
        timestamp: Date.now(),
        event: summarize(hook, event),
        context: ctx ?? {},
      };
      // Not awaited: a slow receiver must never hold up Clawdbot's message handling.
      void post(body);
    });
  }
  log.info?.(`clawdbot-event-bridge: forwarding ${[...wanted].join(", ")} to ${cfg.url}`);
}
