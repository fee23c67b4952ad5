"""The conformance kit plugin authors run in their own suites: it loads the plugin as the
runtime does and exercises what it registers, and says plainly what does not hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import OutgoingResponse, VerificationError, hookimpl
from marshmallow import Schema, fields

from clawdbot_webhooks.testing import assert_plugin_conforms


class Good:
    class Echo:
        class schema(Schema):
            word = fields.String(required=True)

        async def run(self, ctx: Any) -> dict[str, Any]:
            return {"echo": ctx.options["word"]}

    class Sink:
        schemes = frozenset({"sink"})

        def __init__(self) -> None:
            self.got: list[Any] = []

        async def send(self, request: Any) -> OutgoingResponse:
            self.got.append(request)
            return OutgoingResponse(200)

    class Key:
        class schema(Schema):
            key = fields.String(required=True)

        def verify(self, request: Any, options: Any) -> None:
            if request.headers.get("x-key") != f"{options['key']}:{len(request.body)}":
                raise VerificationError("wrong key")

        def sign(self, body: bytes, options: Any, now: int) -> dict[str, str]:
            return {"X-Key": f"{options['key']}:{len(body)}"}

    def __init__(self) -> None:
        self.sink = self.Sink()

    @hookimpl
    def register_actions(self, register: Any) -> None:
        register("echo", self.Echo())

    @hookimpl
    def register_transports(self, register: Any) -> None:
        register("sink", self.sink)

    @hookimpl
    def register_verifiers(self, register: Any) -> None:
        register("key", self.Key())


async def test_a_good_plugin_conforms(tmp_path: Path) -> None:
    good = Good()
    checked = await assert_plugin_conforms(
        ("good", good),
        actions={"echo": {"word": "hi"}},
        verifiers={"key": {"key": "k"}},
        state_dir=tmp_path,
    )
    assert checked.registers == {"actions": ["echo"], "transports": ["sink"], "verifiers": ["key"]}
    assert checked.actions == {"echo": "done"} and checked.transports == {"sink": "done"}
    assert checked.verifiers["key"].startswith("refuses unsigned and changed requests")
    assert good.sink.got[0].url == "sink:conformance"


async def test_missing_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"give their options\): .*word"):
        await assert_plugin_conforms(("good", Good()), state_dir=tmp_path)


class Failing:
    class Boom:
        schema = Schema

        async def run(self, ctx: Any) -> None:
            raise RuntimeError("boom")

    @hookimpl
    def register_actions(self, register: Any) -> None:
        register("boom", self.Boom())


async def test_a_failing_action_is_reported(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"action 'boom' failed: .*boom"):
        await assert_plugin_conforms(("failing", Failing()), state_dir=tmp_path)


class Lax:
    class Anything:
        def verify(self, request: Any, options: Any) -> None:
            return None

    @hookimpl
    def register_verifiers(self, register: Any) -> None:
        register("anything", self.Anything())


async def test_a_verifier_that_accepts_anything_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"verifier 'anything' accepted a request without"):
        await assert_plugin_conforms(("lax", Lax()), state_dir=tmp_path)


class Careless:
    class NoSchema:
        async def run(self, ctx: Any) -> None:
            return None

    @hookimpl
    def register_actions(self, register: Any) -> None:
        register("careless", self.NoSchema())


async def test_a_registration_mistake_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as caught:
        await assert_plugin_conforms(("careless", Careless()), state_dir=tmp_path)
    assert str(caught.value) == (
        "the plugin does not load: plugin 'careless' registers action 'careless': "
        "has no schema (a marshmallow Schema class for its options)"
    )


async def test_an_installed_distribution_by_name(fake_distribution, tmp_path: Path) -> None:
    fake_distribution(
        "clawdbot-webhooks-upper",
        "0.1",
        "cw_upper",
        """
        from clawdbot_webhooks_hookspecs import hookimpl
        @hookimpl
        def register_template_filters(register):
            register("upper2", str.upper)
        """,
        entry="upper",
    )
    checked = await assert_plugin_conforms("clawdbot-webhooks-upper", state_dir=tmp_path)
    assert checked.plugins == ["upper"] and checked.registers == {"filters": ["upper2"]}
    with pytest.raises(AssertionError, match="is not installed"):
        await assert_plugin_conforms("clawdbot-webhooks-nothing", state_dir=tmp_path)


class GuideToken:
    """The guide's own verifier (docs/plugins.md): the secret itself in a header."""

    credential_headers = ("X-Token",)

    class schema(Schema):
        token = fields.String(required=True)

    def verify(self, request: Any, options: Any) -> str | None:
        import hmac

        given = request.headers.get("x-token", "")
        if not hmac.compare_digest(given.encode(), options["token"].encode()):
            raise VerificationError("X-Token does not match")
        header: str | None = request.headers.get("x-request-id")
        return header

    def sign(self, body: bytes, options: Any, now: int) -> dict[str, str]:
        return {"X-Token": options["token"]}

    @hookimpl
    def register_verifiers(self, register: Any) -> None:
        register("token", self)


async def test_the_guides_token_verifier_conforms(tmp_path: Path) -> None:
    """A scheme that sends the secret itself binds no body: the kit checks that it refuses a
    request without the secret and takes one with it, not that a changed body is refused."""
    checked = await assert_plugin_conforms(
        ("guide", GuideToken()), verifiers={"token": {"token": "abc"}}, state_dir=tmp_path
    )
    assert checked.verifiers == {"token": "refuses requests without the secret, accepts it"}
