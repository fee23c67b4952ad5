"""A small OpenAI-compatible chat-completions server that streams (SSE), for a real Clawdbot.

Clawdbot always calls its model with ``stream: true``. The reply is derived from the prompt
(``STUB[<n>] <last user text>``, ``n`` = the number of user turns in the conversation; of a
prompt in the untrusted-content boundary, the text inside it), and
every request's messages are recorded, so tests can check conversation history and count how
often each prompt was run. It runs in its own thread with its own event loop, so one instance
serves a whole test session whatever loop each test uses.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from clawdbot_webhooks_hookspecs import BOUNDARY_END, BOUNDARY_START


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def content_of(prompt: str) -> str:
    """Of a prompt wrapped in the untrusted-content boundary, the content inside it (without
    the source lines); any other prompt as it is."""
    start = prompt.find(BOUNDARY_START)
    end = prompt.rfind(BOUNDARY_END)
    if start < 0 or end < start:
        return prompt
    inside = prompt[start + len(BOUNDARY_START) : end].strip("\n")
    _, sep, content = inside.partition("\n---\n")
    return content if sep else inside


def stub_reply(messages: list[dict[str, Any]]) -> str:
    users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    last = content_of(users[-1]).strip() if users else ""
    return f"STUB[{len(users)}] {last}"


@dataclass
class ModelStub:
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: seconds to wait before streaming (to keep runs in flight)
    delay: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what tests look at

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def system_prompts(self) -> list[str]:
        """The system message of every completed call, in order."""
        return [
            "\n".join(text_of(m.get("content")) for m in c["messages"] if m.get("role") == "system")
            for c in self.calls()
            if c["completed"]
        ]

    def prompts(self) -> list[str]:
        """The last user message of every completed call, in order."""
        return [c["prompt"] for c in self.calls() if c["completed"]]

    def runs_with(self, marker: str) -> int:
        return sum(1 for p in self.prompts() if marker in p)

    # -- the server

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages") or []
        users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        record: dict[str, Any] = {
            "at": time.time(),
            "model": body.get("model"),
            "stream": body.get("stream"),
            "messages": messages,
            "prompt": users[-1] if users else "",
            "completed": False,
        }
        with self._lock:
            self.requests.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = stub_reply(messages)
        model = body.get("model") or "stub"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def chunk(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        base = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        await chunk(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        )
        half = len(reply) // 2
        for part in (reply[:half], reply[half:]):
            await chunk(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}],
                }
            )
        await chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        words = sum(len(text_of(m.get("content")).split()) for m in messages)
        usage = {
            "prompt_tokens": words,
            "completion_tokens": len(reply.split()),
            "total_tokens": words + len(reply.split()),
        }
        await chunk({**base, "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        with self._lock:
            record["completed"] = True
            record["reply"] = reply
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}
        )

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._complete)
            app.router.add_get("/v1/models", self._models)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="model-stub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("model stub did not start")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
