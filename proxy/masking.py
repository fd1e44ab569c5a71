"""Credentials and personal data masked out of text bound for spans.

In every mode API keys, bearer tokens, JWTs, private key blocks, passwords in URLs and
values given to secret-named fields (``password=…``, ``"api_key": …``) are masked
(:func:`mask_credentials`); ``redacted`` content also loses emails and card numbers
(:func:`redact`). Every search runs in time linear in the text: content is the app's
users' to shape, and masking runs on the proxy's event loop.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"

# Tool arguments and answers are masked as JSON text, where a newline before a key is the
# two characters \n: a word starts there too, as it does in plain text.
_AFTER_ESCAPE = r"(?<=\\[nrtbf])"
_WORD_START = r"(?:(?<![A-Za-z0-9_])|" + _AFTER_ESCAPE + r")"
# Keys with a prefix no word has are masked wherever they sit (glued to text before them,
# "token:sk-ant-…", "0ghp_…"); the short generic prefixes (sk-, pk-, rk-, bearer) only
# where a word starts, so that "task-…" and "desk-…" stay.
# Each search opens with a look at the first character (what every branch may start
# with): the engine then skips most positions at once (5.4 → 3.2 ms for 100 KB of prose).
_CREDENTIALS = re.compile(
    r"""(?=[sApgxerbB])(?:
      sk-(?:ant|proj|svcacct|admin)-[A-Za-z0-9_\-]{16,}  # Anthropic, OpenAI project / service keys
    | AKIA[0-9A-Z]{16}(?![0-9A-Z])                     # AWS access key id
    | AIza[0-9A-Za-z_\-]{35}                           # Google API key
    | gh[pousr]_[A-Za-z0-9]{36,}                       # GitHub tokens
    | xox[abposr]-[A-Za-z0-9\-]{10,}                   # Slack tokens
    | eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}  # JWTs
    | """
    + _WORD_START
    + r"""(?:
        (?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}               # OpenAI / Stripe-style keys
      | (?i:bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*         # bearer tokens
      )
    )""",
    re.VERBOSE,
)
# Not from the n of an escaped newline: the address starts after it (or after \\). Bounded
# as addresses are (64 before the @, 255 after): unbounded, text like "a.a.a.…" made the
# search quadratic (1.2 s for 40 KB).
_EMAIL = re.compile(
    r"(?:" + _AFTER_ESCAPE + r"|(?<=\\\\)|(?<!\\)\b)[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,255}\.[A-Za-z]{2,24}\b"
)
_CARD = re.compile(r"(?=\d)(?:" + _AFTER_ESCAPE + r"|\b)(?:\d[ \-]?){12,18}\d\b")


# Credentials without a token's look: a private key block (its base64 to the end when
# cut short), a URL's password, and what follows a name that says it is secret (`password=`,
# `"api_key": "…"`, `DB_PASSWORD: …`; quotes escaped or not, as in JSON text). Bare
# `secret` and `pwd` are left out: prose and shell output use them for other things.
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]{0,32}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]{0,32}PRIVATE KEY-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s\\]*")
_URL_PASSWORD = re.compile(r"(?<=://)(?P<user>[^/\s:@\\\"']*):[^/\s@\\\"']+@")
_SECRET_VALUE = re.compile(
    r"""(?=[PpCcSsAaRr])(?P<name>
        (?i:pass(?:word|wd|phrase)|client[_-]?secret|secret[_-]?key|private[_-]?key
           |a(?:pi[_-]?key|ccess[_-]?(?:key|token)|uth[_-]?token)|refresh[_-]?token))
        (?P<sep>\\?["']?[ \t]*[:=][ \t]*\\?["']?)
        [^\s"'\\,;&}]{3,}""",
    re.VERBOSE,
)
_SECRET_HINTS = ("pass", "secret", "private", "api", "access", "auth", "refresh")


def mask_credentials(text: str) -> str:
    # Named values before keys: a key's pattern runs on through word characters and would
    # take the name of a secret glued after it ("…9876DB_PASSWORD=…") with it.
    text = _mask_private_keys(text)
    lowered = text.lower()
    if any(hint in lowered for hint in _SECRET_HINTS):  # most text names no secret: one fast look
        text = _SECRET_VALUE.sub(r"\g<name>\g<sep>" + MASK, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<user>:" + MASK + "@", text)
    return _CREDENTIALS.sub(MASK, text)


def _mask_private_keys(text: str) -> str:
    """Each block to its END line, or (cut short) to the end of its base64. One pass over
    the text: a regex with `.*?-----END` would read to the end again for every BEGIN
    without an END, and content is the app's users' to shape (a second per 50 KB)."""
    if "PRIVATE KEY-----" not in text:
        return text
    pieces: list[str] = []
    at, end, exhausted = 0, None, False
    for begin in _PEM_BEGIN.finditer(text):
        if begin.start() < at:
            continue  # inside the block just masked
        if not exhausted and (end is None or end.start() < begin.end()):
            end = _PEM_END.search(text, begin.end())
            exhausted = end is None  # no END after here: none after any later BEGIN either
        body = _PEM_BODY.match(text, begin.end())  # always matches (maybe nothing)
        pieces += (text[at : begin.start()], MASK)
        at = end.end() if end is not None else body.end() if body is not None else begin.end()
    pieces.append(text[at:])
    return "".join(pieces)


def redact(text: str) -> str:
    """Credentials, emails and card numbers (Luhn-checked) masked."""
    text = mask_credentials(text)
    if "@" in text:
        text = _EMAIL.sub(MASK, text)
    return _CARD.sub(lambda m: MASK if _luhn(m.group()) else m.group(), text)


def _luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
