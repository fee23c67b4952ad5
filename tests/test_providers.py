"""Providers as they really send: each preset checked against its provider's own library (or
its documented algorithm where it publishes none), wrong signatures, stale timestamps and
replays refused; handshakes answered before any action; GitHub's form content type rendered
as its JSON one; a Pub/Sub envelope decoded; keys from a JWKS file and from a real URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
import pytest
from aiohttp import web
from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import MultiDict
from nacl.signing import SigningKey
from slack_sdk.signature import SignatureVerifier
from twilio.request_validator import RequestValidator
from yarl import URL

from clawdbot_webhooks.builtin import verifiers as builtin
from clawdbot_webhooks.builtin.verifiers import google
from clawdbot_webhooks.config import ConfigError, build_settings
from clawdbot_webhooks.plugins import PluginSelection, load_plugins
from clawdbot_webhooks.store import DeliveryQuery

NOW = 1_700_000_000
DATA = Path(__file__).parent / "data"
TWILIO_URL = "https://hooks.example.com/webhook/sms?source=twilio"
TWILIO_TOKEN = "12345678901234567890123456789012"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
AUDIENCE = "https://hooks.example.com/webhook/gmail"
ROBOT = "push@project.iam.gserviceaccount.com"


def _verifiers() -> dict[str, Any]:
    found: dict[str, Any] = {}
    builtin.register_verifiers(register=found.__setitem__)
    return found


VERIFIERS = _verifiers()


def loaded(scheme: str, **options: Any) -> dict[str, Any]:
    result: dict[str, Any] = VERIFIERS[scheme].schema().load(options)
    return result


def request(
    headers: Mapping[str, str], body: bytes, now: float = NOW, query_string: str = ""
) -> SignedRequest:
    return SignedRequest(
        method="POST",
        path="/webhook/x",
        headers={k.lower(): v for k, v in headers.items()},
        body=body,
        client_ip="127.0.0.1",
        now=now,
        query_string=query_string,
    )


def check(
    scheme: str,
    options: Mapping[str, Any],
    headers: Mapping[str, str],
    body: bytes,
    now: float = NOW,
) -> str | None:
    result: str | None = VERIFIERS[scheme].verify(request(headers, body, now), options)
    return result


# ----------------------------------------------------------------- provider signers


def gitlab_headers(token: str) -> dict[str, str]:
    # GitLab sends the secret token as it is; Idempotency-Key stays the same across retries.
    return {
        "X-Gitlab-Token": token,
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
        "Idempotency-Key": "f5e5f430-f57b-4e6e-9fac-d9128cd7232f",
    }


GITLAB_PUSH = {
    "object_kind": "push",
    "event_name": "push",
    "ref": "refs/heads/main",
    "user_username": "jsmith",
    "project": {"path_with_namespace": "mike/diaspora"},
    "commits": [{"id": "b6568db1", "message": "Update Catalan translation"}],
    "total_commits_count": 1,
}


def shopify_headers(secret: str, body: bytes) -> dict[str, str]:
    # Shopify's documented check: base64 of the HMAC-SHA256 of the raw body.
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return {
        "X-Shopify-Hmac-Sha256": digest,
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }


SHOPIFY_ORDER = {"id": 820982911946154508, "email": "jon@example.com", "total_price": "403.00"}


def sentry_headers(secret: str, body: bytes) -> dict[str, str]:
    # Sentry's documented check: hex HMAC-SHA256 of the body with the client secret.
    return {
        "Sentry-Hook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "Sentry-Hook-Resource": "event_alert",
        "Sentry-Hook-Timestamp": str(NOW),
        "Request-ID": "9a5d8b1c-0f6e-4b38-8d57-2c0e1f0d3f41",
    }


SENTRY_ALERT = {
    "action": "triggered",
    "data": {"event": {"title": "ZeroDivisionError: division by zero"}},
    "installation": {"uuid": "7a485448-a9e2-4c85-8a3c-4f44175783c9"},
}


def linear_body(stamp_ms: int) -> bytes:
    return json.dumps(
        {
            "action": "create",
            "type": "Issue",
            "data": {"identifier": "ENG-42", "title": "Crash on start"},
            "url": "https://linear.app/acme/issue/ENG-42",
            "webhookTimestamp": stamp_ms,
        }
    ).encode()


def linear_headers(secret: str, body: bytes) -> dict[str, str]:
    # Linear's documented check: hex HMAC-SHA256 of the raw body.
    return {
        "Linear-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "Linear-Delivery": "234d1a4e-b617-4388-90fe-adc3633d6b72",
        "Linear-Event": "Issue",
    }


TELEGRAM_UPDATE = {
    "update_id": 10000,
    "message": {
        "message_id": 1365,
        "date": NOW,
        "chat": {"id": 1111111, "type": "private", "first_name": "Ada"},
        "from": {"id": 1111111, "is_bot": False, "first_name": "Ada"},
        "text": "/start hello",
    },
}

TWILIO_SMS = {
    "MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f",
    "AccountSid": "AC" + "1" * 32,
    "From": "+14155552345",
    "To": "+14155550000",
    "Body": "Hello from Twilio ✓",
    "NumMedia": "0",
}


def twilio_headers(token: str, url: str, form: Mapping[str, str]) -> dict[str, str]:
    signature = RequestValidator(token).compute_signature(url, dict(form))
    return {
        "X-Twilio-Signature": signature,
        "I-Twilio-Idempotency-Token": "d3b2f1a0-8c7e-4f3d-9a1b-0c2d4e6f8a9b",
        "Content-Type": "application/x-www-form-urlencoded",
    }


def basic(username: str, password: str) -> str:
    # RFC 7617, as Alertmanager and Grafana send it (UTF-8, the charset RFC 7617 allows)
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# ----------------------------------------------------------------- shared-token presets


@pytest.mark.parametrize(
    ("scheme", "header", "body", "delivery"),
    [
        ("gitlab", "X-Gitlab-Token", GITLAB_PUSH, "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
        ("telegram", "X-Telegram-Bot-Api-Secret-Token", TELEGRAM_UPDATE, "update:10000"),
    ],
)
def test_token_presets(scheme: str, header: str, body: Any, delivery: str) -> None:
    raw = json.dumps(body).encode()
    options = loaded(scheme, secrets=["old-token", "s3cr3t-token"])
    headers = gitlab_headers("s3cr3t-token") if scheme == "gitlab" else {header: "s3cr3t-token"}
    assert check(scheme, options, headers, raw) == delivery
    assert check(scheme, options, {**headers, header: "old-token"}, raw) == delivery
    with pytest.raises(VerificationError, match="wrong") as info:
        check(scheme, options, {**headers, header: "s3cr3t-tokeN"}, raw)
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(VerificationError, match="missing"):
        check(scheme, options, {}, raw)
    # the token travels in a header of its own: never stored with the delivery
    assert header in VERIFIERS[scheme].credential_headers


def test_gitlab_falls_back_to_the_event_uuid() -> None:
    options = loaded("gitlab", secret="t")
    headers = gitlab_headers("t")
    del headers["Idempotency-Key"]
    assert check("gitlab", options, headers, b"{}") == "13792a34-cac6-4fda-95a8-c58e00a3954e"


def test_basic_auth_as_alertmanager_sends_it() -> None:
    options = loaded("basic", username="alertmanager", passwords=["old", "pa:ss ✓"])
    good = basic("alertmanager", "pa:ss ✓")
    assert check("basic", options, {"Authorization": good}, b"{}") is None
    old = basic("alertmanager", "old")
    assert check("basic", options, {"Authorization": old}, b"{}") is None
    for wrong in (
        basic("alertmanager", "pa:ss"),
        basic("grafana", "pa:ss ✓"),
    ):
        with pytest.raises(VerificationError, match="wrong username or password"):
            check("basic", options, {"Authorization": wrong}, b"{}")
    with pytest.raises(VerificationError, match="not base64"):
        check("basic", options, {"Authorization": "Basic ***"}, b"{}")
    with pytest.raises(VerificationError, match="missing"):
        check("basic", options, {"Authorization": "Bearer x"}, b"{}")


# ----------------------------------------------------------------- HMAC presets


def test_shopify() -> None:
    body = json.dumps(SHOPIFY_ORDER).encode()
    options = loaded("shopify", secrets=["rotated-out", "shpss_secret"])
    headers = shopify_headers("shpss_secret", body)
    assert check("shopify", options, headers, body) == "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"
    with pytest.raises(VerificationError, match="does not match"):
        check("shopify", options, headers, body.replace(b"403", b"404"))
    with pytest.raises(VerificationError):
        check("shopify", options, shopify_headers("another", body), body)
    # our signing is Shopify's algorithm
    assert (
        VERIFIERS["shopify"].sign(body, options, NOW)["X-Shopify-Hmac-Sha256"]
        == (shopify_headers("rotated-out", body)["X-Shopify-Hmac-Sha256"])
    )


def test_sentry() -> None:
    body = json.dumps(SENTRY_ALERT).encode()
    options = loaded("sentry", secret="sentry-client-secret")
    headers = sentry_headers("sentry-client-secret", body)
    assert check("sentry", options, headers, body) == "9a5d8b1c-0f6e-4b38-8d57-2c0e1f0d3f41"
    with pytest.raises(VerificationError, match="does not match"):
        check("sentry", options, headers, body + b" ")
    with pytest.raises(VerificationError, match="missing"):
        check("sentry", options, {}, body)


def test_linear_signature_and_timestamp() -> None:
    options = loaded("linear", secret="lin_wh_secret")
    body = linear_body(NOW * 1000 - 20_000)
    headers = linear_headers("lin_wh_secret", body)
    assert check("linear", options, headers, body) == "234d1a4e-b617-4388-90fe-adc3633d6b72"
    with pytest.raises(VerificationError, match="does not match"):
        check("linear", options, linear_headers("other", body), body)
    # signed by Linear but a minute and more old (Linear's advice): a replay
    stale = linear_body(NOW * 1000 - 61_000)
    with pytest.raises(VerificationError, match=r"webhookTimestamp .* clock"):
        check("linear", options, linear_headers("lin_wh_secret", stale), stale)
    relaxed = loaded("linear", secret="lin_wh_secret", tolerance=120)
    assert check("linear", relaxed, linear_headers("lin_wh_secret", stale), stale)
    no_stamp = b'{"action": "create"}'
    with pytest.raises(VerificationError, match="webhookTimestamp missing"):
        check("linear", options, linear_headers("lin_wh_secret", no_stamp), no_stamp)


def test_twilio_signed_by_twilios_request_validator() -> None:
    body = urlencode(TWILIO_SMS).encode()
    options = loaded("twilio", secret=TWILIO_TOKEN, url=TWILIO_URL)
    headers = twilio_headers(TWILIO_TOKEN, TWILIO_URL, TWILIO_SMS)
    assert check("twilio", options, headers, body) == "d3b2f1a0-8c7e-4f3d-9a1b-0c2d4e6f8a9b"
    changed = urlencode({**TWILIO_SMS, "Body": "Hello from Twilio"}).encode()
    with pytest.raises(VerificationError, match="does not match"):
        check("twilio", options, headers, changed)
    # signed for another URL (a request replayed at another endpoint)
    elsewhere = twilio_headers(TWILIO_TOKEN, "https://hooks.example.com/other", TWILIO_SMS)
    with pytest.raises(VerificationError):
        check("twilio", options, elsewhere, body)
    # Twilio signs the URL with or without its default port
    with_port = TWILIO_URL.replace(".com/", ".com:443/")
    assert check("twilio", options, twilio_headers(TWILIO_TOKEN, with_port, TWILIO_SMS), body)
    # a shared key's signature: HMAC-SHA256, named in a header
    sha256 = RequestValidator(TWILIO_TOKEN).compute_signature(
        TWILIO_URL, TWILIO_SMS, algorithm="HMAC_SHA256"
    )
    settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    newer = {
        **headers,
        "X-Twilio-Signature": sha256,
        "X-Twilio-Webhooks-Signature-Settings": settings,
    }
    assert check("twilio", options, newer, body)
    with pytest.raises(VerificationError, match="does not match"):
        check("twilio", options, {**newer, "X-Twilio-Webhooks-Signature-Settings": ""}, body)
    # and Twilio's validator accepts what send-test signs
    signed = VERIFIERS["twilio"].sign(body, options, NOW)
    assert RequestValidator(TWILIO_TOKEN).validate(
        TWILIO_URL, TWILIO_SMS, signed["X-Twilio-Signature"]
    )


def test_twilio_json_body_signed_through_body_sha256() -> None:
    # Twilio's JSON deliveries: the body's SHA-256 in the URL, the URL signed alone
    body = json.dumps({"sid": "EX123", "status": "completed"}).encode()
    query = "source=twilio&bodySHA256=" + hashlib.sha256(body).hexdigest()
    called = TWILIO_URL.split("?")[0] + "?" + query
    validator = RequestValidator(TWILIO_TOKEN)
    headers = {
        "X-Twilio-Signature": validator.compute_signature(called, {}),
        "Content-Type": "application/json",
    }
    assert validator.validate(called, body.decode(), headers["X-Twilio-Signature"])
    options = loaded("twilio", secret=TWILIO_TOKEN, url=TWILIO_URL)
    verifier = VERIFIERS["twilio"]
    assert verifier.verify(request(headers, body, query_string=query), options) is None
    with pytest.raises(VerificationError, match="bodySHA256 does not match"):
        verifier.verify(request(headers, body + b" ", query_string=query), options)
    with pytest.raises(VerificationError, match="needs bodySHA256"):
        verifier.verify(request(headers, body, query_string="source=twilio"), options)
    # a hash swapped for that of another body breaks the signature
    other = "source=twilio&bodySHA256=" + hashlib.sha256(b"{}").hexdigest()
    with pytest.raises(VerificationError, match="does not match the URL"):
        verifier.verify(request(headers, b"{}", query_string=other), options)


def test_twilio_repeated_parameters_sort_as_twilio_does() -> None:
    form = [("MediaUrl", "https://b"), ("Body", "x"), ("MediaUrl", "https://a")]
    body = urlencode(form).encode()
    expected = RequestValidator(TWILIO_TOKEN).compute_signature(TWILIO_URL, MultiDict(form))
    options = loaded("twilio", secret=TWILIO_TOKEN, url=TWILIO_URL)
    headers = {"X-Twilio-Signature": expected, "Content-Type": "application/x-www-form-urlencoded"}
    assert check("twilio", options, headers, body) is None


# ----------------------------------------------------------------- Discord (Ed25519)


def discord_headers(key: SigningKey, stamp: int, body: bytes) -> dict[str, str]:
    signature = key.sign(str(stamp).encode() + body).signature
    return {"X-Signature-Ed25519": signature.hex(), "X-Signature-Timestamp": str(stamp)}


def discord_command(interaction_id: str = "1123456789012345678") -> bytes:
    return json.dumps(
        {
            "id": interaction_id,
            "application_id": "1100000000000000000",
            "type": 2,
            "token": "aW50ZXJhY3Rpb24",
            "version": 1,
            "data": {
                "id": "1",
                "name": "ask",
                "type": 1,
                "options": [{"name": "question", "type": 3, "value": "what is up?"}],
            },
            "member": {"user": {"id": "80351110224678912", "username": "nelly"}},
            "channel_id": "41771983423143937",
        }
    ).encode()


PING = b'{"id":"1","application_id":"1100000000000000000","type":1,"token":"t","version":1}'


def test_discord_with_a_pynacl_key_pair() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    public = key.verify_key.encode().hex()
    options = loaded("discord", publicKeys=[other.verify_key.encode().hex(), public])
    body = discord_command()
    assert check("discord", options, discord_headers(key, NOW, body), body) == "1123456789012345678"
    assert check("discord", options, discord_headers(other, NOW, body), body)
    with pytest.raises(VerificationError, match="does not match"):
        check("discord", options, discord_headers(key, NOW, body), body + b" ")
    with pytest.raises(VerificationError, match="does not match"):
        check(
            "discord",
            loaded("discord", publicKey=public),
            discord_headers(SigningKey.generate(), NOW, body),
            body,
        )
    with pytest.raises(VerificationError, match="clock"):
        check("discord", options, discord_headers(key, NOW - 301, body), body)
    with pytest.raises(VerificationError, match="64 bytes"):
        check(
            "discord",
            options,
            {**discord_headers(key, NOW, body), "X-Signature-Ed25519": "abcd"},
            body,
        )
    # the timestamp is part of what is signed
    moved = {**discord_headers(key, NOW, body), "X-Signature-Timestamp": str(NOW + 1)}
    with pytest.raises(VerificationError, match="does not match"):
        check("discord", options, moved, body)
    # a PING is a handshake, a command is not
    verifier = VERIFIERS["discord"]
    ping = request(discord_headers(key, NOW, PING), PING)
    assert verifier.handshake(ping, options).body == {"type": 1}
    assert verifier.handshake(request({}, body), options) is None


# ----------------------------------------------------------------- Google OIDC (JWT)


class Issuer:
    """A local stand-in for Google's token signer: an RSA key pair and its JWKS."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def token(self, now: float = NOW, **claims: Any) -> str:
        body = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "azp": "112233445566778899000",
            "sub": "112233445566778899000",
            "email": ROBOT,
            "email_verified": True,
            "iat": int(now),
            "exp": int(now) + 3600,
            **claims,
        }
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


def pubsub_push(data: Any, message_id: str = "2070443601311540") -> bytes:
    """A push request's body as Pub/Sub documents it."""
    encoded = base64.b64encode(json.dumps(data).encode()).decode()
    return json.dumps(
        {
            "message": {
                "attributes": {"key": "value"},
                "data": encoded,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": "2021-02-26T19:13:55.749Z",
            },
            "subscription": "projects/myproject/subscriptions/mysubscription",
        }
    ).encode()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer("key-1")


@pytest.fixture
def jwks_file(tmp_path: Path, issuer: Issuer) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [Issuer("key-0").jwk, issuer.jwk]}))
    return path


async def verify_async(
    options: Mapping[str, Any], headers: Mapping[str, str], body: bytes, now: float = NOW
) -> str | None:
    result: str | None = await VERIFIERS["google-oidc"].verify(request(headers, body, now), options)
    return result


def _token_with_header(header: dict[str, Any]) -> str:
    """A token of three parts whose header is ``header``, unsigned."""

    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part({})}.c2ln"


async def test_google_oidc_against_a_jwks_file(issuer: Issuer, jwks_file: Path) -> None:
    options = loaded("google-oidc", audience=AUDIENCE, email=ROBOT, jwks=str(jwks_file))
    body = pubsub_push({"emailAddress": "user@example.com", "historyId": 9876543210})
    bearer = {"Authorization": f"Bearer {issuer.token()}"}
    assert await verify_async(options, bearer, body) == "2070443601311540"

    refusals = [
        (issuer.token(aud="https://elsewhere.example.com"), "another audience"),
        (issuer.token(now=NOW - 3600 - 301), "expired"),
        (issuer.token(iss="https://evil.example.com"), "not issued by Google"),
        (issuer.token(email="someone@else.iam.gserviceaccount.com"), "service account"),
        (issuer.token(email_verified=False), "service account"),
        (Issuer("key-1").token(), "signature does not match"),  # same kid, another key
        (Issuer("key-9").token(), "not published"),
        ("not-a-jwt", "not a JWT"),
        # PyJWT refuses a header whose key id is not a string with another error than a
        # malformed token's: refused all the same (401), never an error of the server's
        (_token_with_header({"alg": "RS256", "kid": 1}), "not a JWT"),
        (_token_with_header({"alg": "RS256", "kid": ["key-1"]}), "not a JWT"),
    ]
    for token, reason in refusals:
        with pytest.raises(VerificationError, match=reason):
            await verify_async(options, {"Authorization": f"Bearer {token}"}, body)
    with pytest.raises(VerificationError, match="missing"):
        await verify_async(options, {}, body)
    # without `email`, any service account of the audience is accepted
    anyone = loaded("google-oidc", audience=AUDIENCE, jwks=str(jwks_file))
    other = {"Authorization": f"Bearer {issuer.token(email='x@y.iam.gserviceaccount.com')}"}
    assert await verify_async(anyone, other, body) == "2070443601311540"


async def test_google_oidc_jwks_file_changed_after_load(issuer: Issuer, jwks_file: Path) -> None:
    options = loaded("google-oidc", audience=AUDIENCE, jwks=str(jwks_file))
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    body = pubsub_push({})
    # read when first needed: a key added to the file before then counts
    rotated = Issuer("key-2")
    keys = json.loads(jwks_file.read_text())["keys"]
    jwks_file.write_text(json.dumps({"keys": [*keys, rotated.jwk]}))
    rotated_headers = {"Authorization": f"Bearer {rotated.token()}"}
    assert await verify_async(options, rotated_headers, body) == "2070443601311540"
    # broken or removed later: the keys read before stay in use, nothing fails with a 500
    jwks_file.write_text("{")
    assert await verify_async(options, headers, body) == "2070443601311540"
    jwks_file.unlink()
    assert await verify_async(options, headers, body) == "2070443601311540"
    # a handler whose file is gone before its first request refuses with 401
    other = jwks_file.with_name("other.json")
    other.write_text(json.dumps({"keys": [issuer.jwk]}))
    fresh = loaded("google-oidc", audience=AUDIENCE, jwks=str(other))
    other.unlink()
    with pytest.raises(VerificationError, match="signing keys unavailable"):
        await VERIFIERS["google-oidc"].verify(request(headers, body), fresh)


async def test_google_oidc_keys_from_a_url(
    issuer: Issuer, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[dict[str, Any]] = [issuer.jwk]
    fetches: list[float] = []

    async def certs(request: web.Request) -> web.Response:
        fetches.append(time.monotonic())
        return web.json_response({"keys": served}, headers={"Cache-Control": "max-age=20000"})

    app = web.Application()
    app.router.add_get("/oauth2/v3/certs", certs)
    server = await aiohttp_server(app)
    url = str(server.make_url("/oauth2/v3/certs"))
    options = loaded("google-oidc", audience=AUDIENCE, jwks=url)
    body = pubsub_push({"n": 1})
    now = time.time()
    headers = {"Authorization": f"Bearer {issuer.token(now=now)}"}
    assert await verify_async(options, headers, body, now) == "2070443601311540"
    assert await verify_async(options, headers, body, now) == "2070443601311540"
    assert len(fetches) == 1  # kept for the answer's max-age
    # Google rotates: a token naming a key not seen yet fetches the keys again, but not
    # more than once a minute, so tokens with made-up key ids cannot make us hammer the URL
    rotated = Issuer("key-2")
    served.append(rotated.jwk)
    fresh = {"Authorization": f"Bearer {rotated.token(now=now)}"}
    with pytest.raises(VerificationError, match="not published"):
        await verify_async(options, fresh, body, now)
    assert len(fetches) == 1
    monkeypatch.setattr(google, "REFETCH_AFTER", 0.0)  # as if that minute had passed
    assert await verify_async(options, fresh, body, now) == "2070443601311540"
    assert len(fetches) == 2


async def test_google_oidc_unreachable_keys_refuse(issuer: Issuer) -> None:
    options = loaded("google-oidc", audience=AUDIENCE, jwks="http://127.0.0.1:9/certs")
    headers = {"Authorization": f"Bearer {issuer.token()}"}
    with pytest.raises(VerificationError, match="signing keys unavailable"):
        await verify_async(options, headers, pubsub_push({}))


def test_pubsub_envelope_is_decoded_for_templates() -> None:
    verifier = VERIFIERS["google-oidc"]
    envelope = json.loads(pubsub_push({"emailAddress": "user@example.com", "historyId": 1}))
    shown = verifier.present(envelope, {})
    assert shown["message"]["data"] == {"emailAddress": "user@example.com", "historyId": 1}
    assert shown["message"]["data_base64"] == envelope["message"]["data"]
    assert shown["subscription"] == envelope["subscription"]
    text = {"message": {"data": base64.b64encode("plain ✓".encode()).decode()}}
    assert verifier.present(text, {})["message"]["data"] == "plain ✓"
    for untouched in ({"message": {"data": "***"}}, {"message": "x"}, [1], "text"):
        assert verifier.present(untouched, {}) == untouched


# ----------------------------------------------------------------- config validation


def _build(verify: dict[str, Any], tmp_path: Path) -> Any:
    hook = {
        "id": "h",
        "action": "send_message",
        "target": {"channel": "local", "peer": "me"},
        "template": "x",
        "verify": verify,
    }
    raw = {"stateDir": str(tmp_path), "handlers": [hook]}
    return build_settings(raw, load_plugins(PluginSelection.from_config()), None)


@pytest.mark.parametrize(
    ("verify", "expected"),
    [
        ({"type": "gitlab"}, "webhooks.handlers[0].verify.secret: required"),
        ({"type": "twilio", "secret": "t"}, "webhooks.handlers[0].verify.url: Missing data"),
        (
            {"type": "twilio", "secret": "t", "url": "/webhook/sms"},
            "webhooks.handlers[0].verify.url: Not a valid URL",
        ),
        ({"type": "discord"}, "webhooks.handlers[0].verify.publicKey: required"),
        (
            {"type": "discord", "publicKey": "zz"},
            "webhooks.handlers[0].verify.publicKey: not hex",
        ),
        (
            {"type": "discord", "publicKeys": ["ab" * 32, "ab" * 31]},
            "webhooks.handlers[0].verify.publicKeys[1]: must be 32 bytes",
        ),
        ({"type": "basic", "password": "p"}, "webhooks.handlers[0].verify.username: Missing"),
        ({"type": "basic", "username": "u"}, "webhooks.handlers[0].verify.password: required"),
        ({"type": "google-oidc"}, "webhooks.handlers[0].verify.audience: Missing data"),
        (
            {"type": "google-oidc", "audience": "a", "jwks": "/nonexistent/jwks.json"},
            "webhooks.handlers[0].verify.jwks: cannot read /nonexistent/jwks.json",
        ),
        (
            {"type": "google-oidc", "audience": "a", "email": "nope"},
            "webhooks.handlers[0].verify.email: Not a valid email",
        ),
        ({"type": "linear", "secret": "s", "tolerance": 0}, "webhooks.handlers[0].verify.tol"),
        ({"type": "shopify", "secret": "s", "x": 1}, "webhooks.handlers[0].verify.x: Unknown"),
    ],
)
def test_preset_options_are_validated_at_load(
    tmp_path: Path, verify: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _build(verify, tmp_path)
    assert any(line.startswith(expected) for line in info.value.errors), info.value.errors


def test_a_bad_jwks_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "RSA", "kid": "k"}]}')
    with pytest.raises(ConfigError, match=r"verify\.jwks: not a usable JWKS"):
        _build({"type": "google-oidc", "audience": "a", "jwks": str(path)}, tmp_path)


@pytest.mark.parametrize(
    ("module", "verify", "extra"),
    [
        ("cryptography", {"type": "discord", "publicKey": "ab" * 32}, "discord"),
        ("jwt", {"type": "google-oidc", "audience": "a"}, "google"),
    ],
)
def test_a_missing_library_names_its_extra(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    verify: dict[str, Any],
    extra: str,
) -> None:
    # None in sys.modules makes the import fail as it does when the package is not installed.
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as info:
        _build(verify, tmp_path)
    assert f"webhooks.handlers[0].verify.type: needs the {module} package: pip install " in (
        "\n".join(info.value.errors)
    )
    assert f"clawdbot-webhooks[{extra}]" in "\n".join(info.value.errors)


# ----------------------------------------------------------------- over real HTTP


def _hook(hook_id: str, verify: dict[str, Any] | None, template: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": hook_id,
        "action": "send_message",
        "target": {"channel": "local", "peer": hook_id},
        "template": template,
    }
    if verify is not None:
        out["verify"] = verify
    return out


ISSUE_TEXT = (
    "{{ sender.login }} {{ action }} #{{ issue.number }} in {{ repository.full_name }}: "
    "{{ issue.title }} [{{ issue.labels | map(attribute='name') | join(',') }}] "
    "{{ event.issue.body }} {{ event | json | length }}"
)


def github_headers(secret: str, body: bytes, delivery: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery,
    }


async def test_github_form_delivery_renders_as_its_json_one(start_server) -> None:
    document = json.loads((DATA / "github-issues-opened.json").read_text())
    hooks = [
        _hook("gh", {"type": "github", "secret": "gh-secret"}, ISSUE_TEXT),
        _hook(
            "gh-form",
            {"type": "github", "secret": "gh-secret"},
            "{{ form.payload | length > 100 }} {{ form | list }} {{ action }}",
        ),
    ]
    srv = await start_server({"handlers": hooks})
    as_json = json.dumps(document).encode()
    # GitHub's "application/x-www-form-urlencoded" content type: the JSON in `payload`
    as_form = urlencode({"payload": json.dumps(document)}).encode()
    form_type = "application/x-www-form-urlencoded"
    status, _ = await srv.post("gh", raw=as_json, headers=github_headers("gh-secret", as_json, "1"))
    assert status == 202
    status, _ = await srv.post(
        "gh", raw=as_form, headers=github_headers("gh-secret", as_form, "2"), content_type=form_type
    )
    assert status == 202
    status, _ = await srv.post(
        "gh-form",
        raw=as_form,
        headers=github_headers("gh-secret", as_form, "3"),
        content_type=form_type,
    )
    assert status == 202
    await srv.idle()
    texts = {m["peer"]: [] for m in srv.messages()}
    for m in srv.messages():
        texts[m["peer"]].append(m["text"])
    first, second = texts["gh"]
    assert first == second
    assert first.startswith(
        "Codertocat opened #1 in Codertocat/Hello-World: Spelling error in the README file [bug] "
        "It looks like you accidently spelled 'commit' with two 't's. «ça arrive» "
    )
    assert texts["gh-form"] == ["True ['payload'] opened"]


async def test_other_forms_stay_dicts(start_server) -> None:
    srv = await start_server(
        {"handlers": [_hook("cmd", None, "{{ command }} {{ text }} {{ form.user_name }}")]}
    )
    # a Slack slash command: a plain form, no `payload` field
    form = urlencode({"command": "/weather", "text": "94070", "user_name": "Steve"}).encode()
    status, _ = await srv.post("cmd", raw=form, content_type="application/x-www-form-urlencoded")
    assert status == 202
    # a lone `payload` field that is not JSON stays a field
    status, _ = await srv.post(
        "cmd", raw=b"payload=hello", content_type="application/x-www-form-urlencoded"
    )
    assert status == 202
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == ["/weather 94070 Steve", "  "]


def slack_headers(body: bytes, stamp: int, secret: str = SLACK_SECRET) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(stamp), body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": str(stamp), "X-Slack-Signature": signature}


async def test_slack_url_verification_is_answered_and_runs_nothing(start_server) -> None:
    hooks = [_hook("slack", {"type": "slack", "secret": SLACK_SECRET}, "{{ event.text }}")]
    srv = await start_server({"handlers": hooks, "incoming": {"authFailures": None}})
    challenge = {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        "type": "url_verification",
    }
    body = json.dumps(challenge).encode()
    now = int(time.time())
    status, answer = await srv.post("slack", raw=body, headers=slack_headers(body, now))
    assert (status, answer) == (200, {"challenge": challenge["challenge"]})
    # signature first: a wrong one, or a stale one, is refused before any answer
    wrong = slack_headers(body, now, secret="not-the-signing-secret")
    status, answer = await srv.post("slack", raw=body, headers=wrong)
    assert status == 401 and answer["ok"] is False and "does not match" in answer["error"]
    status, answer = await srv.post("slack", raw=body, headers=slack_headers(body, now - 600))
    assert status == 401 and "clock" in answer["error"]
    # an Events API callback after it is a delivery like any other
    event = {"type": "event_callback", "event_id": "Ev08MFMKH6", "event": {"text": "hi"}}
    raw = json.dumps(event).encode()
    status, _ = await srv.post("slack", raw=raw, headers=slack_headers(raw, now))
    assert status == 202
    await srv.idle()
    assert await srv.runtime.store.count_incoming("done") == 1  # the challenge stored nothing
    assert [m["text"] for m in srv.messages()] == [""]


async def test_discord_ping_and_commands_over_http(start_server) -> None:
    key = SigningKey.generate()
    verify = {"type": "discord", "publicKey": key.verify_key.encode().hex()}
    hooks = [
        _hook("discord", verify, "{{ member.user.username }} asked {{ data.options[0].value }}")
    ]
    srv = await start_server({"handlers": hooks, "incoming": {"authFailures": None}})
    now = int(time.time())
    status, answer = await srv.post("discord", raw=PING, headers=discord_headers(key, now, PING))
    assert (status, answer) == (200, {"type": 1})
    forged = discord_headers(SigningKey.generate(), now, PING)
    status, answer = await srv.post("discord", raw=PING, headers=forged)
    assert status == 401 and answer["ok"] is False
    body = discord_command()
    status, answer = await srv.post("discord", raw=body, headers=discord_headers(key, now, body))
    assert status == 202
    first = answer["id"]
    # the same interaction again is a duplicate
    status, answer = await srv.post("discord", raw=body, headers=discord_headers(key, now, body))
    assert (status, answer) == (200, {"ok": True, "duplicate": True, "id": first})
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == ["nelly asked what is up?"]


async def test_every_preset_over_http(start_server, issuer: Issuer, jwks_file: Path) -> None:
    now = int(time.time())
    discord_key = SigningKey.generate()
    linear_raw = linear_body(now * 1000)
    cases: list[tuple[str, dict[str, Any], bytes, dict[str, str], dict[str, str], str]] = [
        # hook, verify, body, good headers, bad headers, template
        (
            "gitlab",
            {"type": "gitlab", "secret": "gl-token"},
            json.dumps(GITLAB_PUSH).encode(),
            gitlab_headers("gl-token"),
            gitlab_headers("gl-tokeN"),
            "{{ user_username }} pushed {{ total_commits_count }} to "
            "{{ project.path_with_namespace }}",
        ),
        (
            "shopify",
            {"type": "shopify", "secret": "shpss"},
            json.dumps(SHOPIFY_ORDER).encode(),
            shopify_headers("shpss", json.dumps(SHOPIFY_ORDER).encode()),
            shopify_headers("other", json.dumps(SHOPIFY_ORDER).encode()),
            "order {{ id }} {{ total_price }}",
        ),
        (
            "sms",
            {"type": "twilio", "secret": TWILIO_TOKEN, "url": TWILIO_URL},
            urlencode(TWILIO_SMS).encode(),
            twilio_headers(TWILIO_TOKEN, TWILIO_URL, TWILIO_SMS),
            twilio_headers("f" * 32, TWILIO_URL, TWILIO_SMS),
            "{{ From }}: {{ Body }}",
        ),
        (
            "discord",
            {"type": "discord", "publicKey": discord_key.verify_key.encode().hex()},
            discord_command("1"),
            discord_headers(discord_key, now, discord_command("1")),
            discord_headers(SigningKey.generate(), now, discord_command("1")),
            "{{ data.name }}",
        ),
        (
            "linear",
            {"type": "linear", "secret": "lin"},
            linear_raw,
            linear_headers("lin", linear_raw),
            linear_headers("nil", linear_raw),
            "{{ data.identifier }} {{ data.title }}",
        ),
        (
            "sentry",
            {"type": "sentry", "secret": "sen"},
            json.dumps(SENTRY_ALERT).encode(),
            sentry_headers("sen", json.dumps(SENTRY_ALERT).encode()),
            sentry_headers("nes", json.dumps(SENTRY_ALERT).encode()),
            "{{ data.event.title }}",
        ),
        (
            "telegram",
            {"type": "telegram", "secret": "tg-secret"},
            json.dumps(TELEGRAM_UPDATE).encode(),
            {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"},
            {"X-Telegram-Bot-Api-Secret-Token": "tg-secreT"},
            "{{ message.from.first_name }}: {{ message.text }}",
        ),
        (
            "alerts",
            {"type": "basic", "username": "am", "password": "pw"},
            json.dumps({"status": "firing", "alerts": [{"labels": {"alertname": "X"}}]}).encode(),
            {"Authorization": basic("am", "pw")},
            {"Authorization": basic("am", "pW")},
            "{{ status }} {{ alerts[0].labels.alertname }}",
        ),
        (
            "gmail",
            {"type": "google-oidc", "audience": AUDIENCE, "email": ROBOT, "jwks": str(jwks_file)},
            pubsub_push({"emailAddress": "user@example.com", "historyId": 9876543210}),
            {"Authorization": f"Bearer {issuer.token(now=now)}"},
            {"Authorization": f"Bearer {Issuer('key-1').token(now=now)}"},
            "{{ message.data.emailAddress }} {{ message.data.historyId }} {{ message.messageId }}",
        ),
    ]
    hooks = [_hook(c[0], c[1], c[5]) for c in cases]
    srv = await start_server({"handlers": hooks, "incoming": {"authFailures": None}})
    for hook, _verify, body, good, bad, _template in cases:
        form = "application/x-www-form-urlencoded" if hook == "sms" else "application/json"
        status, answer = await srv.post(hook, raw=body, headers=good, content_type=form)
        assert status == 202, (hook, answer)
        first = answer["id"]
        status, answer = await srv.post(hook, raw=body, headers=bad, content_type=form)
        assert status == 401 and answer["ok"] is False and answer["error"], hook
        # a replay of the same delivery, where the provider gives it an id, runs nothing
        status, answer = await srv.post(hook, raw=body, headers=good, content_type=form)
        if hook == "alerts":  # basic auth carries no delivery id: accepted again
            assert status == 202
        else:
            assert (status, answer) == (200, {"ok": True, "duplicate": True, "id": first}), hook
    # stale timestamps, where the provider signs one
    stale = discord_command("2")
    status, answer = await srv.post(
        "discord", raw=stale, headers=discord_headers(discord_key, now - 600, stale)
    )
    assert status == 401 and "clock" in answer["error"]
    old = linear_body((now - 600) * 1000)
    status, answer = await srv.post("linear", raw=old, headers=linear_headers("lin", old))
    assert status == 401 and "clock" in answer["error"]
    expired = {"Authorization": f"Bearer {issuer.token(now=now - 4000)}"}
    status, answer = await srv.post("gmail", raw=cases[-1][2], headers=expired)
    assert status == 401 and "expired" in answer["error"]
    await srv.idle()
    texts = {m["peer"]: m["text"] for m in srv.messages()}
    assert texts == {
        "gitlab": "jsmith pushed 1 to mike/diaspora",
        "shopify": "order 820982911946154508 403.00",
        "sms": "+14155552345: Hello from Twilio ✓",
        "discord": "ask",
        "linear": "ENG-42 Crash on start",
        "sentry": "ZeroDivisionError: division by zero",
        "telegram": "Ada: /start hello",
        "alerts": "firing X",
        "gmail": "user@example.com 9876543210 2070443601311540",
    }
    # secrets sent as they are never stay with the delivery
    for hook, header in (
        ("gitlab", "x-gitlab-token"),
        ("telegram", "x-telegram-bot-api-secret-token"),
    ):
        rows = await srv.runtime.store.list_deliveries("incoming", DeliveryQuery(limit=100))
        for row in rows:
            record = await srv.runtime.store.get_incoming(row.id)
            assert record is not None and header not in record.headers, hook


async def test_twilio_json_delivery_over_http(start_server) -> None:
    # Twilio calls the configured URL with bodySHA256 added: the query string reaches the check
    url = "https://hooks.example.com/webhook/events"
    verify = {"type": "twilio", "secret": TWILIO_TOKEN, "url": url}
    srv = await start_server({"handlers": [_hook("events", verify, "{{ sid }} {{ status }}")]})
    body = json.dumps({"sid": "EX123", "status": "completed"}).encode()
    query = "bodySHA256=" + hashlib.sha256(body).hexdigest()
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"{url}?{query}", {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    async with srv.session.post(
        f"{srv.base}/webhook/events?{query}", data=body, headers=headers
    ) as response:
        assert response.status == 202, await response.text()
    async with srv.session.post(
        f"{srv.base}/webhook/events?{query}", data=body + b" ", headers=headers
    ) as response:
        assert response.status == 401
        assert "bodySHA256" in (await response.json())["error"]
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == ["EX123 completed"]


async def test_twilio_signs_the_query_string_as_sent_with_its_escapes(start_server) -> None:
    """A webhook URL whose query holds percent-escapes is signed by Twilio as it calls it,
    escapes and all: the check sees the query string as sent, not decoded."""
    url = "https://hooks.example.com/webhook/sms"
    verify = {"type": "twilio", "secret": TWILIO_TOKEN, "url": url}
    srv = await start_server({"handlers": [_hook("sms", verify, "{{ Body }}")]})
    body = urlencode(TWILIO_SMS).encode()
    for query in ("next=https%3A%2F%2Fexample.com%2Fdone", "name=John%20Doe&x=%C3%A9"):
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(f"{url}?{query}", TWILIO_SMS)
        headers = {
            "X-Twilio-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        target = URL(f"{srv.base}/webhook/sms?{query}", encoded=True)  # the bytes Twilio sends
        async with srv.session.post(target, data=body, headers=headers) as response:
            assert response.status == 202, await response.text()
        decoded = URL(f"{srv.base}/webhook/sms?{unquote(query)}")  # not what was signed
        async with srv.session.post(decoded, data=body, headers=headers) as response:
            assert response.status == 401
    await srv.idle()
    assert [m["text"] for m in srv.messages()] == [TWILIO_SMS["Body"]] * 2
