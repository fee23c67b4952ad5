"""Short readable texts for the common GitHub webhook events.

Everything in a payload is untrusted text: each piece is collapsed to one line and shortened,
so a 10 kB commit message or an issue title with newlines cannot flood a chat.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

#: Longest title, commit line or comment excerpt kept in a summary.
TITLE_WIDTH = 100


def _get(payload: Any, *path: str) -> Any:
    value = payload
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def one_line(value: Any, width: int = TITLE_WIDTH) -> str:
    """Collapse white space and cut at a word boundary to at most ``width`` characters."""
    text = " ".join(str(value or "").split())
    return textwrap.shorten(text, width=width, placeholder="…") if text else ""


def short_sha(value: Any) -> str:
    """The first 7 characters of a commit id."""
    return str(value or "")[:7]


def repo_name(payload: Any) -> str:
    """``owner/name`` of the payload's repository."""
    return str(
        _get(payload, "repository", "full_name") or _get(payload, "repository", "name") or "?"
    )


def actor(payload: Any) -> str:
    """Who did it: the ``sender``'s login."""
    return str(_get(payload, "sender", "login") or "someone")


def _ref_name(ref: Any) -> str:
    text = str(ref or "")
    for prefix in ("refs/heads/", "refs/tags/"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _push(p: Any) -> str:
    who, repo = actor(p), repo_name(p)
    ref = str(p.get("ref") or "")
    name = _ref_name(ref)
    kind = "tag" if ref.startswith("refs/tags/") else "branch"
    if p.get("deleted"):
        return f"{who} deleted {kind} {name} in {repo}"
    if kind == "tag" and p.get("created"):
        return f"{who} pushed tag {name} to {repo}"
    commits = p.get("commits") if isinstance(p.get("commits"), list) else []
    head = _get(p, "head_commit", "message") or (commits[-1].get("message") if commits else "")
    forced = " (forced)" if p.get("forced") else ""
    verb = "created branch" if p.get("created") else "pushed"
    count = _plural(len(commits), "commit")
    text = (
        f"{who} {verb} {name} in {repo} with {count}{forced}"
        if p.get("created")
        else f"{who} pushed {count} to {repo} {name}{forced}"
    )
    if head:
        text += f": {one_line(str(head).strip().splitlines()[0] if str(head).strip() else '')}"
    return text


def _pull_request(p: Any) -> str:
    pr = p.get("pull_request") or {}
    action = str(p.get("action") or "updated")
    if action == "closed":
        action = "merged" if pr.get("merged") else "closed"
    elif action == "synchronize":
        action = "pushed to"
    elif action == "review_requested":
        reviewer = _get(p, "requested_reviewer", "login")
        action = f"asked {reviewer} to review" if reviewer else "requested a review of"
    number = pr.get("number") or p.get("number") or "?"
    title = one_line(pr.get("title"))
    text = f"{actor(p)} {action} PR #{number} in {repo_name(p)}: {title}"
    if action == "opened" and pr.get("base") and pr.get("head"):
        text += f" ({_get(pr, 'head', 'ref')} → {_get(pr, 'base', 'ref')})"
    return text


def _issues(p: Any) -> str:
    issue = p.get("issue") or {}
    action = str(p.get("action") or "updated")
    if action == "closed" and issue.get("state_reason") == "not_planned":
        action = "closed (not planned)"
    if action == "labeled" and _get(p, "label", "name"):
        action = f"labeled {_get(p, 'label', 'name')!s}:"
        return f"{actor(p)} {action} issue #{issue.get('number', '?')} in {repo_name(p)}"
    title = one_line(issue.get("title"))
    return f"{actor(p)} {action} issue #{issue.get('number', '?')} in {repo_name(p)}: {title}"


def _issue_comment(p: Any) -> str:
    issue = p.get("issue") or {}
    kind = "PR" if "pull_request" in issue else "issue"
    action = str(p.get("action") or "created")
    verb = {"created": "commented on", "edited": "edited a comment on"}.get(
        action, f"{action} a comment on"
    )
    body = one_line(_get(p, "comment", "body"))
    text = f"{actor(p)} {verb} {kind} #{issue.get('number', '?')} in {repo_name(p)}"
    return f"{text}: {body}" if body else text


_CONCLUSIONS = {
    "success": "succeeded",
    "failure": "failed",
    "cancelled": "was cancelled",
    "timed_out": "timed out",
    "skipped": "was skipped",
    "action_required": "needs action",
    "neutral": "finished",
    "stale": "went stale",
    "startup_failure": "failed to start",
}


def _workflow_run(p: Any) -> str:
    run = p.get("workflow_run") or {}
    name = one_line(run.get("name") or _get(p, "workflow", "name") or "workflow", 60)
    branch = run.get("head_branch") or "?"
    number = run.get("run_number")
    where = f"on {branch} in {repo_name(p)}" + (f" (run #{number})" if number else "")
    action = p.get("action")
    if action == "completed":
        conclusion = str(run.get("conclusion") or "")
        return f"Workflow {name} {_CONCLUSIONS.get(conclusion, conclusion or 'finished')} {where}"
    if action == "requested":
        return f"Workflow {name} started {where}"
    return f"Workflow {name} {action or 'updated'} {where}"


def _release(p: Any) -> str:
    release = p.get("release") or {}
    tag = release.get("tag_name") or "?"
    name = one_line(release.get("name"))
    action = str(p.get("action") or "published")
    kind = "pre-release" if release.get("prerelease") else "release"
    text = f"{actor(p)} {action} {kind} {tag} in {repo_name(p)}"
    return f"{text}: {name}" if name and name != tag else text


def _ping(p: Any) -> str:
    zen = one_line(p.get("zen"))
    return f"GitHub ping for {repo_name(p)}" + (f": {zen}" if zen else "")


SUMMARIES: dict[str, Callable[[Any], str]] = {
    "push": _push,
    "pull_request": _pull_request,
    "issues": _issues,
    "issue_comment": _issue_comment,
    "workflow_run": _workflow_run,
    "release": _release,
    "ping": _ping,
}


def link(payload: Any, event: str | None = None) -> str:
    """The page a person would open for this event, or ``""``."""
    candidates = {
        "push": ("compare",),
        "pull_request": ("pull_request", "html_url"),
        "issues": ("issue", "html_url"),
        "issue_comment": ("comment", "html_url"),
        "workflow_run": ("workflow_run", "html_url"),
        "release": ("release", "html_url"),
    }
    path = candidates.get(event or "")
    for url in (_get(payload, *path) if path else None, _get(payload, "repository", "html_url")):
        if isinstance(url, str) and url.startswith("https://"):
            return url
    return ""


def summary(payload: Any, event: str | None = None, with_link: bool = False) -> str:
    """One readable line for a GitHub event; ``event`` is the ``X-GitHub-Event`` header.

    Unknown events still get a line (who, what, where), so a new GitHub event type is never
    silently lost.
    """
    if not isinstance(payload, Mapping):
        return f"GitHub {event or 'event'}"
    build = SUMMARIES.get(event or "")
    if build is None:
        action = payload.get("action")
        what = f"{event or 'event'}" + (f" ({action})" if action else "")
        text = f"{actor(payload)} triggered {what} in {repo_name(payload)}"
    else:
        try:
            text = build(payload)
        except (AttributeError, TypeError, ValueError, IndexError):
            # A payload whose shape does not match its event name: still say something.
            text = f"GitHub {event} in {repo_name(payload)}"
    if with_link:
        url = link(payload, event)
        if url:
            text += f" {url}"
    return text
