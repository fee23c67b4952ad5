"""Incoming signature verifiers: the published vectors, the providers' own reference libraries
(signed by their code, accepted by ours), tampering, stale timestamps, secret rotation, config
validation of ``verify`` options, and the same over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import stripe
import svix.webhooks
from clawdbot_webhooks_hookspecs import SignedRequest, VerificationError, matches_any
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier

from clawdbot_webhooks.builtin import verifiers as builtin
from clawdbot_webhooks.cli import main
from clawdbot_webhooks.config import ConfigError, VerifySpec, build_settings
from clawdbot_webhooks.plugins import PluginSelection, load_plugins
from clawdbot_webhooks.signing import sign_standard
from tests.conftest import VECTORS, write_config

NOW = 1_700_000_000
SW_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-0123456789").decode()
SW_OTHER = "whsec_" + base64.b64encode(b"another-key-for-rotation-tests!!").decode()
STRIPE_SECRET = "whsec_stripe_endpoint_secret_0123456789"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
GH_SECRET = "It's a Secret to Everybody"
BODY = b'{"id": "evt_1", "event_id": "Ev01", "text": "hello \xe4\xbd\xa0\xe5\xa5\xbd"}'


def _verifiers() -> dict[str, Any]:
    found: dict[str, Any] = {}
    builtin.register_verifiers(register=found.__setitem__)
    return found


VERIFIERS = _verifiers()


def loaded(scheme: str, **options: Any) -> dict[str, Any]:
    """Options as the config hands them to ``verify``: loaded by the verifier's schema."""
    result: dict[str, Any] = VERIFIERS[scheme].schema().load(options)
    return result


def check(
    scheme: str, options: Mapping[str, Any], headers: Mapping[str, str], body: bytes, now: float
) -> str | None:
    request = SignedRequest(
        method="POST",
        path="/webhook/x",
        headers={k.lower(): v for k, v in headers.items()},
        body=body,
        client_ip="127.0.0.1",
        now=now,
    )
    result: str | None = VERIFIERS[scheme].verify(request, options)
    return result


# --------------------------------------------------------------------- published vectors


def test_published_vectors() -> None:
    cases = json.loads(VECTORS.read_text())["cases"]
    assert {c["scheme"] for c in cases} >= {"standard-webhooks", "github"}
    for case in cases:
        headers = {**case.get("headers_in", {}), **case["expected"]}
        body = case["body"].encode()
        options = loaded(case["scheme"], secret=case["secret"])
        if case["scheme"] == "standard-webhooks":
            sent_at = int(headers["webhook-timestamp"])
            assert (
                check("standard-webhooks", options, headers, body, sent_at + 5)
                == (headers["webhook-id"])
            )
            # the same vector on today's clock is a replay
            with pytest.raises(VerificationError, match="clock"):
                check("standard-webhooks", options, headers, body, time.time())
            # and our own signing computes the published value
            assert (
                sign_standard(case["secret"], headers["webhook-id"], sent_at, body)
                == case["expected"]["webhook-signature"]
            )
        else:
            assert check("github", options, headers, body, NOW) is None
            with_id = {**headers, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
            assert check("github", options, with_id, body, NOW) == with_id["X-GitHub-Delivery"]
        with pytest.raises(VerificationError):
            check(case["scheme"], options, headers, body + b" ", NOW)


# ------------------------------------------------------------ reference-library signers

Signer = Callable[[str, int, bytes], dict[str, str]]


def sign_standardwebhooks(secret: str, ts: int, body: bytes) -> dict[str, str]:
    signature = standardwebhooks.Webhook(secret).sign(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", datetime.fromtimestamp(ts, UTC), body.decode()
    )
    return {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
    }


def sign_svix(secret: str, ts: int, body: bytes) -> dict[str, str]:
    signature = svix.webhooks.Webhook(secret).sign(
        "msg_svix_1", datetime.fromtimestamp(ts, UTC), body.decode()
    )
    return {"svix-id": "msg_svix_1", "svix-timestamp": str(ts), "svix-signature": signature}


def sign_stripe(secret: str, ts: int, body: bytes) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, ts)
    return {"Stripe-Signature": header}


def sign_slack(secret: str, ts: int, body: bytes) -> dict[str, str]:
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": signature}


def sign_github(secret: str, ts: int, body: bytes) -> dict[str, str]:
    # GitHub publishes no signing library; its documented algorithm (checked by the vector).
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": "gh-delivery-1"}


#: The generic verifier configured as Slack's scheme, checked against Slack's own library.
HMAC_AS_SLACK = {
    "header": "X-Slack-Signature",
    "prefix": "v0=",
    "timestampHeader": "X-Slack-Request-Timestamp",
    "signedPayload": "v0:{timestamp}:{body}",
}

# scheme, signer, secret, a second secret for rotation, extra options, expected delivery id
SCHEMES: list[tuple[str, Signer, str, str, dict[str, Any], str | None]] = [
    (
        "standard-webhooks",
        sign_standardwebhooks,
        SW_SECRET,
        SW_OTHER,
        {},
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
    ),
    ("standard-webhooks", sign_svix, SW_SECRET, SW_OTHER, {}, "msg_svix_1"),
    ("stripe", sign_stripe, STRIPE_SECRET, STRIPE_SECRET + "-old", {}, "evt_1"),
    ("slack", sign_slack, SLACK_SECRET, SLACK_SECRET[::-1], {}, "Ev01"),
    ("hmac", sign_slack, SLACK_SECRET, SLACK_SECRET[::-1], HMAC_AS_SLACK, None),
    ("github", sign_github, GH_SECRET, GH_SECRET + "-next", {}, "gh-delivery-1"),
]
IDS = ["standardwebhooks", "svix", "stripe", "slack_sdk", "hmac-as-slack", "github"]
TIMED = {"standard-webhooks", "stripe", "slack", "hmac"}
ARGS = ("scheme", "sign", "secret", "other", "extra", "delivery")


@pytest.mark.parametrize(ARGS, SCHEMES, ids=IDS)
def test_reference_library_signature_is_accepted(
    scheme: str, sign: Signer, secret: str, other: str, extra: dict[str, Any], delivery: str | None
) -> None:
    options = loaded(scheme, secret=secret, **extra)
    assert check(scheme, options, sign(secret, NOW, BODY), BODY, NOW) == delivery


@pytest.mark.parametrize(ARGS, SCHEMES, ids=IDS)
def test_tampered_body_or_wrong_secret_is_refused(
    scheme: str, sign: Signer, secret: str, other: str, extra: dict[str, Any], delivery: str | None
) -> None:
    options = loaded(scheme, secret=secret, **extra)
    headers = sign(secret, NOW, BODY)
    with pytest.raises(VerificationError) as info:
        check(scheme, options, headers, BODY.replace(b"hello", b"hellO"), NOW)
    assert secret not in str(info.value)
    with pytest.raises(VerificationError):
        check(scheme, options, sign(other, NOW, BODY), BODY, NOW)
    with pytest.raises(VerificationError, match="missing"):
        check(scheme, options, {}, BODY, NOW)


@pytest.mark.parametrize(
    ARGS,
    [s for s in SCHEMES if s[0] in TIMED],
    ids=[i for i, s in zip(IDS, SCHEMES, strict=True) if s[0] in TIMED],
)
def test_stale_and_future_timestamps_are_refused(
    scheme: str, sign: Signer, secret: str, other: str, extra: dict[str, Any], delivery: str | None
) -> None:
    options = loaded(scheme, secret=secret, **extra)
    for offset in (-301, 301):
        with pytest.raises(VerificationError, match="clock"):
            check(scheme, options, sign(secret, NOW + offset, BODY), BODY, NOW)
    # within the tolerance both ways is fine, and the tolerance is configurable
    assert check(scheme, options, sign(secret, NOW - 299, BODY), BODY, NOW) == delivery
    strict = loaded(scheme, secret=secret, tolerance=10, **extra)
    with pytest.raises(VerificationError):
        check(scheme, strict, sign(secret, NOW - 11, BODY), BODY, NOW)


@pytest.mark.parametrize(ARGS, SCHEMES, ids=IDS)
def test_secret_rotation_accepts_any_configured_secret(
    scheme: str, sign: Signer, secret: str, other: str, extra: dict[str, Any], delivery: str | None
) -> None:
    options = loaded(scheme, secrets=[other, secret], **extra)
    assert check(scheme, options, sign(secret, NOW, BODY), BODY, NOW) == delivery
    assert check(scheme, options, sign(other, NOW, BODY), BODY, NOW) == delivery
    both = loaded(scheme, secret=secret, secrets=[other], **extra)
    assert check(scheme, both, sign(other, NOW, BODY), BODY, NOW) == delivery


@settings(max_examples=40, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), flip=st.integers(min_value=0))
def test_any_body_round_trips_and_any_changed_byte_is_refused(body: bytes, flip: int) -> None:
    text = body.decode("utf-8", "replace").encode()  # the libraries sign text
    changed = bytearray(text)
    changed[flip % len(changed)] ^= 0x01
    for scheme, sign, secret, _, extra, _ in SCHEMES:
        options = loaded(scheme, secret=secret, **extra)
        headers = sign(secret, NOW, text)
        check(scheme, options, headers, text, NOW)
        with pytest.raises(VerificationError):
            check(scheme, options, headers, bytes(changed), NOW)


def test_our_standard_signature_is_accepted_by_the_reference_libraries() -> None:
    signature = sign_standard(SW_SECRET, "msg_1", NOW, BODY)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    wh = standardwebhooks.Webhook(SW_SECRET)
    # the library checks against its own clock: give it a fresh timestamp
    fresh = int(time.time())
    fresh_headers = {
        **headers,
        "webhook-timestamp": str(fresh),
        "webhook-signature": sign_standard(SW_SECRET, "msg_1", fresh, BODY),
    }
    assert wh.verify(BODY, fresh_headers)["id"] == "evt_1"
    svix.webhooks.Webhook(SW_SECRET).verify(
        BODY, {k.replace("webhook-", "svix-"): v for k, v in fresh_headers.items()}
    )
    # several signatures, space-separated, as during key rotation: one valid is enough
    several = {**headers, "webhook-signature": f"v1,bm9wZQ== {signature} v2,xyz"}
    options = loaded("standard-webhooks", secret=SW_SECRET)
    assert check("standard-webhooks", options, several, BODY, NOW) == "msg_1"


# ------------------------------------------------------------------------ generic hmac


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_generic_hmac_algorithms_and_encodings(algorithm: str, encoding: str) -> None:
    digest = hmac.new(b"k3y", BODY, getattr(hashlib, algorithm)).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    options = loaded(
        "hmac",
        secret="k3y",
        header="X-Signature",
        algorithm=algorithm,
        encoding=encoding,
        prefix=f"{algorithm}=",
        idHeader="X-Delivery",
    )
    headers = {"X-Signature": f"{algorithm}={value}", "X-Delivery": "d-1"}
    assert check("hmac", options, headers, BODY, NOW) == "d-1"
    with pytest.raises(VerificationError, match="must start with"):
        check("hmac", options, {"X-Signature": value}, BODY, NOW)
    with pytest.raises(VerificationError, match="does not match"):
        check("hmac", options, headers, BODY + b"x", NOW)


def test_generic_hmac_timestamp_joins_as_configured() -> None:
    options = loaded(
        "hmac",
        secret="k3y",
        header="X-Sig",
        timestampHeader="X-Time",
        signedPayload="{timestamp}:{body}:end",
    )
    digest = hmac.new(b"k3y", f"{NOW}:".encode() + BODY + b":end", hashlib.sha256).hexdigest()
    assert check("hmac", options, {"X-Sig": digest, "X-Time": str(NOW)}, BODY, NOW) is None
    with pytest.raises(VerificationError, match="clock"):
        check("hmac", options, {"X-Sig": digest, "X-Time": str(NOW)}, BODY, NOW + 400)
    with pytest.raises(VerificationError, match="Unix timestamp"):
        check("hmac", options, {"X-Sig": digest, "X-Time": "12e3"}, BODY, NOW)
    # the default join is "{timestamp}.{body}"
    dotted = loaded("hmac", secret="k3y", header="X-Sig", timestampHeader="X-Time")
    digest = hmac.new(b"k3y", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert check("hmac", dotted, {"X-Sig": digest, "X-Time": str(NOW)}, BODY, NOW) is None


def test_shared_secret_and_bearer_rotation() -> None:
    shared = loaded("shared-secret", secrets=["old", "new"], header="X-Token")
    assert check("shared-secret", shared, {"X-Token": "new"}, BODY, NOW) is None
    assert check("shared-secret", shared, {"X-Token": "old"}, BODY, NOW) is None
    with pytest.raises(VerificationError):
        check("shared-secret", shared, {"X-Token": "ne"}, BODY, NOW)
    bearer = loaded("bearer", secret="tok-1", secrets=["tok-2"])
    assert check("bearer", bearer, {"Authorization": "Bearer tok-2"}, BODY, NOW) is None
    with pytest.raises(VerificationError):
        check("bearer", bearer, {"Authorization": "Basic tok-2"}, BODY, NOW)


@given(
    st.text(max_size=80),
    st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=4),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_matches_any_is_membership(given_secret: str, secrets: list[str], known: bool) -> None:
    """Any text, of any length and with lone surrogates (a header decoded with
    surrogateescape), matches exactly when it is one of the configured secrets."""
    if known:
        given_secret = secrets[-1]  # the last configured one counts as much as the first
    assert matches_any(given_secret, secrets) is (given_secret in secrets)
    assert matches_any(given_secret + "\udcff", secrets) is (given_secret + "\udcff" in secrets)


# ------------------------------------------------------------------ config validation


def _settings(handlers: list[dict[str, Any]], tmp_path: Path) -> Any:
    raw = {"stateDir": str(tmp_path), "handlers": handlers}
    plugins = load_plugins(PluginSelection.from_config())
    return build_settings(raw, plugins, str(tmp_path / "config.json5"))


def _hook(verify: Any, **more: Any) -> dict[str, Any]:
    return {
        "id": "h",
        "action": "send_message",
        "target": {"channel": "local", "peer": "me"},
        "template": "x",
        "verify": verify,
        **more,
    }


@pytest.mark.parametrize(
    ("verify", "expected"),
    [
        ({"type": "nope", "secret": "x"}, "webhooks.handlers[1].verify.type: unknown verifier"),
        ({"type": "github"}, "webhooks.handlers[1].verify.secret: required"),
        (
            {"type": "github", "secret": "x", "colour": 1},
            "webhooks.handlers[1].verify.colour: Unknown field",
        ),
        (
            {"type": "standard-webhooks", "secret": "whsec_***"},
            "webhooks.handlers[1].verify.secret: not a base64 secret",
        ),
        (
            {"type": "stripe", "secret": "x", "tolerance": "soon"},
            "webhooks.handlers[1].verify.tolerance: Not a valid number",
        ),
        (
            {"type": "hmac", "secret": "x", "header": "X-S", "signedPayload": "{timestamp}"},
            "webhooks.handlers[1].verify.signedPayload: must contain {body}",
        ),
        (
            {"type": "hmac", "secret": "x", "header": "X-S", "algorithm": "md5"},
            "webhooks.handlers[1].verify.algorithm: Must be one of",
        ),
        ({"type": "slack", "secrets": [""]}, "webhooks.handlers[1].verify.secrets[0]: Shorter"),
    ],
)
def test_verify_options_are_validated_at_load(tmp_path: Path, verify: Any, expected: str) -> None:
    fine = _hook({"type": "bearer", "secret": "t"}, id="fine")
    with pytest.raises(ConfigError) as info:
        _settings([fine, _hook(verify)], tmp_path)
    assert any(line.startswith(expected) for line in info.value.errors), info.value.errors
    for secret in ("whsec_***",):
        assert all(secret not in line for line in info.value.errors)


def test_loaded_options_reach_the_verifier(tmp_path: Path) -> None:
    settings_ = _settings([_hook({"type": "stripe", "secrets": ["a", "b"]})], tmp_path)
    verify = settings_.routes["h"].verify
    assert verify == VerifySpec(
        "stripe", {"secret": None, "secrets": ["a", "b"], "tolerance": 300.0}
    )
    assert "'a'" not in repr(settings_.routes["h"])  # secrets stay out of reprs (and logs)


def test_shared_secret_is_the_default_and_empty_secrets_are_errors(tmp_path: Path) -> None:
    raw = {"stateDir": str(tmp_path), "incoming": {"secret": "s"}, "handlers": [_hook(None)]}
    del raw["handlers"][0]["verify"]
    plugins = load_plugins(PluginSelection.from_config())
    spec = build_settings(raw, plugins, None).routes["h"]
    assert spec.verify is not None and spec.verify.type == "shared-secret"
    options = spec.verify.options
    assert options["secrets"] == ["s"] and options["header"] == "X-Webhook-Secret"
    raw["incoming"] = {"secret": ""}
    with pytest.raises(ConfigError, match=r"webhooks\.incoming\.secret"):
        build_settings(raw, plugins, None)


def test_check_reports_verify_errors(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.json5",
        {"stateDir": str(tmp_path), "handlers": [_hook({"type": "github", "secret": 5})]},
    )
    result = CliRunner().invoke(main, ["check", "--config", str(config)])
    assert result.exit_code == 2
    assert "webhooks.handlers[0].verify.secret: Not a valid string." in result.output


# ------------------------------------------------------------------------- real HTTP


def _http_hook(scheme: str, secret: str, extra: dict[str, Any], hook_id: str) -> dict[str, Any]:
    return {
        "id": hook_id,
        "action": "send_message",
        "target": {"channel": "local", "peer": "me"},
        "template": "{{ text }}",
        "verify": {"type": scheme, "secrets": [secret + "-unused", secret], **extra}
        if scheme != "standard-webhooks"
        else {"type": scheme, "secrets": [SW_OTHER, secret]},
    }


async def test_every_scheme_over_http(start_server) -> None:
    hooks = [_http_hook(s[0], s[2], s[4], IDS[i]) for i, s in enumerate(SCHEMES)]
    srv = await start_server({"handlers": hooks, "incoming": {"authFailures": None}})
    for i, (scheme, sign, secret, _other, _extra, delivery) in enumerate(SCHEMES):
        hook = IDS[i]
        now = int(time.time())
        headers = sign(secret, now, BODY)
        status, body = await srv.post(hook, raw=BODY, headers=headers)
        assert status == 202, (hook, body)
        # tampered body
        status, body = await srv.post(hook, raw=BODY + b" ", headers=headers)
        assert status == 401 and body["ok"] is False, hook
        # stale timestamp (where the scheme has one)
        if scheme in TIMED:
            status, body = await srv.post(hook, raw=BODY, headers=sign(secret, now - 600, BODY))
            assert status == 401 and "clock" in body["error"], hook
        # the same delivery again is a duplicate, answered with the first id
        if delivery is not None:
            first = await srv.runtime.store.find_duplicate(hook, delivery)
            status, body = await srv.post(hook, raw=BODY, headers=sign(secret, now, BODY))
            assert (status, body) == (200, {"ok": True, "duplicate": True, "id": first}), hook
    await srv.idle()
    assert await srv.runtime.store.count_incoming("done") == len(SCHEMES)
