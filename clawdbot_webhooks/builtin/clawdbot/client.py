"""A client for the Clawdbot Gateway WebSocket protocol, version 3.

One long-lived connection: the server speaks first (``connect.challenge``), the client answers
with ``connect`` and its token, and then requests (``{"type":"req","id",...}``) are matched to
answers (``{"type":"res","id",...}``) by id while events (``{"type":"event",...}``) flow to a
callback. ``agent`` answers twice under one id: ``accepted`` first, the run's result last.

The connection is kept up in the background: the gateway sends a ``tick`` event every
``policy.tickIntervalMs`` and WebSocket pings go out every ``heartbeat`` seconds, so a dead
peer is noticed; a lost connection is re-opened with exponential backoff and full jitter.
Requests made while disconnected wait up to ``offline_wait`` seconds for the connection and
then fail with a ``GatewayError`` — nothing is dropped silently. Requests that carry an
``idempotencyKey`` are sent again after a reconnect (Clawdbot deduplicates on the key, so a
repeat never starts a second run); other requests fail when the connection drops under them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import backoff
from clawdbot_webhooks_hookspecs import GatewayError

PROTOCOL_VERSION = 3
#: Clawdbot only admits client ids it knows; this one is meant for backend services.
CLIENT_ID = "gateway-client"
#: Error codes of answers that trying again cannot fix (a bad request stays bad).
FINAL_ERROR_CODES = frozenset({"INVALID_REQUEST"})
#: How long after a run's lifecycle end the final ``agent`` answer may still arrive before
#: it is fetched again (a run that finished while we were disconnected has no one to answer).
REFETCH_GRACE = 1.0

EventCallback = Callable[[str, Mapping[str, Any]], None]


class HandshakeRejected(GatewayError):
    """The gateway refused ``connect`` (wrong token, protocol mismatch): retrying cannot help
    until someone changes a configuration."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


class _ConnectionLost(Exception):
    """The socket closed while a request waited for its answer."""


class _Refetch(Exception):
    """The run finished but its final answer went to a connection that is gone."""


def connect_failure(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection failed, in the system's words: asyncio's own wording ("Connect call
    failed") hides the cause; errno has it."""
    errno = exc.os_error.errno
    return os.strerror(errno) if errno else str(exc.os_error)


@dataclass
class _Call:
    method: str
    expect_final: bool
    future: asyncio.Future[Any]
    run_id: str | None = None
    refetch: asyncio.TimerHandle | None = None


@dataclass
class ClientOptions:
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    offline_wait: float = 30.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    heartbeat: float | None = 15.0
    client_version: str = "0"
    scopes: tuple[str, ...] = ("operator.read", "operator.write")
    extra: dict[str, Any] = field(default_factory=dict)


def describe_error(error: Any) -> str:
    """The gateway's error object as one line (``code: message``)."""
    if isinstance(error, Mapping):
        message = str(error.get("message") or "error")
        code = error.get("code")
        return f"{message} ({code})" if code else message
    return str(error or "error")


def _is_final(error: Any) -> bool:
    if isinstance(error, Mapping):
        if error.get("retryable") is True:
            return False
        return error.get("code") in FINAL_ERROR_CODES
    return False


class GatewayClient:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        on_event: EventCallback | None = None,
        logger: logging.Logger | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self._on_event = on_event
        self.log = logger or logging.getLogger(__name__)
        self.opts = options or ClientOptions()
        self.hello: dict[str, Any] | None = None
        self.last_error: GatewayError | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._calls: dict[str, _Call] = {}
        self._finished_runs: dict[str, None] = {}  # insertion-ordered set, trimmed
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._tick_s = 30.0
        self.connections = 0  # how many handshakes succeeded (for probes and tests)

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._connected.is_set()

    async def start(self) -> None:
        """Connect once now, so a refused handshake is reported at start-up, then keep the
        connection up in the background. An unreachable gateway is not fatal: it may start
        after us, and requests wait for it (``offline_wait``)."""
        self._session = aiohttp.ClientSession()
        try:
            await self._open()
        except HandshakeRejected:
            await self._session.close()
            self._session = None
            raise
        except GatewayError as exc:
            self.log.warning("Clawdbot gateway not reachable yet (%s); will keep trying", exc)
        self._task = asyncio.create_task(self._maintain(), name="clawdbot-gateway")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
        self._lost(GatewayError("the gateway connection was closed", retry=True))
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self) -> dict[str, Any]:
        """One fresh handshake, then close: the hello payload, or a ``GatewayError`` saying
        exactly what failed."""
        async with aiohttp.ClientSession() as session:
            ws, hello = await self._handshake(session)
            await ws.close()
            return hello

    # ------------------------------------------------------------------ connection

    def _waits(self) -> Generator[float, Any, None]:
        waits = backoff.expo(base=2, factor=self.opts.reconnect_initial)
        next(waits)  # the generators start with a bare yield that primes them
        return waits

    async def _maintain(self) -> None:
        waits = self._waits()
        while not self._closing:
            ws = self._ws
            if ws is None or ws.closed:
                try:
                    await self._open()
                    waits = self._waits()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failed attempt, however odd the answer: retry
                    delay = backoff.full_jitter(min(next(waits), self.opts.reconnect_max))
                    self.log.warning(
                        "Clawdbot gateway connection failed (%s); retrying in %.2fs", exc, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                ws = self._ws
                assert ws is not None
            try:
                await self._read(ws)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("error while reading from the Clawdbot gateway")
            finally:
                if not ws.closed:
                    await ws.close()
                if self._ws is ws:
                    self._ws = None
                    self._connected.clear()
                    self._lost(_ConnectionLost())
            if not self._closing:
                self.log.warning(
                    "lost the Clawdbot gateway connection (close code %s); reconnecting",
                    ws.close_code,
                )

    async def _open(self) -> None:
        assert self._session is not None
        try:
            ws, hello = await self._handshake(self._session)
        except GatewayError as exc:
            self.last_error = exc
            raise
        self.hello = hello
        policy = hello.get("policy")
        tick_ms = policy.get("tickIntervalMs") if isinstance(policy, Mapping) else None
        self._tick_s = tick_ms / 1000 if isinstance(tick_ms, int | float) and tick_ms > 0 else 30.0
        self._ws = ws
        self.last_error = None
        self.connections += 1
        self._connected.set()
        self.log.info("connected to the Clawdbot gateway at %s", self.url)

    async def _handshake(
        self, session: aiohttp.ClientSession
    ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
        timeout = self.opts.connect_timeout
        try:
            # Bounded as a whole: a gateway that takes the connection but never answers the
            # upgrade would otherwise hold it for the session's default five minutes.
            ws = await asyncio.wait_for(
                session.ws_connect(
                    self.url,
                    heartbeat=self.opts.heartbeat,
                    timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                    max_msg_size=64 * 1024 * 1024,
                ),
                timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise GatewayError(
                f"{self.url} did not accept a WebSocket connection (HTTP {exc.status})"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise GatewayError(f"cannot connect to {self.url}: {connect_failure(exc)}") from exc
        except TimeoutError as exc:  # before OSError, of which it is one
            raise GatewayError(f"cannot connect to {self.url}: timed out after {timeout}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(f"cannot connect to {self.url}: {exc}") from exc
        try:
            hello = await asyncio.wait_for(self._greet(ws), timeout)
        except TimeoutError as exc:
            await ws.close()
            raise GatewayError(
                f"{self.url} did not complete the Clawdbot handshake within {timeout}s"
            ) from exc
        except BaseException:
            await ws.close()
            raise
        return ws, hello

    async def _greet(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        first = await self._frame(ws, "the connect challenge")
        if first.get("type") != "event" or first.get("event") != "connect.challenge":
            raise HandshakeRejected(
                f"protocol mismatch: {self.url} did not start with a Clawdbot connect.challenge"
            )
        req_id = str(uuid.uuid4())
        params: dict[str, Any] = {
            "minProtocol": PROTOCOL_VERSION,
            "maxProtocol": PROTOCOL_VERSION,
            "client": {
                "id": CLIENT_ID,
                "version": self.opts.client_version,
                "platform": "linux",
                "mode": "backend",
            },
            "role": "operator",
            "scopes": list(self.opts.scopes),
            **self.opts.extra,
        }
        if self._token:
            params["auth"] = {"token": self._token}
        await ws.send_str(
            json.dumps({"type": "req", "id": req_id, "method": "connect", "params": params})
        )
        while True:
            frame = await self._frame(ws, "the answer to connect")
            if frame.get("type") == "res" and frame.get("id") == req_id:
                break
        if not frame.get("ok"):
            error = frame.get("error") or {}
            detail = (
                str(error.get("message") or error) if isinstance(error, Mapping) else str(error)
            )
            # ``details`` is free-form: an object only sometimes.
            details = error.get("details") if isinstance(error, Mapping) else None
            expected = details.get("expectedProtocol") if isinstance(details, Mapping) else None
            if expected is not None:
                detail += (
                    f" (the gateway speaks protocol {expected}, this client {PROTOCOL_VERSION})"
                )
            elif "token" in detail or "unauthorized" in detail:
                detail += " (check webhooks.gateway.token)"
            raise HandshakeRejected(f"the Clawdbot gateway refused the connection: {detail}")
        hello = frame.get("payload") or {}
        protocol = hello.get("protocol") if isinstance(hello, Mapping) else None
        if protocol != PROTOCOL_VERSION:
            raise HandshakeRejected(
                f"protocol mismatch: the gateway answered protocol {protocol!r}, this client "
                f"speaks {PROTOCOL_VERSION}"
            )
        return dict(hello)

    async def _frame(self, ws: aiohttp.ClientWebSocketResponse, waiting_for: str) -> dict[str, Any]:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                frame = json.loads(msg.data)
            except ValueError as exc:
                raise HandshakeRejected(
                    f"protocol mismatch: {self.url} sent something that is not JSON"
                ) from exc
            if not isinstance(frame, dict):
                raise HandshakeRejected(f"protocol mismatch: {self.url} sent a non-object frame")
            return frame
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            code = ws.close_code
            reason = msg.extra or ""
            # 1008 (policy) and 1002 (protocol) are how the gateway turns a client away.
            text = f"the gateway closed the connection while waiting for {waiting_for}"
            text += f" (code {code}{': ' + reason if reason else ''})"
            if code in (1002, 1008):
                raise HandshakeRejected(text)
            raise GatewayError(text)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise GatewayError(
                f"connection error while waiting for {waiting_for}: {ws.exception()}"
            )
        raise HandshakeRejected(f"protocol mismatch: unexpected {msg.type.name} frame")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Dispatch frames until the socket closes or goes quiet for two tick intervals."""
        while True:
            silence = self._tick_s * 2 + 1
            try:
                msg = await ws.receive(timeout=silence)
            except TimeoutError:
                self.log.warning(
                    "no tick from the Clawdbot gateway in %.1fs: reconnecting", silence
                )
                return
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type in (aiohttp.WSMsgType.BINARY,):
                    continue
                return  # CLOSE, CLOSING, CLOSED, ERROR
            try:
                frame = json.loads(msg.data)
            except ValueError:
                self.log.warning("ignored a frame that is not JSON from the gateway")
                continue
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == "res":
                self._answer(frame)
            elif kind == "event":
                self._event(frame)

    def _lost(self, exc: BaseException) -> None:
        for call in list(self._calls.values()):
            if call.refetch is not None:
                call.refetch.cancel()
            if not call.future.done():
                call.future.set_exception(exc)

    # ------------------------------------------------------------------ frames

    def _answer(self, frame: Mapping[str, Any]) -> None:
        call = self._calls.get(str(frame.get("id")))
        if call is None or call.future.done():
            return
        payload = frame.get("payload")
        if frame.get("ok"):
            if (
                call.expect_final
                and isinstance(payload, Mapping)
                and payload.get("status") == "accepted"
            ):
                call.run_id = str(payload.get("runId") or "") or call.run_id
                if call.run_id in self._finished_runs:
                    self._schedule_refetch(call)
                return
            call.future.set_result(payload)
            return
        error = frame.get("error")
        call.future.set_exception(
            GatewayError(
                f"Clawdbot {call.method} failed: {describe_error(error)}",
                retry=not _is_final(error),
            )
        )

    def _event(self, frame: Mapping[str, Any]) -> None:
        name = str(frame.get("event") or "")
        payload = frame.get("payload")
        payload = payload if isinstance(payload, Mapping) else {}
        if name == "tick":
            return
        if name == "shutdown":
            self.log.warning("the Clawdbot gateway is shutting down: %s", payload.get("reason"))
        if name == "agent" and payload.get("stream") == "lifecycle":
            phase = (payload.get("data") or {}).get("phase")
            if phase in ("end", "error"):
                self._run_finished(str(payload.get("runId") or ""))
        if self._on_event is not None:
            try:
                self._on_event(name, payload)
            except Exception:
                self.log.exception("gateway event handler failed for %s", name)

    def _run_finished(self, run_id: str) -> None:
        self._finished_runs[run_id] = None
        while len(self._finished_runs) > 4096:
            self._finished_runs.pop(next(iter(self._finished_runs)))
        for call in self._calls.values():
            if call.run_id == run_id and not call.future.done():
                self._schedule_refetch(call)

    def _schedule_refetch(self, call: _Call) -> None:
        if call.refetch is not None:
            return

        def fire() -> None:
            if not call.future.done():
                call.future.set_exception(_Refetch())

        call.refetch = asyncio.get_running_loop().call_later(REFETCH_GRACE, fire)

    # ------------------------------------------------------------------ requests

    async def _wait_connected(self, deadline: float) -> aiohttp.ClientWebSocketResponse:
        loop = asyncio.get_running_loop()
        if not self.connected:
            if self._closing or self._task is None:
                raise GatewayError("the Clawdbot gateway client is not running", retry=True)
            wait = min(self.opts.offline_wait, max(0.0, deadline - loop.time()))
            try:
                await asyncio.wait_for(self._connected.wait(), wait)
            except TimeoutError:
                why = f"; last error: {self.last_error}" if self.last_error else ""
                raise GatewayError(
                    f"not connected to the Clawdbot gateway at {self.url} (waited {wait:g}s{why})",
                    retry=True,
                ) from None
        ws = self._ws
        if ws is None or ws.closed:
            raise _ConnectionLost()
        return ws

    async def request(
        self,
        method: str,
        params: Mapping[str, Any],
        *,
        expect_final: bool = False,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the answer's payload (for ``expect_final``, the last
        answer). ``idempotent`` requests are sent again after a reconnect."""
        loop = asyncio.get_running_loop()
        limit = self.opts.request_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        while True:
            req_id = str(uuid.uuid4())
            call = _Call(method, expect_final, loop.create_future())
            try:
                ws = await self._wait_connected(deadline)
                self._calls[req_id] = call
                frame = {"type": "req", "id": req_id, "method": method, "params": dict(params)}
                async with self._send_lock:
                    await ws.send_str(json.dumps(frame))
                return await asyncio.wait_for(call.future, max(0.0, deadline - loop.time()))
            except (_ConnectionLost, ConnectionError, aiohttp.ClientError) as exc:
                if not idempotent:
                    raise GatewayError(
                        f"the connection to the Clawdbot gateway was lost during {method}; "
                        "it may or may not have taken effect",
                        retry=True,
                    ) from exc
                self.log.info("sending %s again after the gateway connection came back", method)
            except _Refetch:
                self.log.info("fetching the result of run %s again", call.run_id)
            except TimeoutError:
                raise GatewayError(
                    f"Clawdbot {method} got no answer within {limit:g}s", retry=True
                ) from None
            finally:
                self._calls.pop(req_id, None)
                if call.refetch is not None:
                    call.refetch.cancel()
            if loop.time() >= deadline:
                raise GatewayError(f"Clawdbot {method} got no answer within {limit:g}s")
            if not self.connected:
                # Let the background task notice the closed socket before waiting on it.
                await asyncio.sleep(0.01)
