"""The demo's simulated users: support tickets to triage, and how a user rates the answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from flywheel.demo.simulation import CATEGORIES, KEYWORDS

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"category": {"enum": list(CATEGORIES)}, "urgent": {"type": "boolean"}},
    "required": ["category", "urgent"],
    "additionalProperties": False,
}
FIRST_PROMPT = "You triage customer support tickets into billing, shipping or account."
_OPENINGS = ("Hi,", "Hello team,", "Good morning.", "Hey there,", "")
_PROBLEMS = {
    "billing": ("I was charged twice this month", "my invoice shows the wrong amount", "where is my refund"),
    "shipping": ("my parcel has not arrived", "the tracking page is stuck", "the courier left my package outside"),
    "account": ("I cannot reset my password", "login fails after the update", "I need to change my email address"),
}
_URGENT = ("This is urgent.", "Please fix this ASAP.", "I need it sorted immediately.")


@dataclass(frozen=True, slots=True)
class Ticket:
    user: str
    text: str
    category: str
    urgent: bool


@dataclass(frozen=True, slots=True)
class Rating:
    thumbs: str  # "up" | "down"
    comment: str | None
    schema_valid: bool


def tickets(seed: int) -> Any:
    """An endless, reproducible stream of tickets from 500 different users."""
    rng = random.Random(seed)
    while True:
        category = rng.choice(CATEGORIES)
        urgent = rng.random() < 0.3
        problem = rng.choice(_PROBLEMS[category])
        assert any(word in problem for word in KEYWORDS[category])
        text = " ".join(p for p in (rng.choice(_OPENINGS), problem + ".", rng.choice(_URGENT) if urgent else "") if p)
        yield Ticket(f"user-{rng.randrange(500)}", text, category, urgent)


def rate(ticket: Ticket, answer: str | None) -> Rating:
    """What the user thinks of ``answer``: thumbs up only for right JSON."""
    try:
        parsed = orjson.loads(answer or "")
    except orjson.JSONDecodeError:
        parsed = None
    valid = (
        isinstance(parsed, dict)
        and set(parsed) == {"category", "urgent"}
        and parsed["category"] in CATEGORIES
        and isinstance(parsed["urgent"], bool)
    )
    if not valid or not isinstance(parsed, dict):
        return Rating("down", "I can't use this: our helpdesk tool needs the JSON triage.", False)
    if parsed["category"] != ticket.category:
        return Rating("down", f"Wrong category, this is about {ticket.category}.", True)
    if ticket.urgent and not parsed["urgent"]:
        return Rating("down", "This was urgent and it was not flagged!", True)
    return Rating("up", None, True)


def write_golden(path: Path, seed: int = 99, size: int = 24) -> Path:
    """Golden cases: the right triage as a JSON Schema each answer must meet."""
    lines = []
    for index, ticket in zip(range(size), tickets(seed), strict=False):  # tickets() is endless
        expect = {
            **SCHEMA,
            "properties": {"category": {"const": ticket.category}, "urgent": {"const": ticket.urgent}},
        }
        lines.append(
            {
                "id": f"ticket-{index}",
                "messages": [{"role": "user", "content": ticket.text}],
                "expect": {"schema": expect},
            }
        )
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path
