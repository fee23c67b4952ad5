"""The content policy: what happens to text bound for an agent that matches known injection
phrasing (``contentPolicy: {mode, patterns}`` on a handler, default ``incoming.contentPolicy``).

``log`` counts and logs each match and sends the text as it is; ``quarantine`` replaces each
matching span with a placeholder naming the pattern; ``block`` never sends it: the attempt
fails for good (a dead letter naming the policy and the pattern, replayable once the operator
has looked). Matching happens on the text folded one character for one (fullwidth letters,
look-alike brackets, invisible characters), so spans map back onto the original.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from clawdbot_webhooks_hookspecs import ActionError
from clawdbot_webhooks_hookspecs.untrusted import fold_for_matching

MODES = ("log", "quarantine", "block")
DEFAULT_MODE = "log"

log = logging.getLogger(__name__)

#: Called for each pattern that matched: ``(hook, pattern, mode)`` (the metrics' counter).
OnMatch = Callable[[str, str, str], None]


def compile_patterns(item: object) -> list[re.Pattern[str]]:
    """A registered or configured pattern class as compiled expressions: a regular expression
    (text or compiled) or a list of them. Raises ``ValueError`` saying what is wrong."""
    items: Iterable[object] = item if isinstance(item, list | tuple) else [item]
    compiled: list[re.Pattern[str]] = []
    for one in items:
        if isinstance(one, re.Pattern):
            compiled.append(one)
        elif isinstance(one, str) and one:
            try:
                compiled.append(re.compile(one, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc}): {one!r}") from exc
        else:
            raise ValueError("expected a regular expression or a list of them")
    if not compiled:
        raise ValueError("expected at least one regular expression")
    return compiled


@dataclass(frozen=True)
class Match:
    pattern: str
    start: int
    end: int


class ContentPolicy:
    """One handler's policy, ready to screen text (``policy.screen(text, on_match)``)."""

    def __init__(
        self, hook: str, mode: str, patterns: Mapping[str, Sequence[re.Pattern[str]]]
    ) -> None:
        self.hook = hook
        self.mode = mode
        self.patterns = dict(patterns)
        #: The same, for text of ASCII alone (``_for_ascii``).
        self._ascii_patterns = {
            name: [_for_ascii(expression) for expression in expressions]
            for name, expressions in self.patterns.items()
        }

    def matches(self, text: str) -> list[Match]:
        """Every match of every pattern class, in the order of the text."""
        folded, where = fold_for_matching(text)
        ascii_only = folded.isascii() and _ASCII_ONLY_SPACES.search(folded) is None
        patterns = self._ascii_patterns if ascii_only else self.patterns
        found = [
            Match(name, where(m.start()), where(m.end() - 1) + 1)
            for name, expressions in patterns.items()
            for expression in expressions
            for m in expression.finditer(folded)
            if m.end() > m.start()
        ]
        return sorted(found, key=lambda m: (m.start, -m.end))

    def screen(self, text: str, on_match: OnMatch | None = None) -> str:
        """``text`` as the policy lets it go to the agent; raises ``ActionError`` (no retry)
        when the mode is ``block`` and a pattern matched."""
        found = self.matches(text)
        if not found:
            return text
        names = sorted({m.pattern for m in found})
        for name in names:
            if on_match is not None:
                on_match(self.hook, name, self.mode)
        log.warning(
            "content policy of hook %s (%s) matched %s",
            self.hook,
            self.mode,
            ", ".join(names),
            extra={"hook": self.hook},
        )
        if self.mode == "block":
            raise ActionError(
                f"blocked by the content policy of hook {self.hook!r} (mode block): pattern "
                f"{found[0].pattern!r} matched; not sent to the agent",
                retry=False,
            )
        if self.mode == "quarantine":
            return _quarantine(text, found)
        return text


#: The ASCII characters Unicode counts as white space and ``re.ASCII`` does not.
_ASCII_ONLY_SPACES = re.compile("[\x1c-\x1f]")


@functools.cache  # the classes' patterns are shared by every handler's policy
def _for_ascii(expression: re.Pattern[str]) -> re.Pattern[str]:
    """``expression`` compiled with ``re.ASCII``, when its source is ASCII: on text of ASCII
    alone (less ``_ASCII_ONLY_SPACES``) it matches exactly what the Unicode one matches, case
    folding included, in about 60 % of the time (bench/README.md). Otherwise itself."""
    if not expression.pattern.isascii():
        return expression
    try:
        return re.compile(expression.pattern, (expression.flags & ~re.UNICODE) | re.ASCII)
    except (re.error, ValueError):  # an inline flag of its own, say ``(?u)``
        return expression


def _quarantine(text: str, found: list[Match]) -> str:
    # Overlapping matches (sorted by start) become one span, named by its first pattern.
    spans: list[tuple[int, int, str]] = []
    for match in found:
        if spans and match.start < spans[-1][1]:
            start, end, name = spans[-1]
            spans[-1] = (start, max(end, match.end), name)
            continue
        spans.append((match.start, match.end, match.pattern))
    parts: list[str] = []
    last = 0
    for start, end, name in spans:
        parts.append(text[last:start])
        parts.append(f"[quarantined: {name}]")
        last = end
    parts.append(text[last:])
    return "".join(parts)


class Screens:
    """Each handler's content policy as ``ActionContext.screen``, made once per policy (a
    reloaded config brings new policies, and with them new screens). A screen may run in a
    worker thread (``agent_prompt_async``); ``on_match`` is called on the loop's thread all
    the same, where the metrics belong."""

    def __init__(self, on_match: OnMatch | None) -> None:
        self._on_match = on_match
        self._made: dict[str, tuple[ContentPolicy, Callable[[str], str]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on ``loop``'s thread."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def of(self, policy: ContentPolicy) -> Callable[[str], str]:
        made = self._made.get(policy.hook)
        if made is None or made[0] is not policy:
            screen = (policy, lambda text: policy.screen(text, self._matched))
            made = self._made[policy.hook] = screen
        return made[1]

    def _matched(self, hook: str, pattern: str, mode: str) -> None:
        if self._on_match is None:
            return
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._on_match(hook, pattern, mode)
        else:
            self._loop.call_soon_threadsafe(self._on_match, hook, pattern, mode)
