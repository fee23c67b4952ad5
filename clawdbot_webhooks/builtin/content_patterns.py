"""The built-in pattern classes of the content policy: well-known prompt-injection phrasing.

Each class is a list of regular expressions, matched case-insensitively against text bound for
an agent after fullwidth letters are folded and invisible characters dropped (so "ignore"
written in fullwidth letters, or with zero-width spaces between its letters, counts). They
catch the common phrasings, in English and in a few other languages, not every possible
attack: the untrusted-content boundary is the defence, the policy is a tripwire that counts,
masks or stops what it recognises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clawdbot_webhooks_hookspecs import hookimpl

_S = r"[\s,.:;\-]+"  # words apart, however they are separated
_ANY = r"(?:[\w'\u2019]+[\s,]+){0,4}?"  # up to four words in between

PATTERNS: dict[str, list[str]] = {
    # "ignore all previous instructions", and the same said in other words or languages.
    "instruction-override": [
        rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop){_S}{_ANY}"
        rf"(?:previous|prior|above|earlier|preceding|former|all|any|your|system|original)"
        rf"{_S}{_ANY}(?:instructions?|prompts?|rules?|directions?|guidelines?|directives?"
        rf"|context|commands?|orders?|constraints?)\b",
        rf"\bnew{_S}(?:system{_S})?instructions?{_S}?:",
        rf"\bfrom{_S}now{_S}on{_S}you{_S}(?:are|will|must|shall)\b",
        rf"\bdo{_S}not{_S}follow{_S}(?:your|the|any){_S}(?:previous{_S})?(?:instructions|rules)",
        r"\bignorier\w*\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|vorigen)\s+"
        r"(?:anweisungen|instruktionen|regeln|befehle)",
        r"\bignor(?:e|ez|er)\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|consignes|règles)\s+"
        r"(?:précédentes|precedentes|antérieures|ci-dessus)",
        r"\bignora(?:r)?\s+(?:todas\s+)?(?:las\s+)?(?:instrucciones|indicaciones|reglas)\s+"
        r"(?:anteriores|previas)",
        r"\bignore\s+(?:todas\s+)?(?:as\s+)?(?:instruções|instrucoes)\s+anteriores",
        r"\bignora\s+(?:tutte\s+)?le\s+istruzioni\s+precedenti",
        r"игнориру\w*\s+(?:все\s+)?(?:предыдущие|прежние|предшествующие)\s+"
        r"(?:инструкции|указания|правила)",
        r"(?:忽略|无视|無視|忽视)\s*(?:之前|以上|先前|前面|上面|所有|全部)\S{0,6}?"
        r"(?:指令|指示|说明|規則|规则|提示)",
        r"(?:以前|前|上記|これまで)の(?:指示|命令|ルール)\S{0,4}?(?:無視|忘れ)",
        r"이전\s*(?:의\s*)?(?:모든\s*)?(?:지시|명령|지침)\S{0,4}\s*무시",
    ],
    # Text posing as another role: system/assistant turns, chat-template tokens.
    "role-impersonation": [
        # At a line's start, blanks before the word but not line breaks: ``(?:^|\n)\s*``
        # tried every line break of a long run of them again from each one (quadratic).
        r"(?m)^[^\S\n]*(?:#+\s*)?(?:system|assistant|developer)\s*(?:prompt|message)?\s*:",
        r"<\|\s*(?:im_start|im_end|system|assistant|endoftext)\s*\|>",
        r"\[/?(?:INST|SYS)\]|<</?SYS>>",
        r"</?\s*(?:system|system[_-]?prompt|instructions)\s*>",
        rf"\byou{_S}are{_S}now{_S}(?:a|an|the|in|my|DAN|no{_S}longer)\b",
        rf"\b(?:act|behave|pretend|roleplay){_S}(?:as|to{_S}be){_S}(?:an?{_S})?"
        rf"(?:system|admin|administrator|root|developer|unrestricted|jailbroken)",
        rf"\b(?:developer|god|jailbreak|DAN|sudo){_S}mode\b",
    ],
    # Requests to hand over secrets, keys or the prompt itself.
    "exfiltration": [
        rf"\b(?:send|post|upload|forward|exfiltrate|leak|e-?mail|share|paste|reveal|print"
        rf"|show|dump|output|give|tell|list|read){_S}(?:[\w'\u2019]+{_S}){{0,6}}?"
        rf"(?:api{_S}?keys?|passwords?|secrets?|tokens?|credentials?|private{_S}?keys?"
        rf"|ssh{_S}?keys?|\.env\b|env(?:ironment)?{_S}variables|system{_S}prompt"
        rf"|(?:your|the){_S}instructions|cookies?|/etc/passwd|id_rsa)",
        r"~/\.ssh\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow)\b"
        r"|\.aws/credentials\b",
        r"\b(?:curl|wget)\b[^\n]{0,120}(?:\$\{?\w*(?:KEY|TOKEN|SECRET|PASS)\w*|@/|"
        r"--data|-d\s+@)",
    ],
    # Asking the agent to run things.
    "tool-request": [
        rf"\b(?:run|execute|exec|invoke|call|launch|start){_S}(?:[\w'\u2019]+{_S}){{0,3}}?"
        rf"(?:command|shell|bash|terminal|script|tool|powershell|cmd|code|function)s?\b",
        r"\brm\s+-(?:rf|fr|r|f)\b",
        r"\b(?:curl|wget)\b[^\n|]{0,200}\|\s*(?:ba|z|da)?sh\b",
        r"\bsudo\s+\S",
        r"\bchmod\s+(?:\+x|[0-7]{3,4})\b",
        r"\b(?:nc|ncat|netcat)\s+-[a-z]*[elvp]",
        r"/bin/(?:ba|z|da)?sh\b",
        r"\b(?:eval|exec)\s*\(|\bos\.system\s*\(|\bsubprocess\.\w+\(",
        r"\bpowershell(?:\.exe)?\s+-(?:enc|e|c|command)\b",
    ],
    # Payloads hidden in an encoding the reader is asked to undo.
    "encoded-payload": [
        r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{80,}={0,2}(?![A-Za-z0-9+/])",
        r"(?:\\x[0-9a-fA-F]{2}){8,}",
        r"(?:%[0-9a-fA-F]{2}){12,}",
        r"(?:&#x?[0-9a-fA-F]+;){8,}",
        rf"\b(?:base64|b64|rot13|hex){_S}(?:-d\b|--decode\b|decode)",
        rf"\bdecode{_S}(?:this|the{_S}following|and{_S}(?:run|execute|follow))\b",
    ],
}


@hookimpl
def register_content_patterns(register: Callable[[str, Any], None]) -> None:
    for name, patterns in PATTERNS.items():
        register(name, patterns)
