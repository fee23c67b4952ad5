"""What the content policy costs a ``run_agent`` delivery: the handler's screen (every
registered pattern class, the default ``log`` mode) over the text bound for the agent, in
microseconds of CPU per delivery, against the same delivery's whole ingest cost
(``ingest.py``'s CPU time per request). In-process, one core; a few seconds."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from clawdbot_webhooks_hookspecs.untrusted import fold_for_matching
from harness import save

from clawdbot_webhooks.config.load import load_settings

#: Texts as a ``run_agent`` template renders them: the ingest benchmark's two variables,
#: its whole payload, and larger bodies of prose.
PROSE = "Please look at the failing build on main and tell me what changed since yesterday. "
TEXTS = {
    "two variables (20 B)": "opened: Make it fast",
    "a JSON payload (700 B)": json.dumps(
        {"action": "opened", "pull_request": {"title": "Make it fast", "body": PROSE * 7}}
    ),
    "prose, 4 KB": (PROSE * 60)[:4096],
    "prose, 64 KB": (PROSE * 800)[:65536],
}


def screen_for(mode: str) -> Any:
    handler = {
        "id": "a",
        "action": "run_agent",
        "agentId": "main",
        "template": "{{ text }}",
        "secret": "bench-secret",
    }
    raw = {"webhooks": {"incoming": {"contentPolicy": {"mode": mode}}, "handlers": [handler]}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(raw))
        settings, _ = load_settings(str(path))
    return settings.handlers[0].screen


def per_call(fn: Any, text: str, seconds: float) -> float:
    """CPU microseconds per call, over about ``seconds``."""
    n, spent = 0, 0.0
    started = time.process_time()
    while spent < seconds:
        for _ in range(50):
            fn(text)
        n += 50
        spent = time.process_time() - started
    return 1e6 * spent / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="per text")
    args = parser.parse_args()
    logging.getLogger("clawdbot_webhooks.content_policy").setLevel(logging.ERROR)
    policy = screen_for("log")
    patterns = sum(len(p) for p in policy.patterns.values())
    print(f"content policy: mode log, {len(policy.patterns)} classes, {patterns} expressions")
    results = {}
    for name, text in TEXTS.items():
        folding = per_call(fold_for_matching, text, args.seconds / 2)
        results[name] = {"screen_us": per_call(policy.screen, text, args.seconds)}
        results[name]["fold_us"] = folding
        print(
            f"  {name:28s} {results[name]['screen_us']:9.1f} µs per delivery, of which "
            f"{folding:.1f} µs folding the text"
        )
    save("content_policy", results)


if __name__ == "__main__":
    main()
