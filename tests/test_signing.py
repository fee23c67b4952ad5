"""Standard Webhooks signing: the published vector, the reference library, and what a real
sink receives from a signed subscription."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from clawdbot_webhooks_hookspecs import Event
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from clawdbot_webhooks.signing import StandardSigner, decode_secret, sign_standard
from tests.conftest import VECTORS

SECRET = "whsec_" + base64.b64encode(b"outgoing-test-key-0123456789").decode()


def _vector() -> dict[str, Any]:
    cases = json.loads(VECTORS.read_text())["cases"]
    return next(c for c in cases if c["scheme"] == "standard-webhooks")


def test_published_vector() -> None:
    case = _vector()
    headers = case["headers_in"]
    value = sign_standard(
        case["secret"],
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        case["body"].encode(),
    )
    assert value == case["expected"]["webhook-signature"]
    signed = StandardSigner(case["secret"]).headers(
        headers["webhook-id"], int(headers["webhook-timestamp"]), case["body"].encode()
    )
    assert signed["webhook-signature"] == case["expected"]["webhook-signature"]


def test_reference_library_accepts_signer_headers() -> None:
    body = b'{"id":"evt_1","type":"error"}'
    import time

    headers = StandardSigner(SECRET).headers("evt_1", int(time.time()), body)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    tampered = dict(headers, **{"webhook-id": "evt_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, tampered)


def test_secrets_are_read_as_the_reference_libraries_read_them() -> None:
    assert decode_secret(SECRET) == b"outgoing-test-key-0123456789"
    bare = SECRET.removeprefix("whsec_")
    assert decode_secret(bare) == decode_secret(SECRET)  # the prefix is optional
    body = b"{}"
    assert StandardSigner(bare).headers("m", 1, body) == StandardSigner(SECRET).headers(
        "m", 1, body
    )
    with pytest.raises(ValueError, match="not a base64 secret") as caught:
        decode_secret("not-base64 at all!")
    assert "at all" not in str(caught.value)


def test_a_plain_passphrase_is_a_config_error() -> None:
    from clawdbot_webhooks.config import ConfigError, build_settings
    from clawdbot_webhooks.plugins import load_plugins

    raw = {
        "outgoing": [
            {
                "id": "o",
                "url": "http://127.0.0.1:9/x",
                "events": ["*"],
                "secret": "not-base64 at all!",
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        build_settings(raw, load_plugins(), None)
    assert caught.value.errors == [
        "webhooks.outgoing[0].secret: not a base64 secret (expected whsec_<base64>)"
    ]


async def test_sink_receives_verifiable_deliveries(start_server, make_sink) -> None:
    sink = await make_sink()
    srv = await start_server(
        {"outgoing": [{"id": "signed", "url": sink.url, "events": ["*"], "secret": SECRET}]}
    )
    event = Event("message_received", {"from": "+1555", "text": "你好"}, session="s1")
    await srv.runtime.bus.publish(event)
    await sink.wait_for(1)
    got = sink.received[0]
    payload = Webhook(SECRET).verify(got["body"], got["headers"])
    assert payload == event.to_payload()
    assert got["headers"]["webhook-id"] == event.id
    # The key never travels, and a different key does not verify.
    assert SECRET not in json.dumps({k: v for k, v in got["headers"].items()})
    other = "whsec_" + base64.b64encode(b"another-key-entirely-000000").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(got["body"], got["headers"])


async def test_bad_whsec_secret_is_a_config_error(start_server) -> None:
    from clawdbot_webhooks.config import ConfigError

    with pytest.raises(ConfigError) as info:
        await start_server(
            {
                "outgoing": [
                    {
                        "id": "x",
                        "url": "http://127.0.0.1:9/",
                        "events": ["*"],
                        "secret": "whsec_%%%not-base64%%%",
                    }
                ]
            }
        )
    assert any(e.startswith("webhooks.outgoing[0].secret:") for e in info.value.errors)
    assert "%%%not-base64%%%" not in str(info.value)
