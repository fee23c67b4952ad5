"""clawdbot-webhooks-github: the summaries of each common event, the filters in a template, and
the github_notify preset end to end behind real GitHub signature verification."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import clawdbot_webhooks_github
import pytest
from clawdbot_webhooks_github import summary
from clawdbot_webhooks_github.summaries import link

from clawdbot_webhooks.config import ConfigError
from clawdbot_webhooks.testing import plugin_set_with, serve

#: Registered inline, named as its entry point names it: the same as an installed copy.
PLUGIN = ("github", clawdbot_webhooks_github)

REPO = {"full_name": "octo/hello", "html_url": "https://github.com/octo/hello"}
ALICE = {"login": "alice"}

EVENTS: list[tuple[str, dict[str, Any], str]] = [
    (
        "push",
        {
            "ref": "refs/heads/main",
            "commits": [{"message": "a"}, {"message": "Fix the parser\n\nlong body"}],
            "head_commit": {"message": "Fix the parser\n\nlong body"},
            "compare": "https://github.com/octo/hello/compare/1...2",
            "repository": REPO,
            "sender": ALICE,
        },
        "alice pushed 2 commits to octo/hello main: Fix the parser",
    ),
    (
        "push",
        {
            "ref": "refs/heads/old",
            "deleted": True,
            "commits": [],
            "repository": REPO,
            "sender": ALICE,
        },
        "alice deleted branch old in octo/hello",
    ),
    (
        "push",
        {
            "ref": "refs/tags/v2.0",
            "created": True,
            "commits": [],
            "repository": REPO,
            "sender": ALICE,
        },
        "alice pushed tag v2.0 to octo/hello",
    ),
    (
        "pull_request",
        {
            "action": "opened",
            "number": 12,
            "pull_request": {
                "number": 12,
                "title": "Add  caching\nlayer",
                "head": {"ref": "cache"},
                "base": {"ref": "main"},
                "html_url": "https://github.com/octo/hello/pull/12",
            },
            "repository": REPO,
            "sender": ALICE,
        },
        "alice opened PR #12 in octo/hello: Add caching layer (cache → main)",
    ),
    (
        "pull_request",
        {
            "action": "closed",
            "pull_request": {"number": 12, "title": "Add caching", "merged": True},
            "repository": REPO,
            "sender": {"login": "bob"},
        },
        "bob merged PR #12 in octo/hello: Add caching",
    ),
    (
        "issues",
        {
            "action": "opened",
            "issue": {"number": 5, "title": "Crash on start"},
            "repository": REPO,
            "sender": ALICE,
        },
        "alice opened issue #5 in octo/hello: Crash on start",
    ),
    (
        "issue_comment",
        {
            "action": "created",
            "issue": {"number": 12, "pull_request": {}},
            "comment": {"body": "LGTM,\nship it"},
            "repository": REPO,
            "sender": ALICE,
        },
        "alice commented on PR #12 in octo/hello: LGTM, ship it",
    ),
    (
        "workflow_run",
        {
            "action": "completed",
            "workflow_run": {
                "name": "CI",
                "head_branch": "main",
                "conclusion": "failure",
                "run_number": 41,
            },
            "repository": REPO,
            "sender": ALICE,
        },
        "Workflow CI failed on main in octo/hello (run #41)",
    ),
    (
        "release",
        {
            "action": "published",
            "release": {"tag_name": "v1.2.0", "name": "Spring"},
            "repository": REPO,
            "sender": ALICE,
        },
        "alice published release v1.2.0 in octo/hello: Spring",
    ),
    (
        "star",
        {"action": "created", "repository": REPO, "sender": ALICE},
        "alice triggered star (created) in octo/hello",
    ),
]


@pytest.mark.parametrize(("event", "payload", "expected"), EVENTS)
def test_summaries(event: str, payload: dict[str, Any], expected: str) -> None:
    assert summary(payload, event) == expected


def test_untrusted_text_is_one_short_line_and_odd_shapes_do_not_raise() -> None:
    payload = {
        "action": "opened",
        "issue": {"number": 1, "title": "x\n" * 500},
        "repository": REPO,
        "sender": ALICE,
    }
    text = summary(payload, "issues")
    assert "\n" not in text and len(text) < 160
    assert summary({"pull_request": "not a mapping"}, "pull_request").startswith("GitHub")
    assert summary(["not", "a", "mapping"], "push") == "GitHub push"
    # Only https links are offered: a payload cannot smuggle a javascript: URL in.
    assert link({"compare": "javascript:alert(1)", "repository": REPO}, "push") == REPO["html_url"]


def test_plugin_registers_filters_and_preset() -> None:
    plugins = plugin_set_with(PLUGIN)
    assert plugins.infos["github"].enabled
    assert "github_summary" in plugins.registries.filters
    assert plugins.registries.actions.owners["github_notify"] == "github"


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_github_deliveries_end_to_end(tmp_path: Path) -> None:
    secret = "gh-test-secret"
    config = {
        "handlers": [
            {
                "id": "gh",
                "action": "send_message",
                "target": {"channel": "discord", "peer": "dev"},
                "template": "{{ event | github_summary(headers['x-github-event']) }}",
                "verify": {"type": "github", "secret": secret},
            },
            {
                "id": "gh-preset",
                "action": "github_notify",
                "target": {"channel": "discord", "peer": "dev"},
                "events": ["pull_request", "workflow_run"],
                "prefix": "[gh] ",
                "verify": {"type": "github", "secret": secret},
            },
        ]
    }
    async with serve(config, [PLUGIN], state_dir=tmp_path / "state") as srv:
        for n, (hook, (event, payload, _)) in enumerate(
            [("gh", EVENTS[0]), ("gh-preset", EVENTS[3]), ("gh-preset", EVENTS[5])]
        ):
            body = json.dumps(payload).encode()
            headers = {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": f"d-{n}",
                "X-Hub-Signature-256": _sign(secret, body),
            }
            status, _ = await srv.post(hook, raw=body, headers=headers)
            assert status == 202
        # A wrong signature is refused before anything is stored.
        body = json.dumps(EVENTS[0][1]).encode()
        status, answer = await srv.post(
            "gh", raw=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=00"}
        )
        assert status == 401 and answer["ok"] is False
        await srv.idle()
        texts = [m["text"] for m in srv.messages()]
    assert texts == [
        EVENTS[0][2],
        "[gh] " + EVENTS[3][2] + " https://github.com/octo/hello/pull/12",
    ]  # the issues event was not in the preset's events: finished without a message


async def test_preset_wants_exactly_one_destination(tmp_path: Path) -> None:
    config = {"handlers": [{"id": "gh", "action": "github_notify"}]}
    with pytest.raises(ConfigError) as caught:
        async with serve(config, [PLUGIN], state_dir=tmp_path / "state"):
            pass
    assert any("set exactly one of target or agentId" in e for e in caught.value.errors)


async def test_conforms(tmp_path: Path) -> None:
    from clawdbot_webhooks.testing import assert_plugin_conforms

    push = {
        "ref": "refs/heads/main",
        "commits": [{"message": "Fix it"}],
        "repository": {"full_name": "octo/hello"},
        "sender": {"login": "alice"},
    }
    checked = await assert_plugin_conforms(
        ("github", clawdbot_webhooks_github),
        actions={"github_notify": {"target": {"channel": "c", "peer": "dev"}}},
        payload=push,
        state_dir=tmp_path,
    )
    assert checked.actions == {"github_notify": "done"}
    assert "github_summary" in checked.registers["filters"]
